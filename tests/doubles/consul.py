"""An in-process Consul agent (KV store and sessions) that the real ``py-consul`` client drives unchanged.

The double answers the HTTP API the way a Consul 1.22 agent (CE, one server, ``dc1``) does, as read in
``agent/kvs_endpoint.go``, ``agent/session_endpoint.go``, ``agent/http.go`` and the state store
(``agent/consul/state/kvs.go``, ``graveyard.go``, ``session.go``):

* KV: ``GET`` (single key, ``?recurse``, ``?keys[&separator=]``, ``?raw``), ``PUT`` (``?cas``, ``?flags``,
  ``?acquire``, ``?release``), ``DELETE`` (``?recurse``, ``?cas``). Values are raw bytes on the wire and
  base64 (``null`` when empty) in JSON. A missing key is a 404 with an empty body that still carries
  ``X-Consul-Index``.
* Indexes: one raft index for every write; ``CreateIndex``/``ModifyIndex`` come from it. A rewrite that
  changes nothing (same value, flags, session and lock index) keeps its ``ModifyIndex``, as
  ``kvsSetTxn`` does. Deletes leave tombstones, so a recurse index does not go down until
  :meth:`ConsulDouble.reap_tombstones` (Consul's tombstone GC) runs; after that it may.
* Blocking queries (``?index=&wait=``) on every read, woken by a condition variable.
* Sessions: create, destroy, renew, info, list, node; TTL expiry after TTL x 2; ``release``/``delete``
  behaviours; lock-delay after invalidation.
* Services: ``/v1/health/service/:service`` and ``/v1/catalog/service/:service`` over instances a test
  registers (``consul_catalog``).
* ACLs: with ``acl_token`` or ``acl_policies`` set the default policy is deny; ``acl_token`` is a management
  token and each ``acl_policies`` token has its policies' rules, enforced as ``consul_acl`` describes (keys,
  sessions; reads filtered per key and per session node).

Errors are ``text/plain`` bodies with Consul's status codes; success bodies are compact JSON as Go's
``encoding/json`` writes it.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from ._http import blocking_query, go_json, index_headers, shutdown
from .consul_acl import Authorizer, authorizers
from .consul_catalog import CatalogMixin, Instance

DATACENTER = "dc1"
NODE_NAME = "consul-double"
SERVER_ADDRESS = "127.0.0.1:8300"  # what /v1/status/leader reports
SERF_CHECK = "serfHealth"
DEFAULT_QUERY_TIME = 300.0  # blocking query wait when none is given (agent default_query_time)
MAX_QUERY_TIME = 600.0  # longest blocking query wait (agent max_query_time)
SESSION_TTL_MIN = 10.0  # session_ttl_min default
SESSION_TTL_MAX = 86400.0  # structs.SessionTTLMax
LOCK_DELAY_MIN_THRESHOLD_NS = 1000  # a LockDelay number below this is read as seconds
FIRST_RAFT_INDEX = 10  # a fresh agent has applied a few raft entries before the first KV write

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string ("30s", "1m30s", "500ms", "0"); ValueError as time.ParseDuration fails."""
    body = text[1:] if text[:1] in "+-" else text
    sign = -1.0 if text[:1] == "-" else 1.0
    if body == "0":
        return 0.0
    if not body:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None or match.group(1) in ("", "."):
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def format_go_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration.String`` writes it ("10s", "24h0m0s", "1m30s", "500ms")."""
    ns = round(seconds * 1e9)
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1_000_000_000:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{_trim(ns / size)}{unit}"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = f"{_trim(rest / 1e9)}s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _trim(number: float) -> str:
    return f"{number:.9f}".rstrip("0").rstrip(".")


class HTTPError(Exception):
    """An error answer: status, text/plain reason and any extra headers."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.headers = status, reason, headers or {}


class _Dropped(Exception):
    """The connection is to be cut without an answer (the agent is down or stopping)."""


@dataclass
class _Response:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Entry:
    key: str
    value: bytes
    flags: int
    session: str
    lock_index: int
    create_index: int
    modify_index: int

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"LockIndex": self.lock_index, "Key": self.key, "Flags": self.flags,
                               "Value": base64.b64encode(self.value).decode() if self.value else None}
        if self.session:
            out["Session"] = self.session
        out["CreateIndex"], out["ModifyIndex"] = self.create_index, self.modify_index
        return out


@dataclass
class _Session:
    id: str
    name: str
    node: str
    lock_delay_ns: int
    behavior: str
    ttl: str
    ttl_s: float
    node_checks: list[str]
    create_index: int
    modify_index: int
    deadline: float | None = None  # time.monotonic() after which the TTL has run out

    def to_json(self) -> dict[str, Any]:
        return {"ID": self.id, "Name": self.name, "Node": self.node, "LockDelay": self.lock_delay_ns,
                "Behavior": self.behavior, "TTL": self.ttl, "NodeChecks": list(self.node_checks),
                "ServiceChecks": None, "CreateIndex": self.create_index, "ModifyIndex": self.modify_index}


@dataclass
class _Query:
    """What an answer needs from the request: its parsed URL, token and blocking options."""

    method: str
    path: str
    params: dict[str, list[str]]
    token: str
    min_index: int = 0
    wait: float | None = None

    def has(self, name: str) -> bool:
        return name in self.params

    def get(self, name: str) -> str:
        values = self.params.get(name)
        return values[0] if values else ""


@dataclass
class _Read:
    """One evaluation of a read: its index and how to answer it."""

    index: int
    status: int = 200
    body: bytes = b""
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _key_name_error(key: str) -> str | None:
    """Why Consul 1.22's KV key validation (on unless disable_kv_key_validation) rejects ``key``, if it does."""
    if key != key.strip():
        return "invalid key name, leading or trailing spaces are not allowed"
    lowered = key.lower()
    if any(part == ".." for part in re.split(r"[/\\]", key)) or any(
            seq in lowered for seq in ("..%2f", "%2e%2e", "..%5c")):
        return "invalid key name, path traversal is not allowed"
    return None


def _parse_uint(text: str) -> int:
    """Go's strconv.ParseUint(text, 10, 64); its error (a 500 in Consul) otherwise."""
    if not text.isascii() or not text.isdigit():
        raise HTTPError(500, f'strconv.ParseUint: parsing "{text}": invalid syntax')
    value = int(text)
    if value >= 1 << 64:
        raise HTTPError(500, f'strconv.ParseUint: parsing "{text}": value out of range')
    return value


@final  # so that __enter__ can promise exactly this type
class ConsulDouble(CatalogMixin):
    """A Consul agent's KV and session API on a loopback port, for tests that drive ``py-consul``.

    ``acl_token``: when set, ACLs are on with default policy deny and this is a management token; requests
    carry a token as ``X-Consul-Token``, ``Authorization: Bearer``, or the deprecated ``?token=``.
    ``acl_policies``: ``{SecretID: [policy rules (HCL), ...]}``, tokens with exactly those policies (ACLs on as
    well). Without a token the anonymous token is used, which has no policy: single-key reads and every write
    get 403 ``Permission denied: ...``, list reads are filtered to nothing. An unknown token gets 403
    ``ACL not found``.
    ``max_value_size``: ``kv_max_value_size``; a larger PUT body gets 413.
    ``lock_delay_s``: the lock delay of sessions created without ``LockDelay`` (Consul: 15 s).
    ``ttl_multiplier``: a TTL session is invalidated after TTL x this without a renew (Consul: 2); lower
    it to make TTL expiry fast in tests (py-consul refuses TTLs under 10 s).
    """

    def __init__(self, *, acl_token: str | None = None, acl_policies: dict[str, list[str]] | None = None,
                 max_value_size: int = 512 * 1024, lock_delay_s: float = 15.0, ttl_multiplier: float = 2.0) -> None:
        self.acl_token, self.max_value_size = acl_token, max_value_size
        self.acl_enabled = acl_token is not None or acl_policies is not None
        self._authorizers = authorizers(acl_token, acl_policies)
        self.lock_delay_s, self.ttl_multiplier = lock_delay_s, ttl_multiplier
        self.host, self.port, self.address = "127.0.0.1", 0, ""
        self.requests: list[tuple[str, str]] = []
        self._log_lock = threading.Lock()
        self._cond = threading.Condition()
        self._down = self._stopping = False
        self._raft_index = FIRST_RAFT_INDEX
        self._kvs_index = self._tombstones_index = self._sessions_index = 0
        self._kv: dict[str, _Entry] = {}
        self._tombstones: dict[str, int] = {}
        self._sessions: dict[str, _Session] = {}
        self._services: dict[str, Instance] = {}  # consul_catalog: service ID -> instance
        self._services_index = 0
        self._lock_delays: dict[str, float] = {}  # key -> time.monotonic() until which acquire fails
        self._server: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._connections: set[socket.socket] = set()

    # ------------------------------------------------------------------ lifecycle and test controls

    def start(self) -> str:
        """Serve on 127.0.0.1, on a free port, from daemon threads; return ``http://127.0.0.1:PORT``."""
        if self._server is None:
            with self._cond:
                self._stopping = False
            server = _Server(("127.0.0.1", 0), _Handler)
            server.double = self
            self._server = server
            self.port = server.server_address[1]
            self.address = f"http://{self.host}:{self.port}"
            self._threads = [threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True),
                             threading.Thread(target=self._reap_sessions, daemon=True)]
            for thread in self._threads:
                thread.start()
        return self.address

    def stop(self) -> None:
        """Stop serving, cut open connections (blocking queries included) and free the port; data is kept."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        server.shutdown()
        with self._log_lock:
            connections = list(self._connections)
        for conn in connections:
            shutdown(conn)
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._threads = []

    def __enter__(self) -> ConsulDouble:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def set_down(self, down: bool) -> None:
        """While down, every request's TCP connection is closed without an answer, blocking ones included."""
        with self._cond:
            self._down = down
            self._cond.notify_all()

    def raise_index(self, n: int) -> int:
        """Advance the raft index by ``n`` (the next write gets a much higher index); return the new index."""
        with self._cond:
            self._raft_index += n
            return self._raft_index

    def reap_tombstones(self) -> None:
        """Run Consul's tombstone GC now: after it, a recurse/keys index may go down (clients must reset)."""
        with self._cond:
            index = self._next_index()
            self._tombstones.clear()
            self._tombstones_index = index
            self._cond.notify_all()

    def expire_session(self, session_id: str) -> bool:
        """Invalidate a session as a TTL expiry or failed health check would; False if it is unknown."""
        with self._cond:
            if session_id not in self._sessions:
                return False
            self._invalidate(session_id)
            return True

    def reset(self) -> None:
        """Forget every key, tombstone, session, lock delay and logged request; indexes keep growing."""
        with self._cond:
            self._kv.clear()
            self._tombstones.clear()
            self._sessions.clear()
            self._lock_delays.clear()
            self._kvs_index = self._tombstones_index = self._sessions_index = self._next_index()
            self._cond.notify_all()
        with self._log_lock:
            self.requests.clear()

    # ------------------------------------------------------------------ plumbing for the handler

    def _record(self, method: str, raw_path: str) -> None:
        with self._log_lock:
            self.requests.append((method, raw_path))

    def _track(self, conn: socket.socket, open_: bool) -> None:
        with self._log_lock:
            if open_:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _is_down(self) -> bool:
        with self._cond:
            return self._down or self._stopping

    def _next_index(self) -> int:
        self._raft_index += 1
        return self._raft_index

    def _reap_sessions(self) -> None:
        """Invalidate TTL sessions whose deadline passed; sleeps on the condition until the next one."""
        with self._cond:
            while not self._stopping:
                now = time.monotonic()
                for session in list(self._sessions.values()):
                    if session.deadline is not None and session.deadline <= now:
                        self._invalidate(session.id)
                deadlines = [s.deadline for s in self._sessions.values() if s.deadline is not None]
                self._cond.wait(min(deadlines) - now if deadlines else None)

    # ------------------------------------------------------------------ HTTP API

    def _serve(self, method: str, raw_path: str, headers: Any, body: bytes) -> _Response:
        split = urlsplit(raw_path)
        path = unquote(split.path)
        params: dict[str, list[str]] = {}
        for name, value in parse_qsl(split.query, keep_blank_values=True):
            params.setdefault(name, []).append(value)
        query = _Query(method, path, params, self._token(params, headers))
        try:
            return self._route(query, headers, body)
        except HTTPError as err:
            headers_out = {"Content-Type": "text/plain; charset=utf-8", **err.headers}
            return _Response(err.status, err.reason.encode(), headers_out)
        except _Dropped:
            raise
        except Exception as err:  # a bug in the double: answer it like Consul's catch-all 500, visibly
            return _Response(500, f"consul double: {type(err).__name__}: {err}".encode(),
                             {"Content-Type": "text/plain; charset=utf-8"})

    def _route(self, q: _Query, headers: Any, body: bytes) -> _Response:
        path = q.path
        if path.startswith("/v1/kv/"):
            self._allow(q, "GET", "PUT", "DELETE")
            self._parse_read_options(q)
            key = path[len("/v1/kv/"):]
            problem = _key_name_error(key) if key else None
            if problem is not None:
                raise HTTPError(500, problem)
            if q.method == "GET":
                return self._kv_get(q, key)
            if q.method == "PUT":
                return self._kv_put(q, key, headers, body)
            return self._kv_delete(q, key)
        if path == "/v1/session/create":
            self._allow(q, "PUT")
            return self._session_create(q, body)
        for prefix, handler in (("/v1/session/destroy/", self._session_destroy),
                                ("/v1/session/renew/", self._session_renew)):
            if path.startswith(prefix):
                self._allow(q, "PUT")
                return handler(q, path[len(prefix):])
        for prefix, reader in (("/v1/session/info/", self._session_info),
                               ("/v1/session/node/", self._session_node)):
            if path.startswith(prefix):
                self._allow(q, "GET")
                self._parse_read_options(q)
                return self._blocking_read(q, functools.partial(reader, q, path[len(prefix):]))
        if path == "/v1/session/list":
            self._allow(q, "GET")
            self._parse_read_options(q)
            return self._blocking_read(q, lambda: self._session_list(q))
        if path.startswith("/v1/health/service/"):
            self._allow(q, "GET")
            self._parse_read_options(q)
            self._check_dc(q)
            name = path[len("/v1/health/service/"):]

            def health() -> _Read:
                index, body, extra = self._health_service(q, name)
                return _Read(index, 200, body, headers=extra)

            return self._blocking_read(q, health)
        if path.startswith("/v1/catalog/service/"):
            self._allow(q, "GET")
            self._parse_read_options(q)
            self._check_dc(q)
            service = path[len("/v1/catalog/service/"):]

            def catalog() -> _Read:
                index, body, extra = self._catalog_service(q, service)
                return _Read(index, 200, body, headers=extra)

            return self._blocking_read(q, catalog)
        if path == "/v1/status/leader":
            self._allow(q, "GET")
            return _Response(200, go_json(SERVER_ADDRESS), {"Content-Type": "application/json"})
        if path == "/v1/status/peers":
            self._allow(q, "GET")
            return _Response(200, go_json([SERVER_ADDRESS]), {"Content-Type": "application/json"})
        return _Response(404)  # agent.Index answers every unregistered path with an empty 404

    @staticmethod
    def _allow(q: _Query, *methods: str) -> None:
        if q.method not in methods:
            raise HTTPError(405, f"method {q.method} not allowed", {"Allow": ",".join(methods)})

    @staticmethod
    def _token(params: dict[str, list[str]], headers: Any) -> str:
        """The request's token, in Consul's order: ?token=, X-Consul-Token, Authorization: Bearer."""
        if params.get("token", [""])[0]:
            return params["token"][0]
        if headers.get("X-Consul-Token"):
            return str(headers["X-Consul-Token"])
        parts = str(headers.get("Authorization") or "").split(" ")
        if len(parts) == 2 and parts[0].lower() == "bearer":
            return parts[1].strip()
        return ""

    def _parse_read_options(self, q: _Query) -> None:
        """agent/http.go parse(): datacenter, consistency, then wait and index (400 on bad values)."""
        if q.has("stale") and q.has("consistent"):
            raise HTTPError(400, "Cannot specify ?stale with ?consistent, conflicting semantics.")
        if q.get("wait"):
            try:
                q.wait = parse_go_duration(q.get("wait"))
            except ValueError:
                raise HTTPError(400, "Invalid wait time") from None
        if q.get("index"):
            text = q.get("index")
            if not text.isascii() or not text.isdigit() or int(text) >= 1 << 64:
                raise HTTPError(400, "Invalid index")
            q.min_index = int(text)

    @staticmethod
    def _check_dc(q: _Query) -> None:
        if q.get("dc") not in ("", DATACENTER):
            raise HTTPError(500, "No path to datacenter")

    def _authz(self, q: _Query) -> Authorizer:
        """The request token's authorizer: everything with ACLs off, none for anonymous; 403 for an unknown token."""
        if not self.acl_enabled:
            return Authorizer(management=True)
        if not q.token:
            return Authorizer()
        found = self._authorizers.get(q.token)
        if found is None:
            raise HTTPError(403, "ACL not found")
        return found

    @staticmethod
    def _require(authz: Authorizer, resource: str, name: str, access: str) -> None:
        denial = authz.denial(resource, name, access)
        if denial is not None:
            raise HTTPError(403, denial)

    def _meta_headers(self, q: _Query, index: int) -> dict[str, str]:
        consistency = "stale" if q.has("stale") else "consistent" if q.has("consistent") else "leader"
        return {**index_headers("Consul", index), "X-Consul-Effective-Consistency": consistency,
                "X-Consul-Query-Backend": "blocking-query",
                "X-Consul-Default-ACL-Policy": "deny" if self.acl_enabled else "allow"}

    def _blocking_read(self, q: _Query, evaluate: Callable[[], _Read]) -> _Response:
        """Evaluate a read until its index passes ?index= or the wait (plus jitter) runs out."""
        wait = q.wait if q.wait is not None and q.wait > 0 else DEFAULT_QUERY_TIME
        wait = min(wait, MAX_QUERY_TIME)

        def read() -> tuple[_Read, int, int]:
            result = evaluate()
            return result, result.index, result.index

        def interrupted() -> bool:
            if self._down or self._stopping:
                raise _Dropped
            return False

        with self._cond:
            interrupted()
            result, _ = blocking_query(self._cond, read, q.min_index, wait, interrupted)
        headers = {**self._meta_headers(q, result.index), **result.headers}
        if result.content_type is not None:
            headers["Content-Type"] = result.content_type
        return _Response(result.status, result.body, headers)

    # ------------------------------------------------------------------ KV

    def _kvs_max_index(self) -> int:
        return max(self._kvs_index, self._tombstones_index)

    def _list_index(self, prefix: str, entries: list[_Entry]) -> int:
        """kvsListTxn: the highest ModifyIndex or tombstone under the prefix, else the table index."""
        if not prefix:
            return self._kvs_max_index()
        lindex = max((e.modify_index for e in entries), default=0)
        lindex = max([lindex, *(i for k, i in self._tombstones.items() if k.startswith(prefix))])
        return lindex or self._kvs_max_index()

    def _kv_get(self, q: _Query, key: str) -> _Response:
        recurse, keys = q.has("recurse"), q.has("keys")
        if not keys and not recurse and not key:
            raise HTTPError(400, "Missing key name")
        self._check_dc(q)
        authz = self._authz(q)
        if not keys and not recurse:
            self._require(authz, "key", key, "read")

        def readable(entries: list[_Entry]) -> list[_Entry]:  # aclFilter.filterDirEnt: key:read per entry
            return [e for e in entries if authz.allowed("key", e.key, "read")]
        pretty = q.has("pretty")

        def single() -> _Read:
            entry = self._kv.get(key)
            if entry is None:
                return _Read(self._kvs_max_index(), 404, content_type=None)
            if q.has("raw"):
                return _Read(entry.modify_index, 200, entry.value, "text/plain",
                             {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"})
            return _Read(entry.modify_index, 200, go_json([entry.to_json()], pretty))

        def listing() -> _Read:
            entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
            index = self._list_index(key, entries)
            shown = readable(entries)
            filtered = {"X-Consul-Results-Filtered-By-ACLs": "true"} if len(shown) < len(entries) else {}
            entries = shown
            if not entries:
                return _Read(index, 404, content_type=None, headers=filtered)
            return _Read(index, 200, go_json([e.to_json() for e in entries], pretty), headers=filtered)

        def key_list() -> _Read:
            separator = q.get("separator") if q.has("separator") else q.get("seperator")
            entries = [self._kv[k] for k in sorted(self._kv) if k.startswith(key)]
            index = self._list_index(key, entries)
            shown = readable(entries)
            filtered = {"X-Consul-Results-Filtered-By-ACLs": "true"} if len(shown) < len(entries) else {}
            names: list[str] = []
            for entry in shown:
                cut = entry.key.find(separator, len(key)) if separator else -1
                name = entry.key[:cut + len(separator)] if cut >= 0 else entry.key
                if not names or names[-1] != name:
                    names.append(name)
            if not names and key:
                return _Read(index, 404, content_type=None, headers=filtered)
            return _Read(index, 200, go_json(names, pretty), headers=filtered)

        return self._blocking_read(q, key_list if keys else listing if recurse else single)

    def _kv_put(self, q: _Query, key: str, headers: Any, body: bytes) -> _Response:
        if not key:
            raise HTTPError(400, "Missing key name")
        self._conflicting(q, "cas", "acquire", "release")
        flags = _parse_uint(q.get("flags")) if q.has("flags") else 0
        cas = _parse_uint(q.get("cas")) if q.has("cas") else None
        length = int(headers.get("Content-Length") or len(body))
        if max(length, len(body)) > self.max_value_size:
            raise HTTPError(413, f"Request body({max(length, len(body))} bytes) too large, max size: "
                            f"{self.max_value_size} bytes. See "
                            "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.")
        self._check_dc(q)
        self._require(self._authz(q), "key", key, "write")  # kvsPreApply: set, cas, lock and unlock alike
        with self._cond:
            if q.has("acquire"):
                result = self._kv_lock(key, body, flags, q.get("acquire"))
            elif q.has("release"):
                result = self._kv_unlock(key, body, flags, q.get("release"))
            else:
                result = self._kv_set(key, body, flags, cas)
            self._cond.notify_all()
        return _Response(200, go_json(result), {"Content-Type": "application/json"})

    @staticmethod
    def _conflicting(q: _Query, *flags: str) -> None:
        if sum(q.has(name) for name in flags) > 1:
            encoded = urlencode([(k, v) for k in sorted(q.params) for v in q.params[k]])
            raise HTTPError(400, f"Conflicting flags: {encoded}")

    def _write_entry(self, entry: _Entry, index: int) -> None:
        """kvsSetTxn: keep CreateIndex, skip the write when nothing changed, else stamp ModifyIndex."""
        existing = self._kv.get(entry.key)
        entry.create_index = existing.create_index if existing is not None else index
        if existing is not None and (existing.lock_index, existing.flags, existing.value, existing.session) == (
                entry.lock_index, entry.flags, entry.value, entry.session):
            return
        entry.modify_index = index
        self._kv[entry.key] = entry
        self._kvs_index = index

    def _kv_set(self, key: str, value: bytes, flags: int, cas: int | None) -> bool:
        index = self._next_index()
        existing = self._kv.get(key)
        if cas is not None and (
                (cas == 0 and existing is not None)
                or (cas != 0 and (existing is None or existing.modify_index != cas))):
            return False
        session = existing.session if existing is not None else ""
        self._write_entry(_Entry(key, value, flags, session, 0, 0, 0), index)
        return True

    def _kv_lock(self, key: str, value: bytes, flags: int, session_id: str) -> bool:
        if self._lock_delays.get(key, 0.0) > time.monotonic():
            return False  # kvsPreApply rejects a lock inside the lock-delay window, before raft
        index = self._next_index()
        if not session_id:
            raise HTTPError(500, "missing session")
        if session_id not in self._sessions:
            raise HTTPError(500, f"invalid session {json.dumps(session_id)}")
        existing = self._kv.get(key)
        if existing is None:
            lock_index = 1
        elif existing.session == session_id:
            lock_index = existing.lock_index
        elif existing.session:
            return False
        else:
            lock_index = existing.lock_index + 1
        self._write_entry(_Entry(key, value, flags, session_id, lock_index, 0, 0), index)
        return True

    def _kv_unlock(self, key: str, value: bytes, flags: int, session_id: str) -> bool:
        index = self._next_index()
        if not session_id:
            raise HTTPError(500, "missing session")
        existing = self._kv.get(key)
        if existing is None or existing.session != session_id:
            return False
        self._write_entry(_Entry(key, value, flags, "", existing.lock_index, 0, 0), index)
        return True

    def _kv_delete(self, q: _Query, key: str) -> _Response:
        self._conflicting(q, "recurse", "cas")
        recurse = q.has("recurse")
        if not recurse and not key:
            raise HTTPError(400, "Missing key name")
        cas = _parse_uint(q.get("cas")) if q.has("cas") else None
        self._check_dc(q)
        authz = self._authz(q)
        # kvsPreApply: a recursive delete needs KeyWritePrefix (write on the prefix and on every rule under it)
        denial = authz.key_write_prefix_denial(key) if recurse else authz.denial("key", key, "write")
        if denial is not None:
            raise HTTPError(403, denial)
        with self._cond:
            index = self._next_index()
            result = True
            if recurse:
                doomed = [k for k in self._kv if k.startswith(key)]
                for k in doomed:
                    del self._kv[k]
                if doomed:
                    if key:  # one tombstone for the whole prefix; none when the whole tree goes
                        self._tombstones[key] = index
                        self._tombstones_index = index
                    self._kvs_index = index
            elif cas is not None:
                existing = self._kv.get(key)
                if existing is None or existing.modify_index != cas:
                    result = existing is None  # kvsDeleteCASTxn: a missing key "was deleted"
                else:
                    self._delete_key(key, index)
            else:
                self._delete_key(key, index)
            self._cond.notify_all()
        return _Response(200, go_json(result), {"Content-Type": "application/json"})

    def _delete_key(self, key: str, index: int) -> None:
        if self._kv.pop(key, None) is not None:
            self._tombstones[key] = index
            self._kvs_index = self._tombstones_index = index

    # ------------------------------------------------------------------ sessions

    def _session_create(self, q: _Query, body: bytes) -> _Response:
        self._check_dc(q)
        spec: dict[str, Any] = {}
        if body:
            try:
                decoded = json.loads(body)
            except ValueError as err:
                raise HTTPError(400, f"Request decode failed: {err}") from None
            if decoded is not None and not isinstance(decoded, dict):
                raise HTTPError(400, "Request decode failed: json: cannot unmarshal "
                                f"{type(decoded).__name__} into Go value of type structs.Session")
            spec = {str(k).lower(): v for k, v in (decoded or {}).items()}  # encoding/json ignores case
        name, node, behavior, ttl = (self._str_field(spec, f, d) for f, d in (
            ("name", ""), ("node", NODE_NAME), ("behavior", ""), ("ttl", "")))
        lock_delay_ns = self._lock_delay_field(spec)
        checks = [*self._list_field(spec, "nodechecks"), *self._list_field(spec, "checks")]
        service_checks = self._list_field(spec, "servicechecks")
        if not any(k in spec for k in ("nodechecks", "checks", "servicechecks")):
            checks = [SERF_CHECK]
        self._require(self._authz(q), "session", node, "write")  # session_endpoint.go Apply: the node's
        behavior = behavior or "release"
        if behavior not in ("release", "delete"):
            raise HTTPError(500, f"Invalid Behavior setting '{behavior}'")
        ttl_s = 0.0
        if ttl:
            try:
                ttl_s = parse_go_duration(ttl)
            except ValueError as err:
                raise HTTPError(500, f"Session TTL '{ttl}' invalid: {err}") from None
            if ttl_s != 0 and not SESSION_TTL_MIN <= ttl_s <= SESSION_TTL_MAX:
                raise HTTPError(500, f"Invalid Session TTL '{round(ttl_s * 1e9)}', must be between "
                                f"[{format_go_duration(SESSION_TTL_MIN)}={format_go_duration(SESSION_TTL_MAX)}]")
        with self._cond:
            index = self._next_index()
            if node != NODE_NAME:
                raise HTTPError(500, "Missing node registration")
            missing = [c for c in checks if c != SERF_CHECK]  # the agent's node has only serfHealth
            missing += [c.get("ID", "") if isinstance(c, dict) else c for c in service_checks]
            if missing:
                raise HTTPError(500, f"Missing check '{missing[0]}' registration")
            session = _Session(str(uuid.uuid4()), name, node, lock_delay_ns, behavior, ttl, ttl_s,
                               list(dict.fromkeys(checks)), index, index)
            if ttl_s > 0:
                session.deadline = time.monotonic() + ttl_s * self.ttl_multiplier
            self._sessions[session.id] = session
            self._sessions_index = index
            self._cond.notify_all()
        return _Response(200, go_json({"ID": session.id}), {"Content-Type": "application/json"})

    @staticmethod
    def _str_field(spec: dict[str, Any], name: str, default: str) -> str:
        value = spec.get(name)
        if value is None:
            return default
        if not isinstance(value, str):
            raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {type(value).__name__} "
                            f"into Go struct field .{name} of type string")
        return value

    @staticmethod
    def _list_field(spec: dict[str, Any], name: str) -> list[Any]:
        value = spec.get(name)
        if value is None:
            return []
        if not isinstance(value, list):
            raise HTTPError(400, f"Request decode failed: json: cannot unmarshal {type(value).__name__} "
                            f"into Go struct field .{name} of type []string")
        return value

    def _lock_delay_field(self, spec: dict[str, Any]) -> int:
        """Session.UnmarshalJSON: a duration string or a number of ns; values under 1000 mean seconds."""
        value = spec.get("lockdelay")
        if value is None:
            return round(self.lock_delay_s * 1e9)
        if isinstance(value, str):
            try:
                ns = round(parse_go_duration(value) * 1e9)
            except ValueError as err:
                raise HTTPError(400, f"Request decode failed: {err}") from None
        elif isinstance(value, int | float) and not isinstance(value, bool):
            ns = int(value)
        else:
            raise HTTPError(400, "Request decode failed: json: cannot unmarshal LockDelay")
        return ns * 1_000_000_000 if ns < LOCK_DELAY_MIN_THRESHOLD_NS else ns

    def _session_for_write(self, q: _Query, session_id: str) -> _Session | None:
        if not session_id:
            raise HTTPError(400, "Missing session")
        self._check_dc(q)
        authz = self._authz(q)
        with self._cond:
            session = self._sessions.get(session_id)
        self._require(authz, "session", session.node if session is not None else NODE_NAME, "write")
        return session

    def _session_destroy(self, q: _Query, session_id: str) -> _Response:
        if self._session_for_write(q, session_id) is not None:
            with self._cond:
                if session_id in self._sessions:
                    self._invalidate(session_id)
        return _Response(200, go_json(True), {"Content-Type": "application/json"})

    def _session_renew(self, q: _Query, session_id: str) -> _Response:
        self._session_for_write(q, session_id)
        with self._cond:
            session = self._sessions.get(session_id)
            if session is None:
                raise HTTPError(404, f"Session id '{session_id}' not found")
            if session.ttl_s > 0:
                session.deadline = time.monotonic() + session.ttl_s * self.ttl_multiplier
                self._cond.notify_all()
            body = go_json([session.to_json()], q.has("pretty"))
        return _Response(200, body, {"Content-Type": "application/json"})

    def _sessions_read(self, q: _Query, sessions: list[_Session]) -> _Read:
        authz = self._authz(q)  # aclFilter.allowSession: session:read on each session's node
        shown = sorted((s for s in sessions if authz.allowed("session", s.node, "read")), key=lambda s: s.id)
        headers = {"X-Consul-Results-Filtered-By-ACLs": "true"} if len(shown) < len(sessions) else {}
        return _Read(self._sessions_index, 200, go_json([s.to_json() for s in shown], q.has("pretty")),
                     headers=headers)

    def _session_info(self, q: _Query, session_id: str) -> _Read:
        if not session_id:
            raise HTTPError(400, "Missing session")
        self._check_dc(q)
        session = self._sessions.get(session_id)
        return self._sessions_read(q, [session] if session is not None else [])

    def _session_node(self, q: _Query, node: str) -> _Read:
        if not node:
            raise HTTPError(400, "Missing node name")
        self._check_dc(q)
        return self._sessions_read(q, [s for s in self._sessions.values() if s.node == node])

    def _session_list(self, q: _Query) -> _Read:
        self._check_dc(q)
        return self._sessions_read(q, list(self._sessions.values()))

    def _invalidate(self, session_id: str) -> None:
        """deleteSessionTxn (caller holds the condition): drop the session, release or delete its locks."""
        session = self._sessions.pop(session_id)
        index = self._next_index()
        self._sessions_index = index
        expires = time.monotonic() + session.lock_delay_ns / 1e9
        for key in sorted(k for k, e in self._kv.items() if e.session == session_id):
            if session.behavior == "delete":
                self._delete_key(key, index)
            else:
                entry = self._kv[key]
                entry.session, entry.modify_index = "", index
                self._kvs_index = index
            if session.lock_delay_ns > 0:
                self._lock_delays[key] = expires
        self._cond.notify_all()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # idle keep-alive connections must not hold up stop()
    double: ConsulDouble


class _Handler(BaseHTTPRequestHandler):
    """Reads one request, lets the double answer it, writes the answer (or cuts the connection)."""

    protocol_version = "HTTP/1.1"  # keep-alive, as py-consul's requests.Session expects
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.double._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.double._track(self.connection, False)

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: no per-request line on stderr."""

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date only: Go's net/http sends no Server header."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def do_GET(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()

    def _handle(self) -> None:
        double = self.server.double
        double._record(self.command, self.path)
        if double._is_down():
            self._drop()
            return
        try:
            body = self._read_body()
        except (OSError, ValueError):
            self._drop()
            return
        try:
            response = double._serve(self.command, self.path, self.headers, body)
        except _Dropped:
            self._drop()
            return
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD" and response.body:
            self.wfile.write(response.body)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _drop(self) -> None:
        """Close the TCP connection without an answer, as a dead agent or a cut network would."""
        self.close_connection = True
        shutdown(self.connection)
