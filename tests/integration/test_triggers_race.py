"""Two monitors racing on the same report fire once: against the file backend and the Consul double.

Both monitors read the records, then meet at a barrier (inside ``Dispatcher.running``, which ``run_triggers``
asks after reading the records and before deciding), so both decide on the same state and both try to create
the same claim. Outcomes are collected from the threads and asserted here, in the main thread.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from caravan.errors import CaravanError
from caravan.monitoring.report import MonitorReport, VersionWindow
from caravan.monitoring.triggers import Replay, TriggerOutcome, TriggerSettings, run_triggers
from caravan.monitoring.triggers_store import TriggerStore, trigger_store
from caravan.registry.consul import ConsulPointer
from caravan.registry.file import FilePointer

from ..doubles.consul import ConsulDouble

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
PROD = "TrainRanker/date=2026-11-20/x--prod0001"


def report(model: str, *, days: tuple[str, ...] = (), psi: float = 0.0) -> MonitorReport:
    version = VersionWindow(artifact_id=PROD, arm="", requests=5000, labelled=4000, rewards=400, reward_rate=0.1,
                            auc=0.75, calibration=1.0, missing_rate={}, invalid_rate={}, psi={"price": psi})
    return MonitorReport(model=model, window_start="2026-11-28T12:00:00Z", window_end="2026-11-29T12:00:00Z",
                         production_artifact_id=PROD, production_gate_auc=0.75, versions=(version,),
                         closed_days=days)


class Meeting:
    """A dispatcher shared by the racing monitors: ``running`` holds each until both got there."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self.calls: list[tuple[str, dt.date | None]] = []

    def running(self) -> list[str]:
        self.barrier.wait()
        return []

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        self.calls.append((model, day))  # list.append: atomic under the GIL
        return f"child-{len(self.calls)}", "test"


@pytest.fixture(scope="module")
def consul() -> Iterator[str]:
    with ConsulDouble(lock_delay_s=0.0) as server:
        yield server.address


@pytest.fixture(params=["file", "consul"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], TriggerStore]:
    """A maker of independent store objects over one backend (each monitor its own client)."""
    if request.param == "file":
        return lambda: trigger_store(FilePointer(tmp_path / "pointers", environment="dev"))
    address = request.getfixturevalue("consul")
    return lambda: trigger_store(ConsulPointer(address, token="", environment="dev"))


def race(make_store: Callable[[], TriggerStore], rep: MonitorReport, monitors: int = 2) -> tuple[
        list[list[TriggerOutcome]], list[BaseException], Meeting]:
    meeting = Meeting(monitors)
    results: list[list[TriggerOutcome]] = []
    errors: list[BaseException] = []

    def monitor() -> None:
        try:
            results.append(run_triggers(rep, TriggerSettings(), pointer=None, dispatcher=meeting, now=NOW,
                                        store=make_store()))
        except BaseException as exc:  # collected, asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=monitor) for _ in range(monitors)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return results, errors, meeting


def outcomes_of(results: list[list[TriggerOutcome]]) -> list[tuple[str, str]]:
    return sorted((o.record_id, o.outcome) for result in results for o in result)


@pytest.mark.parametrize("round_", range(3))
def test_two_monitors_dispatch_a_closed_day_once(stores, round_):
    model = f"m-{uuid.uuid4().hex[:8]}"
    results, errors, meeting = race(stores, report(model, days=("2026-11-28",)))
    assert errors == []
    assert meeting.calls == [(model, dt.date(2026, 11, 28))]
    assert outcomes_of(results) == [("new-data-2026-11-28", "dispatched"), ("new-data-2026-11-28", "taken")]
    record, _ = stores().records(model)["new-data-2026-11-28"]
    assert record["outcome"] == "dispatched" and record["child"] == "child-1"


@pytest.mark.parametrize("round_", range(3))
def test_two_monitors_retrain_on_drift_once(stores, round_):
    model = f"m-{uuid.uuid4().hex[:8]}"
    # The day closed and its retrain was dispatched hours ago; production still predates it (that run failed).
    assert stores().create(model, "new-data-2026-11-28", {"at": "2026-11-29T06:00:00Z", "outcome": "dispatched",
                                                          "kind": "new_data", "day": "2026-11-28"}) is not None
    results, errors, meeting = race(stores, report(model, days=("2026-11-28",), psi=0.8))
    assert errors == []
    assert meeting.calls == [(model, dt.date(2026, 11, 28))]
    assert outcomes_of(results) == [("retrain-000001", "dispatched"), ("retrain-000001", "taken")]
    # The next pair within the cool-down records one suppression between them and dispatches nothing (no
    # dispatch, so they do not ask the cluster and do not meet: the second finds the record, or loses the create).
    results, errors, meeting = race(stores, report(model, days=("2026-11-28",), psi=0.8))
    assert errors == [] and meeting.calls == []
    assert outcomes_of(results) in ([("retrain-000001.cooldown.drift", "suppressed")],
                                    [("retrain-000001.cooldown.drift", "suppressed"),
                                     ("retrain-000001.cooldown.drift", "taken")])
    assert sorted(stores().records(model)) == ["new-data-2026-11-28", "retrain-000001",
                                               "retrain-000001.cooldown.drift"]


@pytest.mark.parametrize("round_", range(3))
def test_two_monitors_retake_a_stale_claim_once(stores, round_):
    """A claim left 'dispatching' past its lease (its monitor stopped before dispatching): both monitors see it
    stale, both try to replace it at the version they read, one does and dispatches."""
    model = f"m-{uuid.uuid4().hex[:8]}"
    left = {"at": "2026-11-29T10:00:00.000000Z", "kind": "new_data", "outcome": "dispatching", "day": "2026-11-28",
            "reason": "day closed", "lease_until": "2026-11-29T10:30:00.000000Z"}  # long before the wall clock
    assert stores().create(model, "new-data-2026-11-28", left) is not None
    results, errors, meeting = race(stores, report(model, days=("2026-11-28",)))
    assert errors == []
    assert meeting.calls == [(model, dt.date(2026, 11, 28))]
    assert outcomes_of(results) == [("new-data-2026-11-28", "dispatched"), ("new-data-2026-11-28", "taken")]
    record, _ = stores().records(model)["new-data-2026-11-28"]
    assert record["outcome"] == "dispatched" and record["retaken"]["lease_until"] == left["lease_until"]


def test_consul_records_live_under_the_models_prefix(consul):
    pointer = ConsulPointer(consul, token="", environment="staging")
    store = trigger_store(pointer)
    assert store.create("ranker", "new-data-2026-11-28", {"outcome": "dispatching"}) is not None
    _, item = pointer.client.kv.get("caravan/staging/models/ranker/triggers/new-data-2026-11-28")
    assert item is not None and b"dispatching" in item["Value"]
    version = store.records("ranker")["new-data-2026-11-28"][1]
    assert version == int(item["ModifyIndex"])
    assert not store.replace("ranker", "new-data-2026-11-28", {"outcome": "x"}, version + 100)
    assert store.replace("ranker", "new-data-2026-11-28", {"outcome": "dispatched"}, version)
    assert not store.replace("ranker", "absent", {"outcome": "x"}, 0)  # never creates
    assert store.records("ranker")["new-data-2026-11-28"][0] == {"outcome": "dispatched"}
    # An unreadable record is skipped, not fatal.
    pointer.client.kv.put("caravan/staging/models/ranker/triggers/broken", b"{not json")
    assert "broken" not in store.records("ranker")


def test_both_backends_keep_the_store_contract(stores):
    store, other = stores(), stores()  # two clients of one backend
    model = f"m-{uuid.uuid4().hex[:8]}"
    assert store.records(model) == {} and store.read(model, "a") is None
    version = store.create(model, "a", {"outcome": "dispatching"})
    assert version is not None and other.create(model, "a", {"outcome": "other"}) is None
    assert not other.replace(model, "a", {"outcome": "late"}, version + 1)
    assert other.replace(model, "a", {"outcome": "dispatched"}, version)
    assert not store.replace(model, "a", {"outcome": "stale"}, version)  # the version moved on
    assert not store.replace(model, "never-created", {"outcome": "x"}, 0)
    found = store.records(model)
    assert list(found) == ["a"] and found["a"][0] == {"outcome": "dispatched"} and found["a"][1] != version
    with pytest.raises(CaravanError, match="trigger record id"):
        store.create(model, "../escape", {})


def test_a_rollback_through_the_consul_pointer_and_its_lock(consul):
    pointer = ConsulPointer(consul, token="", environment="dev")
    model = f"m-{uuid.uuid4().hex[:8]}"
    for artifact_id in ("TrainRanker/date=2026-11-10/x--old00001", PROD):
        assert pointer.set_if(model, {"artifact_uri": f"s3://b/{artifact_id}", "artifact_id": artifact_id,
                                      "action": "promote", "metrics": {"gate_auc": 0.75}},
                              pointer.read(model)) is not None
    degraded = replace(report(model), versions=(replace(report(model).versions[0], auc=0.6),))
    outcomes = run_triggers(degraded, TriggerSettings(rollback_on_degradation=True), pointer=pointer,
                            dispatcher=Meeting(1), now=NOW, replayer=lambda r, p: Replay(0.74, 0.6, 4000))
    # No closed day to retrain on: the retrain waits for one; the rollback does not.
    assert [(o.kind, o.outcome) for o in outcomes] == [("degradation", "waiting for new data"),
                                                       ("rollback", "rolled back")]
    state = pointer.read(model)
    assert state.artifact_id == "TrainRanker/date=2026-11-10/x--old00001" and state.document["action"] == "rollback"
    assert [e["action"] for e in pointer.history(model)] == ["promote", "promote", "rollback"]
    _, lock = pointer.client.kv.get(f"caravan/dev/models/{model}/lock")
    assert lock is None or not lock.get("Session"), "the promotion lock is released"
