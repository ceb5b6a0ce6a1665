"""One contract for both model pointer backends: file and Consul (double, or a real agent)."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan import ConfigurationError, PointerConflict, PromotionLocked
from caravan.registry import open_pointer
from caravan.registry.base import PointerState, current_key


def doc(artifact: str) -> dict:
    return {"artifact_uri": f"file:///a/{artifact}", "artifact_id": artifact, "metrics": {"auc": 0.7},
            "action": "promote", "promoted_by": "test"}


def test_an_unset_pointer_reads_as_none(pointer_kind, model_name):
    state = open_pointer().read(model_name)
    assert state.document is None and state.version == 0


def test_check_and_set_refuses_a_stale_version(pointer_kind, model_name):
    pointer = open_pointer()
    first = pointer.set_if(model_name, doc("A"), pointer.read(model_name))
    assert first is not None and first.document["artifact_id"] == "A"
    stale = PointerState(None, 0, 0)
    assert pointer.set_if(model_name, doc("B"), stale) is None, "a create-only write on a set pointer must fail"
    second = pointer.set_if(model_name, doc("B"), pointer.read(model_name))
    assert second is not None
    current = pointer.read(model_name)
    assert current.artifact_id == "B"
    assert current.document["previous_artifact_id"] == "A"
    assert pointer.set_if(model_name, doc("C"), first) is None
    assert pointer.read(model_name).artifact_id == "B"


def test_concurrent_promotions_have_exactly_one_winner_and_a_consistent_history(pointer_kind, model_name):
    pointer = open_pointer()
    pointer.set_if(model_name, doc("base"), pointer.read(model_name))
    seen = pointer.read(model_name)
    barrier = threading.Barrier(4)
    results = {}

    def promote(name: str) -> None:
        barrier.wait()
        results[name] = open_pointer().set_if(model_name, doc(name), seen)

    threads = [threading.Thread(target=promote, args=(f"cand{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, state in results.items() if state is not None]
    assert len(winners) == 1
    assert pointer.read(model_name).artifact_id == winners[0]
    history = pointer.history(model_name)
    assert [h["artifact_id"] for h in history] == ["base", winners[0]]
    assert history[1]["previous_artifact_id"] == "base"


def test_change_rereads_and_redecides_after_a_lost_race(pointer_kind, model_name):
    pointer = open_pointer()
    calls = []

    def decide(state):
        calls.append(state.artifact_id)
        if len(calls) == 1:  # someone else promotes between our read and our write
            other = open_pointer()
            other.set_if(model_name, doc("sneaky"), other.read(model_name))
        return doc(f"after-{state.artifact_id}")

    state, _ = pointer.change(model_name, decide)
    assert calls == [None, "sneaky"]
    assert state.artifact_id == "after-sneaky"
    assert [h["artifact_id"] for h in pointer.history(model_name)] == ["sneaky", "after-sneaky"]


def test_rollback_goes_back_to_the_previous_model(pointer_kind, model_name):
    pointer = open_pointer()
    for name in ("A", "B"):
        pointer.set_if(model_name, doc(name), pointer.read(model_name))
    target = pointer.rollback_target(model_name)
    assert target["artifact_id"] == "A"
    with pytest.raises(PointerConflict, match="no pointer"):
        pointer.rollback_target(model_name + "-empty")


def test_a_history_entry_lost_in_a_crash_is_repaired(pointer_kind, model_name):
    pointer = open_pointer()
    state = pointer.read(model_name)
    document = {**doc("A"), "previous_artifact_id": None, "change_id": "20260101T000000000000Z-deadbeef"}
    assert pointer.compare_and_set(model_name, document, state.version) is not None  # crash before record()
    assert pointer.history(model_name) == []
    pointer.repair_history(model_name)
    assert [h["artifact_id"] for h in pointer.history(model_name)] == ["A"]


def test_watch_wakes_on_a_change_and_times_out_otherwise(pointer_kind, model_name):
    pointer = open_pointer()
    pointer.set_if(model_name, doc("A"), pointer.read(model_name))
    state = pointer.read(model_name)
    start = time.monotonic()
    assert pointer.watch(model_name, state, timeout_s=1).version == state.version
    assert time.monotonic() - start >= 0.9

    def later() -> None:
        time.sleep(0.3)
        other = open_pointer()
        other.set_if(model_name, doc("B"), other.read(model_name))

    threading.Thread(target=later).start()
    start = time.monotonic()
    changed = pointer.watch(model_name, state, timeout_s=20)
    assert changed.artifact_id == "B"
    assert time.monotonic() - start < 5


def test_the_promotion_lock_is_exclusive_and_passes_on_when_released(pointer_kind, model_name):
    first, second = open_pointer(), open_pointer()
    order: list[str] = []
    with first.lock(model_name, holder="run-1", timeout_s=5):
        with pytest.raises(PromotionLocked):
            with second.lock(model_name, holder="run-2", timeout_s=0.3):
                order.append("run-2 too early")
        waiter_done = threading.Event()

        def waiter() -> None:
            with second.lock(model_name, holder="run-2", timeout_s=20):
                order.append("run-2")
            waiter_done.set()

        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        order.append("run-1")
    start = time.monotonic()
    assert waiter_done.wait(10), "the waiting holder never got the released lock"
    thread.join()
    assert order == ["run-1", "run-2"]
    assert time.monotonic() - start < 5
    with first.lock(model_name, holder="run-3", timeout_s=1):  # free again after both blocks
        pass


def test_a_consul_lock_whose_session_dies_is_freed_and_reported(model_name, consul_address, monkeypatch):
    import consul as py_consul

    from caravan.registry.base import lock_key

    monkeypatch.setenv("CARAVAN_POINTER", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_address)
    pointer = open_pointer()
    host, port = consul_address.split("//")[1].split(":")
    admin = py_consul.Consul(host=host, port=int(port))
    with pytest.raises(PointerConflict, match="lost"):
        with pointer.lock(model_name, holder="run-1", timeout_s=5):
            _, entry = admin.kv.get(lock_key(model_name))
            assert entry["Session"] and entry["Value"] == b"run-1"
            admin.session.destroy(entry["Session"])  # what a TTL expiry or a node failure does
            _, entry = admin.kv.get(lock_key(model_name))
            assert entry is None, "behaviour=delete: an invalidated holder's lock key is gone"
            time.sleep(6)  # the renewer (every TTL/3 = 5 s) notices
    with pointer.lock(model_name, holder="run-2", timeout_s=30):
        _, entry = admin.kv.get(lock_key(model_name))
        assert entry["Value"] == b"run-2"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(max_size=30))
def test_model_names_are_checked_before_any_request(name):
    safe = bool(name) and name[0].isascii() and name[0].isalnum() and ".." not in name and len(name) <= 100 and all(
        c.isascii() and (c.isalnum() or c in "_.-") for c in name)
    if safe:
        assert current_key(name) == f"caravan/models/{name}/current"
    else:
        with pytest.raises(ConfigurationError):
            current_key(name)
