"""The Consul double, driven only through the real ``py-consul`` client, behaves as Consul's KV and session API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import consul
import pytest
import requests
from consul.base import Response
from consul.callback import CB
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.doubles.consul import ConsulDouble, format_go_duration, parse_go_duration
from tests.servers import poll_until


@pytest.fixture(scope="module")
def double() -> Iterator[ConsulDouble]:
    with ConsulDouble(lock_delay_s=0.3) as server:
        yield server


@pytest.fixture
def client(double: ConsulDouble) -> consul.Consul:
    double.reset()
    return consul.Consul(host=double.host, port=double.port)


def raw_get(client: consul.Consul, path: str, params: list[tuple[str, Any]] | None = None) -> Response:
    """A GET through py-consul's own HTTP client, returning the whole (code, headers, body) response."""
    result: Response = client.http.get(lambda response: response, path, params=params,
                                       headers=client.prepare_headers(), raw=True)
    return result


def test_put_get_round_trip_keeps_bytes_flags_and_indexes(client: consul.Consul) -> None:
    payload = bytes(range(256))
    assert client.kv.put("models/ranker/current", payload, flags=42) is True
    index, entry = client.kv.get("models/ranker/current")
    assert isinstance(index, str)
    assert entry["Value"] == payload
    assert entry["Flags"] == 42 and entry["LockIndex"] == 0 and "Session" not in entry
    assert entry["CreateIndex"] == entry["ModifyIndex"] == int(index)

    assert client.kv.put("models/ranker/current", b"v2") is True
    index2, entry2 = client.kv.get("models/ranker/current")
    assert entry2["Value"] == b"v2" and entry2["Flags"] == 0  # a plain PUT resets flags to ?flags= (0)
    assert entry2["CreateIndex"] == entry["CreateIndex"] and entry2["ModifyIndex"] > entry["ModifyIndex"]
    assert int(index2) == entry2["ModifyIndex"]


def test_empty_value_is_null_and_a_rewrite_that_changes_nothing_keeps_modify_index(client: consul.Consul) -> None:
    client.kv.put("empty", None)
    _, entry = client.kv.get("empty")
    assert entry["Value"] is None
    client.kv.put("same", b"x")
    _, before = client.kv.get("same")
    assert client.kv.put("same", b"x") is True
    _, after = client.kv.get("same")
    assert after["ModifyIndex"] == before["ModifyIndex"]  # kvsSetTxn skips writes of an equal entry


def test_missing_key_is_none_with_a_string_index_from_the_kv_table(client: consul.Consul) -> None:
    index, data = client.kv.get("nope")
    assert data is None and isinstance(index, str) and int(index) >= 1
    client.kv.put("other", b"1")
    client.kv.delete("other")
    after_delete, data = client.kv.get("nope")
    assert data is None and int(after_delete) > int(index)  # the delete's tombstone moves the table index

    response = raw_get(client, "/v1/kv/nope")
    assert response.code == 404 and response.body == b""
    assert response.headers["X-Consul-Index"] == after_delete
    assert response.headers["X-Consul-KnownLeader"] == "true"
    assert response.headers["X-Consul-LastContact"] == "0"
    assert response.headers["X-Consul-Default-ACL-Policy"] == "allow"


def test_cas_zero_creates_only_and_cas_n_needs_the_current_modify_index(client: consul.Consul) -> None:
    assert client.kv.put("ptr", b"a", cas=0) is True
    assert client.kv.put("ptr", b"b", cas=0) is False
    _, entry = client.kv.get("ptr")
    assert entry["Value"] == b"a"
    stale = entry["ModifyIndex"]
    assert client.kv.put("ptr", b"c", cas=stale) is True
    assert client.kv.put("ptr", b"d", cas=stale) is False  # a mismatch is 200 false, not 409
    assert client.kv.put("never", b"x", cas=stale) is False
    _, entry = client.kv.get("ptr")
    assert entry["Value"] == b"c" and entry["ModifyIndex"] > stale


def test_recurse_lists_sorted_entries_and_404s_when_empty(client: consul.Consul) -> None:
    for key in ("app/b", "app/a/x", "app/a", "apple", "zzz"):
        client.kv.put(key, key.encode())
    index, entries = client.kv.get("app/", recurse=True)
    assert [e["Key"] for e in entries] == ["app/a", "app/a/x", "app/b"]
    assert int(index) == max(e["ModifyIndex"] for e in entries)
    assert client.kv.get("nothing/", recurse=True)[1] is None
    _, everything = client.kv.get("", recurse=True)
    assert [e["Key"] for e in everything] == ["app/a", "app/a/x", "app/b", "apple", "zzz"]


def test_keys_with_and_without_separator(client: consul.Consul) -> None:
    assert client.kv.get("", keys=True)[1] == []  # the root of an empty store is 200 [], not a 404
    for key in ("models/a/1", "models/a/2", "models/b", "models/c/x/y", "other"):
        client.kv.put(key, b"")
    _, keys = client.kv.get("models/", keys=True)
    assert keys == ["models/a/1", "models/a/2", "models/b", "models/c/x/y"]
    _, keys = client.kv.get("models/", keys=True, separator="/")
    assert keys == ["models/a/", "models/b", "models/c/"]
    _, keys = client.kv.get("", keys=True, separator="/")
    assert keys == ["models/", "other"]
    assert client.kv.get("absent/", keys=True)[1] is None  # a non-empty prefix without keys is a 404


def test_raw_returns_the_value_bytes_with_the_xss_headers(client: consul.Consul) -> None:
    client.kv.put("html", b"<script>alert(1)</script>")
    response = raw_get(client, "/v1/kv/html", [("raw", "")])
    assert response.code == 200 and response.body == b"<script>alert(1)</script>"
    assert response.headers["Content-Type"] == "text/plain"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox"
    listed = raw_get(client, "/v1/kv/ht", [("raw", ""), ("recurse", "")])  # raw is ignored with recurse
    assert listed.headers["Content-Type"] == "application/json" and listed.body.startswith(b"[{")
    assert raw_get(client, "/v1/kv/nope", [("raw", "")]).code == 404


def test_delete_semantics(client: consul.Consul) -> None:
    assert client.kv.delete("never-existed") is True
    client.kv.put("d", b"1")
    _, entry = client.kv.get("d")
    assert client.kv.delete("d", cas=0) is False  # 0 never deletes an existing key
    assert client.kv.delete("d", cas=entry["ModifyIndex"] + 1000) is False
    assert client.kv.delete("d", cas=entry["ModifyIndex"]) is True
    assert client.kv.get("d")[1] is None
    assert client.kv.delete("d", cas=5) is True  # kvsDeleteCASTxn reports a missing key as deleted
    for key in ("tree/a", "tree/b/c", "treetop"):
        client.kv.put(key, b"")
    assert client.kv.delete("tree/", recurse=True) is True
    assert client.kv.get("", keys=True)[1] == ["treetop"]
    with pytest.raises(consul.ConsulException, match="Conflicting flags"):
        client.kv.delete("treetop", recurse=True, cas=1)
    with pytest.raises(consul.ConsulException, match="Missing key name"):
        client.kv.delete("")


def test_bad_requests_and_errors_map_to_py_consul_exceptions(client: consul.Consul) -> None:
    with pytest.raises(consul.ConsulException, match="400 Missing key name"):
        client.kv.get("")
    with pytest.raises(consul.ConsulException, match="Invalid wait time"):
        client.kv.get("k", index=1, wait="5 seconds")
    with pytest.raises(consul.ConsulException, match="Invalid index"):
        client.kv.get("k", index="abc")
    with pytest.raises(consul.ConsulException, match="Conflicting flags: acquire=s&cas=0"):
        client.kv.put("k", b"", cas=0, acquire="s")
    with pytest.raises(consul.ConsulException, match=r"^413 Request body"):
        client.kv.put("big", b"x" * (512 * 1024 + 1))
    assert client.kv.put("big", b"x" * (512 * 1024)) is True
    with pytest.raises(consul.ConsulException, match=r"^500 invalid key name"):
        client.kv.put("trailing ", b"")
    with pytest.raises(consul.ConsulException, match=r"^500 invalid key name"):
        client.kv.get("a/..%2Fetc")
    with pytest.raises(consul.ConsulException, match="No path to datacenter"):
        client.kv.get("k", dc="dc9")
    assert raw_get(client, "/v1/no/such/endpoint").code == 404
    bad_method = requests.post(f"{client.http.base_uri}/v1/kv/k", timeout=5)
    assert bad_method.status_code == 405 and bad_method.headers["Allow"] == "GET,PUT,DELETE"


def test_py_consul_sends_dot_segments_normalised_away(client: consul.Consul, double: ConsulDouble) -> None:
    """requests/urllib3 remove ``..`` segments before sending: ``a/../b`` silently writes ``b``."""
    client.kv.put("a/../b", b"surprise")
    assert double.requests[-1] == ("PUT", "/v1/kv/b")
    assert client.kv.get("b")[1]["Value"] == b"surprise"


def blocking_get_arrived(double: ConsulDouble, key: str) -> bool:
    """Whether the double has received a blocking read (``?index=``) of ``key``."""
    return any(method == "GET" and path.startswith(f"/v1/kv/{key}?") and "index=" in path
               for method, path in list(double.requests))


def test_blocking_get_wakes_promptly_on_a_write(client: consul.Consul, double: ConsulDouble) -> None:
    client.kv.put("watched", b"v1")
    index, _ = client.kv.get("watched")
    seen: dict[str, Any] = {}
    watcher = consul.Consul(host=double.host, port=double.port)

    def watch() -> None:
        try:
            seen["result"] = watcher.kv.get("watched", index=index, wait="10s")
        except BaseException as exc:  # recorded, asserted in the test's thread
            seen["error"] = exc
        seen["at"] = time.monotonic()

    thread = threading.Thread(target=watch)
    thread.start()
    poll_until(lambda: blocking_get_arrived(double, "watched"), timeout_s=10, what="the watcher's blocking GET")
    client.kv.put("unrelated", b"x")  # another key's write does not end the wait (else the watcher would get v1)
    written = time.monotonic()
    client.kv.put("watched", b"v2")
    thread.join(timeout=15)
    assert not thread.is_alive() and "error" not in seen, seen
    new_index, entry = seen["result"]
    assert entry["Value"] == b"v2" and int(new_index) > int(index)
    # Woken by the write, not by the end of its 10 s wait: anything under half the wait tells them apart.
    assert seen["at"] - written < 5


def test_blocking_get_times_out_with_the_same_index(client: consul.Consul) -> None:
    client.kv.put("quiet", b"v1")
    index, _ = client.kv.get("quiet")
    started = time.monotonic()
    same, entry = client.kv.get("quiet", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert same == index and entry["Value"] == b"v1"
    # Never before the wait is over; and the wait was read as 1 s (not Consul's 5 min default, not a
    # minute): the upper bound only needs to tell those apart, so it leaves room for a loaded machine.
    assert 1.0 <= elapsed < 10


def test_blocking_on_a_missing_key_times_out_as_a_404(client: consul.Consul) -> None:
    index, _ = client.kv.get("ghost")
    assert client.kv.get("ghost", index=index, wait="200ms") == (index, None)


def test_recurse_index_survives_deletes_until_tombstones_are_reaped(client: consul.Consul,
                                                                   double: ConsulDouble) -> None:
    client.kv.put("svc/a", b"1")
    client.kv.put("svc/b", b"2")
    _, entries = client.kv.get("svc/", recurse=True)
    low = entries[0]["ModifyIndex"]
    client.kv.delete("svc/b")
    after_delete, entries = client.kv.get("svc/", recurse=True)
    assert [e["Key"] for e in entries] == ["svc/a"] and int(after_delete) > low  # the tombstone counts
    double.reap_tombstones()
    after_reap, _ = client.kv.get("svc/", recurse=True)
    assert int(after_reap) == low < int(after_delete)  # the index went DOWN: clients must reset to 0


def test_raise_index_jumps_later_indexes(client: consul.Consul, double: ConsulDouble) -> None:
    client.kv.put("j", b"1")
    _, before = client.kv.get("j")
    new = double.raise_index(1_000_000)
    client.kv.put("j", b"2")
    _, after = client.kv.get("j")
    assert after["ModifyIndex"] > new > before["ModifyIndex"] + 999_999


def test_request_log_has_method_and_raw_path(client: consul.Consul, double: ConsulDouble) -> None:
    client.kv.put("logged key", b"v", cas=0)
    client.kv.get("logged key", index=3, wait="10ms")
    assert double.requests[-2:] == [("PUT", "/v1/kv/logged%20key?cas=0"),
                                    ("GET", "/v1/kv/logged%20key?index=3&wait=10ms")]


def test_acl_token_is_required_and_checked() -> None:
    with ConsulDouble(acl_token="s3cret") as server:
        good = consul.Consul(host=server.host, port=server.port, token="s3cret")
        wrong = consul.Consul(host=server.host, port=server.port, token="nope")
        anonymous = consul.Consul(host=server.host, port=server.port)
        assert good.kv.put("k/a", b"1") is True
        with pytest.raises(consul.ACLPermissionDenied, match="ACL not found"):
            wrong.kv.get("k/a")
        with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
            anonymous.kv.get("k/a")
        with pytest.raises(consul.ACLPermissionDenied, match="Permission denied"):
            anonymous.kv.put("k/a", b"2")
        with pytest.raises(consul.ACLPermissionDenied):
            wrong.session.create()
        assert anonymous.kv.get("k/", recurse=True)[1] is None  # lists are filtered, not refused
        assert good.kv.get("k/a")[1]["Value"] == b"1"
        response = raw_get(good, "/v1/kv/k/a")
        assert response.headers["X-Consul-Default-ACL-Policy"] == "deny"
        bearer = requests.get(f"{server.address}/v1/kv/k/a", headers={"Authorization": "Bearer s3cret"}, timeout=5)
        assert bearer.status_code == 200
        query = requests.get(f"{server.address}/v1/kv/k/a?token=s3cret", timeout=5)
        assert query.status_code == 200
        denied = requests.get(f"{server.address}/v1/kv/k/a", timeout=5)
        assert denied.status_code == 403 and denied.headers["Content-Type"].startswith("text/plain")


def test_session_locks_are_exclusive_and_released(client: consul.Consul) -> None:
    first = client.session.create(name="promoter-1", lock_delay=0)
    second = client.session.create(name="promoter-2", lock_delay=0)
    assert client.kv.put("lock", b"one", acquire=first) is True
    assert client.kv.put("lock", b"two", acquire=second) is False
    _, entry = client.kv.get("lock")
    assert entry["Session"] == first and entry["LockIndex"] == 1 and entry["Value"] == b"one"
    assert client.kv.put("lock", b"one again", acquire=first) is True  # the holder may re-acquire
    assert client.kv.put("lock", b"", release=second) is False
    assert client.kv.put("lock", b"released", release=first) is True
    _, entry = client.kv.get("lock")
    assert "Session" not in entry and entry["LockIndex"] == 1 and entry["Value"] == b"released"
    assert client.kv.put("lock", b"two", acquire=second) is True
    _, entry = client.kv.get("lock")
    assert entry["Session"] == second and entry["LockIndex"] == 2
    assert client.session.destroy(second) is True
    _, entry = client.kv.get("lock")
    assert "Session" not in entry and entry["Value"] == b"two"  # destroy releases (behavior release)
    assert client.session.info(second)[1] is None
    with pytest.raises(consul.ConsulException, match="invalid session"):
        client.kv.put("lock", b"", acquire=second)


def test_session_shapes_and_delete_behavior(client: consul.Consul, double: ConsulDouble) -> None:
    sid = client.session.create(name="ephemeral", behavior="delete", ttl=15, lock_delay=0)
    _, info = client.session.info(sid)
    assert info["ID"] == sid and info["Name"] == "ephemeral" and info["Behavior"] == "delete"
    assert info["TTL"] == "15s" and info["LockDelay"] == 0 and info["NodeChecks"] == ["serfHealth"]
    assert client.session.renew(sid)["ID"] == sid
    assert [s["ID"] for s in client.session.list()[1]] == [sid]
    assert client.kv.put("eph", b"x", acquire=sid) is True
    assert double.expire_session(sid) is True
    assert client.kv.get("eph")[1] is None
    with pytest.raises(consul.NotFound):
        client.session.renew(sid)
    with pytest.raises(consul.ConsulException, match="Invalid Session TTL"):
        client.http.put(CB.json(), "/v1/session/create", data='{"TTL": "5s"}')


def test_lock_delay_blocks_other_sessions_after_invalidation(client: consul.Consul) -> None:
    holder = client.session.create()  # no LockDelay sent: the double's default (0.3 s here)
    other = client.session.create(lock_delay=0)
    assert client.kv.put("leader", b"h", acquire=holder) is True
    before = time.monotonic()
    client.session.destroy(holder)
    assert client.kv.put("leader", b"o", acquire=other) is False  # inside the lock-delay window
    poll_until(lambda: client.kv.put("leader", b"o", acquire=other), timeout_s=10, what="the lock after its delay")
    assert time.monotonic() - before >= 0.3, "not before the lock delay was over"


def test_ttl_expiry_releases_locks() -> None:
    with ConsulDouble(ttl_multiplier=0.02) as server:  # TTL 10s expires after 10 x 0.02 = 0.2 s
        client = consul.Consul(host=server.host, port=server.port)
        sid = client.session.create(ttl=10, lock_delay=0)
        assert client.kv.put("ttl-lock", b"x", acquire=sid) is True
        index, _ = client.kv.get("ttl-lock")
        new_index, entry = client.kv.get("ttl-lock", index=index, wait="3s")  # woken by the expiry
        assert int(new_index) > int(index) and "Session" not in entry
        assert client.session.info(sid)[1] is None


def test_set_down_cuts_connections_and_set_up_recovers(client: consul.Consul, double: ConsulDouble) -> None:
    client.kv.put("up", b"1")
    index, _ = client.kv.get("up")
    cut: dict[str, BaseException] = {}
    watcher = consul.Consul(host=double.host, port=double.port)

    def block() -> None:
        try:
            watcher.kv.get("up", index=index, wait="5s")
        except BaseException as err:
            cut["error"] = err

    thread = threading.Thread(target=block)
    thread.start()
    poll_until(lambda: blocking_get_arrived(double, "up"), timeout_s=10, what="the watcher's blocking GET")
    try:
        double.set_down(True)
        thread.join(timeout=3)
        assert isinstance(cut.get("error"), requests.exceptions.ConnectionError)  # the blocking query was cut
        with pytest.raises(requests.exceptions.ConnectionError):
            client.kv.get("up")
    finally:
        double.set_down(False)
    assert client.kv.get("up")[1]["Value"] == b"1"


def test_go_durations() -> None:
    assert parse_go_duration("1m30s") == 90 and parse_go_duration("500ms") == 0.5 and parse_go_duration("0") == 0
    for bad in ("", "5", "5 s", "1x", "."):
        with pytest.raises(ValueError):
            parse_go_duration(bad)
    assert [format_go_duration(s) for s in (10, 86400, 90, 0.1)] == ["10s", "24h0m0s", "1m30s", "100ms"]


KEYS = st.sampled_from(("k/a", "k/b", "k/c"))
CAS = st.sampled_from(("zero", "current", "stale"))  # which ModifyIndex a CAS sends
_op = st.one_of(
    st.tuples(st.just("put"), KEYS, st.binary(max_size=3)),
    st.tuples(st.just("cas"), KEYS, st.binary(max_size=3), CAS),
    st.tuples(st.just("delete"), KEYS),
    st.tuples(st.just("delete_cas"), KEYS, CAS),
)


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(_op, max_size=12))
def test_kv_matches_a_dict_model(double: ConsulDouble, ops: list[tuple[Any, ...]]) -> None:
    double.reset()
    client = consul.Consul(host=double.host, port=double.port)
    model: dict[str, tuple[bytes, int]] = {}  # key -> (value, ModifyIndex)
    highest = 0
    for op in ops:
        kind, key = op[0], op[1]
        current = model.get(key)
        which = op[-1] if kind in ("cas", "delete_cas") else None
        cas = {"zero": 0, "stale": current[1] - 1 if current else 1, "current": current[1] if current else 7}.get(
            which or "", None)
        if kind == "put":
            assert client.kv.put(key, op[2]) is True
            expected_change = current is None or current[0] != op[2]
        elif kind == "cas":
            ok = (cas == 0 and current is None) or (current is not None and cas == current[1])
            assert client.kv.put(key, op[2], cas=cas) is ok
            expected_change = ok and (current is None or current[0] != op[2])
        elif kind == "delete":
            assert client.kv.delete(key) is True
            model.pop(key, None)
            expected_change = False
        else:
            ok = current is None or cas == current[1]
            assert client.kv.delete(key, cas=cas) is ok
            if current is not None and ok:
                model.pop(key)
            expected_change = False
        if kind in ("put", "cas") and (kind == "put" or ok):
            _, entry = client.kv.get(key)
            if expected_change:
                assert entry["ModifyIndex"] > highest  # a real write gets a fresh, higher raft index
            else:
                assert entry["ModifyIndex"] == current[1]  # type: ignore[index]
            model[key] = (entry["Value"] or b"", entry["ModifyIndex"])
            highest = max(highest, entry["ModifyIndex"])
        _, listed = client.kv.get("k/", recurse=True)
        assert {e["Key"]: (e["Value"] or b"", e["ModifyIndex"]) for e in listed or []} == model
