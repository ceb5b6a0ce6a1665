"""One contract for both model pointer backends: file and Consul (double, or a real agent)."""

from __future__ import annotations

import http.server
import json
import logging
import socket
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caravan import ConfigurationError, PointerConflict, PromotionLocked
from caravan.errors import BackendRejected, BackendUnavailable
from caravan.registry import open_pointer
from caravan.registry.base import MAX_MODEL_NAME, NothingToRollBack, PointerCorrupt, PointerState, current_key

from ..servers import poll_until


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
    with pytest.raises(NothingToRollBack, match="no pointer"):
        pointer.rollback_target(model_name + "-empty")


def write_raw_pointer(pointer_kind: str, model: str, raw: bytes) -> None:
    """Damage the pointer behind caravan's back: what a buggy tool, a hand edit or a bad restore does."""
    import os

    if pointer_kind == "file":
        path = Path(os.environ["CARAVAN_POINTER_ROOT"], *current_key(model).split("/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(raw)
        return
    import consul as py_consul

    host, port = os.environ["CONSUL_HTTP_ADDR"].split("//")[1].split(":")
    py_consul.Consul(host=host, port=int(port)).kv.put(current_key(model), raw)


CORRUPT = {
    "truncated": lambda good: good[: len(good) // 2],
    "wrong shape": lambda good: b'["artifact_id", "A"]',
    "document of the wrong shape": lambda good: json.dumps({"version": 3, "document": {"artifact_id": 7},
                                                            "artifact_id": 7}).encode(),
    "garbage": lambda good: b"\x00\xff\nnot json at all\r\n" * 3,
    "uri of another artifact": lambda good: good.replace(b"file:///a/A", b"file:///a/Z"),
}


@pytest.mark.parametrize("damage", sorted(CORRUPT))
def test_a_corrupt_pointer_reads_as_one_clear_error_and_can_be_replaced(pointer_kind, model_name, damage):
    pointer = open_pointer()
    first = pointer.set_if(model_name, doc("A"), pointer.read(model_name))
    assert first is not None
    good = json.dumps({"version": first.version, "document": first.document}).encode() if pointer_kind == "file" \
        else json.dumps(first.document).encode()
    write_raw_pointer(pointer_kind, model_name, CORRUPT[damage](good))
    with pytest.raises(PointerCorrupt) as info:
        pointer.read(model_name)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    assert model_name in message and "--force" in message
    with pytest.raises(PointerCorrupt):
        pointer.watch(model_name, first, timeout_s=1)

    state, corrupt = pointer.read_for_repair(model_name)
    assert corrupt is not None and state.document is None
    assert pointer.set_if(model_name, doc("B"), PointerState(None, 0, 0)) is None, "a stale version never wins"
    repaired = pointer.set_if(model_name, doc("B"), state)
    assert repaired is not None
    now = pointer.read(model_name)
    assert now.artifact_id == "B" and now.version not in (first.version, state.version)
    assert pointer.set_if(model_name, doc("C"), now) is not None, "the repaired pointer is a normal pointer again"


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

    outcome: dict[str, object] = {}

    def watch() -> None:
        try:
            outcome["state"] = pointer.watch(model_name, state, timeout_s=20)
        except BaseException as exc:  # asserted in the main thread
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - start

    watcher = threading.Thread(target=watch)
    start = time.monotonic()
    watcher.start()
    other = open_pointer()  # whether the watch blocks already or not yet, it must see B and return at once
    other.set_if(model_name, doc("B"), other.read(model_name))
    watcher.join(30)
    assert "error" not in outcome, outcome
    changed = outcome["state"]
    assert isinstance(changed, PointerState) and changed.artifact_id == "B"
    assert outcome["seconds"] < 5


def test_the_promotion_lock_is_exclusive_and_passes_on_when_released(pointer_kind, model_name):
    first, second = open_pointer(), open_pointer()
    order: list[str] = []
    trying, got = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    with first.lock(model_name, holder="run-1", timeout_s=5):
        with pytest.raises(PromotionLocked):
            with second.lock(model_name, holder="run-2", timeout_s=0.3):
                order.append("run-2 too early")

        def waiter() -> None:
            trying.set()
            try:
                with second.lock(model_name, holder="run-2", timeout_s=20):
                    got.set()
                    order.append("run-2")
            except BaseException as exc:  # asserted in the main thread
                errors.append(exc)

        thread = threading.Thread(target=waiter)
        thread.start()
        assert trying.wait(5)
        assert not got.wait(0.5), "the waiter got a lock that is held"
        order.append("run-1")
    start = time.monotonic()
    assert got.wait(10), "the waiting holder never got the released lock"
    thread.join(10)
    assert errors == []
    assert order == ["run-1", "run-2"]
    assert time.monotonic() - start < 5
    with first.lock(model_name, holder="run-3", timeout_s=1):  # free again after both blocks
        pass


def test_a_consul_lock_whose_session_dies_is_freed_and_reported(model_name, consul_address, monkeypatch, caplog):
    import consul as py_consul

    from caravan.registry.base import lock_key

    monkeypatch.setenv("CARAVAN_POINTER", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_address)
    pointer = open_pointer()
    host, port = consul_address.split("//")[1].split(":")
    admin = py_consul.Consul(host=host, port=int(port))
    caplog.set_level(logging.ERROR, logger="caravan.registry.consul")
    with pytest.raises(PointerConflict, match="lost"):
        with pointer.lock(model_name, holder="run-1", timeout_s=5):
            _, entry = admin.kv.get(lock_key(model_name))
            assert entry["Session"] and entry["Value"] == b"run-1"
            admin.session.destroy(entry["Session"])  # what a TTL expiry or a node failure does
            _, entry = admin.kv.get(lock_key(model_name))
            assert entry is None, "behaviour=delete: an invalidated holder's lock key is gone"
            # The renewer (every TTL/3) notices at its next renewal.
            poll_until(lambda: any("lost the promotion lock" in r.getMessage() for r in caplog.records), 30,
                       "the renewer reporting the lost lock")
    with pointer.lock(model_name, holder="run-2", timeout_s=30):
        _, entry = admin.kv.get(lock_key(model_name))
        assert entry["Value"] == b"run-2"


def test_a_failed_lock_release_never_hides_the_error_of_the_block(model_name, consul_address, monkeypatch):
    from caravan.registry.consul import ConsulPointer

    from ..servers import free_port

    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_address)
    pointer = ConsulPointer(token="")
    with pytest.raises(ZeroDivisionError):
        with pointer.lock(model_name, holder="run-1", timeout_s=5):
            gone = ConsulPointer(address=f"http://127.0.0.1:{free_port()}", token="")
            pointer.client = gone.client  # Consul is gone by the time the lock is released
            raise ZeroDivisionError("the decision failed")


class _Silent:
    """A TCP server that accepts connections and never answers: a half-open connection, as a client sees it."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def test_every_consul_call_has_a_read_timeout_longer_than_its_wait(model_name):
    from caravan.registry.consul import ConsulPointer

    silent = _Silent()
    try:
        pointer = ConsulPointer(address=silent.address, token="", timeout_s=1.0)
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="no answer"):
            pointer.read(model_name)
        assert time.monotonic() - start < 5
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="no answer"):
            pointer.watch(model_name, PointerState({"artifact_id": "A"}, 5, 5), timeout_s=2)
        # A blocking query gets its wait (2 s) plus Consul's jitter (wait/16) on top of the 1 s timeout.
        assert 2.0 <= time.monotonic() - start < 8
    finally:
        silent.close()


def _answering(status: int, body: bytes) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("X-Consul-Index", "7")  # Consul sends it on errors too (C1)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize(("status", "body", "error"), [
    (500, b"No cluster leader", BackendUnavailable),
    (503, b"rpc error: Permission denied", BackendUnavailable),  # the text must not decide, the status does
    (429, b"rate limit exceeded", BackendUnavailable),
    (403, b"Permission denied", BackendRejected),
    (400, b"Invalid wait time 500", BackendRejected),
    (200, b"<html>a proxy's page</html>", BackendUnavailable),  # not Consul's JSON
])
def test_consul_errors_are_classified_by_status_code(model_name, status, body, error):
    from caravan.registry.consul import ConsulPointer

    server = _answering(status, body)
    try:
        pointer = ConsulPointer(address=f"http://127.0.0.1:{server.server_address[1]}", token="", timeout_s=5)
        with pytest.raises(error) as info:
            pointer.read(model_name)
        assert "\n" not in str(info.value)
        if status != 200:
            assert f"HTTP {status}" in str(info.value)
    finally:
        server.shutdown()
        server.server_close()


_NAME_CHARS = st.sampled_from("abcXYZ019_.-\n\t /\\é")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.one_of(st.text(max_size=MAX_MODEL_NAME + 5),
                      st.text(_NAME_CHARS, min_size=MAX_MODEL_NAME - 3, max_size=MAX_MODEL_NAME + 2),
                      st.text(_NAME_CHARS, max_size=8)))
@example(name="ranker\n")
@example(name="ranker ")
@example(name=" ranker")
@example(name="\nranker")
@example(name="r" * MAX_MODEL_NAME)
@example(name="r" * (MAX_MODEL_NAME + 1))
@example(name="r" * (MAX_MODEL_NAME - 1) + "\n")
@example(name="a..b")
@example(name="")
def test_model_names_are_checked_before_any_request(name):
    safe = bool(name) and name[0].isascii() and name[0].isalnum() and ".." not in name and \
        len(name) <= MAX_MODEL_NAME and all(c.isascii() and (c.isalnum() or c in "_.-") for c in name)
    if safe:
        assert current_key(name) == f"caravan/dev/models/{name}/current"
    else:
        with pytest.raises(ConfigurationError):
            current_key(name)
