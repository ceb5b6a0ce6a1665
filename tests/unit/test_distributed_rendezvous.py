"""The gang's rendezvous in the artifact store: all ranks or a deadline that names the missing ones; the abort mark."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from caravan.errors import CaravanError
from caravan.executors.gang import slot
from caravan.ml.distributed import (
    EXIT_ABORTED,
    Endpoint,
    Gang,
    GangAborted,
    Rendezvous,
    RendezvousTimeout,
    Watchdog,
    gang_meta,
)
from caravan.storage.local import LocalStore


@pytest.fixture
def rendezvous(tmp_path: Path) -> Rendezvous:
    return Rendezvous(LocalStore(str(tmp_path)), "Train/date=2026-11-22/x--abc", "g1")


def test_all_ranks_registered_give_the_machines_in_rank_order(rendezvous: Rendezvous) -> None:
    for rank, port in ((2, 7002), (0, 7000), (1, 7001)):
        rendezvous.announce(rank, f"10.0.0.{rank}", port)
    assert rendezvous.machines(3, timeout_s=1) == ["10.0.0.0:7000", "10.0.0.1:7001", "10.0.0.2:7002"]


def test_a_rank_that_never_registers_is_named_within_the_deadline(rendezvous: Rendezvous) -> None:
    rendezvous.announce(0, "127.0.0.1", 7000)
    rendezvous.announce(1, "127.0.0.1", 7001)
    started = time.monotonic()
    expected = r"rank 2 of 3 did not register .*missing: rank 2; registered: \[0, 1\]"
    with pytest.raises(RendezvousTimeout, match=expected):
        rendezvous.machines(3, timeout_s=0.5)
    assert 0.5 <= time.monotonic() - started < 2.0


def test_ranks_that_register_late_but_in_time_all_meet(rendezvous: Rendezvous) -> None:
    found: dict[int, list[str]] = {}

    def wait(rank: int) -> None:
        rendezvous.announce(rank, "127.0.0.1", 7000 + rank)
        found[rank] = rendezvous.machines(3, timeout_s=10, poll_s=0.02)

    threads = [threading.Thread(target=wait, args=(rank,)) for rank in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=15)
    assert found == {rank: ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"] for rank in range(3)}


def test_an_aborted_gang_stops_the_wait_at_once_and_the_first_reason_stays(rendezvous: Rendezvous) -> None:
    rendezvous.abort("rank 1", "LightGBMError: Socket recv error")
    rendezvous.abort("executor", "later")
    started = time.monotonic()
    with pytest.raises(GangAborted, match="aborted by rank 1: LightGBMError: Socket recv error"):
        rendezvous.machines(2, timeout_s=30)
    assert time.monotonic() - started < 1
    rendezvous.clear()
    assert rendezvous.aborted() is None and rendezvous.registered() == {}


def test_the_watchdog_ends_the_process_when_the_gang_is_aborted(rendezvous: Rendezvous) -> None:
    exits: list[int] = []
    ended = threading.Event()

    def fake_exit(code: int) -> None:
        exits.append(code)
        ended.set()

    watchdog = Watchdog(rendezvous, rank=0, poll_s=0.02, exit=fake_exit).start()
    try:
        assert not ended.wait(0.1)
        rendezvous.abort("executor", "rank 1 failed")
        assert ended.wait(5)
    finally:
        watchdog.stop()
    assert exits == [EXIT_ABORTED]


def test_a_rank_reads_its_gang_and_port_from_the_environment_nomad_gives() -> None:
    meta = gang_meta({"caravan_output": "x"}, gang_id="g7", rank=2, size=3, rendezvous_timeout_s=9.5)
    env = {f"NOMAD_META_{k}": v for k, v in meta.items()}
    env.update(NOMAD_PORT_lightgbm="23456", NOMAD_IP_lightgbm="10.1.2.3", NOMAD_HOST_PORT_lightgbm="23456")
    assert Gang.from_env(env) == Gang(id="g7", rank=2, size=3, rendezvous_timeout_s=9.5, socket_timeout_min=10)
    assert Endpoint.from_env(env) == Endpoint(listen_port=23456, host="10.1.2.3", port=23456)
    with pytest.raises(CaravanError, match="NOMAD_PORT_lightgbm is not set"):
        Endpoint.from_env({})
    with pytest.raises(CaravanError, match="rank 3 is outside a gang of 3"):
        Gang.from_env({**env, "NOMAD_META_caravan_rank": "3"})


def test_an_executor_keys_a_rank_by_gang_and_rank_and_any_other_step_by_its_artifact() -> None:
    meta = gang_meta({}, gang_id="g7", rank=1, size=2, rendezvous_timeout_s=5)
    assert slot("A/x--1", {"caravan_output": "u"}) == "A/x--1"
    assert slot("A/x--1", meta) == "A/x--1#gang=g7#rank=1"
    assert slot("A/x--1", meta) != slot("A/x--1", {**meta, "caravan_rank": "0"})
