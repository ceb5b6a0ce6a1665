"""The workers behind a gateway: who they are (from ``--worker`` or Consul's health API), one pooled gRPC client
per worker, and calling one of an arm's workers with failover.

:class:`WorkerPool` keeps one client (one HTTP/2 channel, multiplexed) per worker address, created when the
worker first appears and closed when it goes. A call tries the arm's healthy workers in turn, starting from a
rotating offset (round robin); a worker that fails (no answer, deadline, an error of its own) is skipped for
a cool-down that doubles with each failure in a row, and the call moves on to the next one within the same
deadline. Concurrent calls to one worker are coalesced (:mod:`.coalesce`): while a call is in flight, the
requests for that worker queue up and then share one call. A worker that refuses the request
(``INVALID_ARGUMENT``: the rows do not fit the model) is the client's fault: its message goes back to the
client and no other worker is tried.

:class:`ConsulDiscovery` follows ``GET /v1/health/service/caravan-<env>-worker?passing&tag=model=M`` with
blocking queries and groups the instances by their ``arm=NAME`` tag. Like every follower in caravan it never
dies: an error is logged, counted, shown in ``/health`` and retried with backoff, and the last membership
stays in use meanwhile.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from .coalesce import DEFAULT_MAX_ROWS, Coalescer
from .loop import RetryLoop

log = logging.getLogger("caravan.gateway")


class NoHealthyWorker(Exception):
    """Every worker of an arm failed or is cooling down (or the arm has none)."""

    def __init__(self, arm: str, tried: int, last_error: str | None) -> None:
        self.arm, self.tried, self.last_error = arm, tried, last_error
        detail = f"; tried {tried}, last error: {last_error}" if tried else ""
        super().__init__(f"arm {arm!r} has no healthy worker{detail}")


class WorkerRefused(Exception):
    """A worker refused the request (gRPC ``INVALID_ARGUMENT``: rows that do not fit the model, or
    ``RESOURCE_EXHAUSTED``: more rows than it takes): the client's fault, with the worker's message."""

    def __init__(self, message: str, *, field_name: str | None = None, row: int | None = None,
                 too_large: bool = False) -> None:
        self.field_name, self.row, self.too_large = field_name, row, too_large
        super().__init__(message)


@dataclass
class _Worker:
    target: str
    client: Any
    failures: int = 0  # in a row
    retry_at: float = 0.0
    calls: int = 0
    errors: int = 0
    last_error: str | None = None
    serves: str | None = None  # the artifact id of its last answer
    coalescer: Coalescer | None = None
    failed_by: BaseException | None = None  # the error last counted: a shared call's error counts once

    def healthy(self, now: float) -> bool:
        return now >= self.retry_at


@dataclass
class _Arm:
    workers: list[_Worker] = field(default_factory=list)
    turn: Any = field(default_factory=itertools.count)


def parse_worker_flags(values: Sequence[str]) -> dict[str, list[str]]:
    """``--worker ARM=host:port`` flags as {arm: [target, ...]}; ConfigurationError naming a malformed one."""
    found: dict[str, list[str]] = {}
    for value in values:
        arm, sep, target = value.partition("=")
        host, colon, port = target.rpartition(":")
        if not sep or not arm or not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigurationError(f"--worker {value!r}: expected ARM=host:port (for example control=127.0.0.1:9001)")
        found.setdefault(arm, []).append(target)
    return found


def _rpc_code(exc: BaseException) -> str | None:
    """The gRPC status code name of an error raised by a gRPC call (None for any other error)."""
    code = getattr(exc, "code", None)
    if callable(code):
        try:
            value = code()
        except Exception:  # not a gRPC error after all
            return None
        return getattr(value, "name", None)
    return None


class WorkerPool:
    """Pooled clients of every worker, by arm, with failover and cool-downs."""

    def __init__(self, connect: Callable[[str], Any], *, cooldown_s: float = 0.5, max_cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, coalesce_rows: int = DEFAULT_MAX_ROWS) -> None:
        """``connect(target)`` makes a worker's client; ``coalesce_rows``: at most this many rows in a call that
        several requests share (0: every request its own call)."""
        self._connect, self.cooldown_s, self.max_cooldown_s, self._clock = connect, cooldown_s, max_cooldown_s, clock
        self.coalesce_rows = coalesce_rows
        self._lock = threading.Lock()
        self._arms: dict[str, _Arm] = {}
        self._by_target: dict[str, _Worker] = {}

    def set_members(self, members: Mapping[str, Sequence[str]]) -> None:
        """Make the pool's workers exactly ``members`` ({arm: [target, ...]}): new ones get a client, gone ones
        are closed, those that stay keep their client and failure record."""
        closed: list[_Worker] = []
        with self._lock:
            wanted = {target for targets in members.values() for target in targets}
            for target in list(self._by_target):
                if target not in wanted:
                    closed.append(self._by_target.pop(target))
            arms: dict[str, _Arm] = {}
            for arm, targets in members.items():
                entry = _Arm(turn=self._arms[arm].turn if arm in self._arms else itertools.count())
                for target in dict.fromkeys(targets):
                    worker = self._by_target.get(target)
                    if worker is None:
                        worker = self._by_target[target] = _Worker(target, self._connect(target))
                    entry.workers.append(worker)
                arms[arm] = entry
            self._arms = arms
        for worker in closed:
            close = getattr(worker.client, "close", None)
            if close is not None:
                try:
                    close()
                except Exception as exc:  # closing a channel of a worker that is gone: nothing to do about it
                    log.debug("closing the client of %s failed: %s", worker.target, exc)

    def healthy_count(self, arm: str) -> int:
        """How many workers of ``arm`` are not cooling down after a failure."""
        now = self._clock()
        with self._lock:
            entry = self._arms.get(arm)
            return sum(1 for w in entry.workers if w.healthy(now)) if entry else 0

    def _candidates(self, arm: str, include_cooling: bool) -> list[_Worker]:
        """The arm's workers to try, in turn from a rotating start (round robin)."""
        now = self._clock()
        with self._lock:
            entry = self._arms.get(arm)
            if entry is None or not entry.workers:
                raise NoHealthyWorker(arm, 0, None)
            start = next(entry.turn) % len(entry.workers)
            order = entry.workers[start:] + entry.workers[:start]
            return [w for w in order if include_cooling or w.healthy(now)]

    def _failure(self, worker: _Worker, exc: Exception) -> str:
        """Raise :class:`WorkerRefused` for a refusal (the client's fault); else mark the worker failed and
        return the error in one line."""
        code = _rpc_code(exc)
        if code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"):
            from ..serving.worker_client import refusal

            message, field_name, row = refusal(exc)
            raise WorkerRefused(message, field_name=field_name, row=row,
                                too_large=code == "RESOURCE_EXHAUSTED") from exc
        details = getattr(exc, "details", None)
        lines = str((details() if callable(details) else None) or exc).splitlines() or [""]
        error = f"{worker.target}: {code or type(exc).__name__}: {lines[0][:300]}"
        self._failed(worker, error, exc)
        return error

    def _answered(self, worker: _Worker, reply: Any) -> Any:
        with self._lock:
            worker.failures, worker.retry_at, worker.failed_by = 0, 0.0, None
            worker.serves = getattr(reply, "artifact_id", None)
        return reply

    async def call_async(self, arm: str, rows: list[Any], request_id: str, timeout_s: float, *,
                         include_cooling: bool = False) -> Any:
        """The reply of one of ``arm``'s healthy workers, trying the next one when one fails, all within
        ``timeout_s``, on the gateway's event loop (the clients' ``predict_async``: no thread per call). Raises
        :class:`WorkerRefused` (the rows are invalid) or :class:`NoHealthyWorker`. ``include_cooling``: also try
        workers in their cool-down (a last resort)."""
        deadline = self._clock() + timeout_s
        tried, last_error = 0, None
        for worker in self._candidates(arm, include_cooling):
            remaining = deadline - self._clock()
            if remaining <= 0:
                break
            tried += 1
            worker.calls += 1
            try:
                if self.coalesce_rows:
                    reply = await self._coalescer(worker).predict(rows, request_id, remaining)
                else:
                    reply = await worker.client.predict_async(rows, request_id, remaining)
            except Exception as exc:
                last_error = self._failure(worker, exc)
                continue
            return self._answered(worker, reply)
        raise NoHealthyWorker(arm, tried, last_error)

    def _coalescer(self, worker: _Worker) -> Coalescer:
        """The worker's coalescer on the running event loop (a new one for another loop: its futures are the loop's)."""
        coalescer = worker.coalescer
        if coalescer is None or (coalescer.loop is not None and coalescer.loop is not asyncio.get_running_loop()):
            coalescer = worker.coalescer = Coalescer(worker.client, max_rows=self.coalesce_rows)
        return coalescer

    def _failed(self, worker: _Worker, error: str, exc: BaseException | None = None) -> None:
        with self._lock:
            if exc is not None and worker.failed_by is exc:  # the requests of one shared call: one failure
                return
            worker.failed_by = exc
            worker.failures += 1
            worker.errors += 1
            worker.last_error = error
            cooldown = min(self.cooldown_s * 2 ** (worker.failures - 1), self.max_cooldown_s)
            worker.retry_at = self._clock() + cooldown
        log.warning("worker failed, skipped for %.1f s: %s", cooldown, error)

    def describe(self) -> dict[str, list[dict[str, Any]]]:
        """Every arm's workers for /health: address, healthy, calls (requests), errors, last error, and ``sent``:
        the calls (stream messages) that carried them (fewer when requests shared calls)."""
        now = self._clock()
        with self._lock:
            return {arm: [{"target": w.target, "healthy": w.healthy(now), "calls": w.calls, "errors": w.errors,
                           "last_error": w.last_error, "serves": w.serves,
                           "sent": w.calls if w.coalescer is None else w.coalescer.calls} for w in entry.workers]
                    for arm, entry in sorted(self._arms.items())}


def members_of(entries: Sequence[Mapping[str, Any]], model: str) -> dict[str, list[str]]:
    """{arm: [host:port]} from ``/v1/health/service`` entries whose tags say ``model=M`` and ``arm=NAME``."""
    members: dict[str, list[str]] = {}
    for entry in entries:
        service, node = entry.get("Service") or {}, entry.get("Node") or {}
        tags = service.get("Tags") or []
        if f"model={model}" not in tags:
            continue
        arms = [tag[len("arm="):] for tag in tags if isinstance(tag, str) and tag.startswith("arm=")]
        address = service.get("Address") or node.get("Address")  # an empty service address means the node's
        port = service.get("Port")
        if len(arms) != 1 or not arms[0] or not address or not isinstance(port, int) or port <= 0:
            continue
        host = f"[{address}]" if ":" in address else address
        members.setdefault(arms[0], []).append(f"{host}:{port}")
    return {arm: sorted(targets) for arm, targets in members.items()}


class ConsulDiscovery(RetryLoop):
    """Follows the passing instances of the worker service for one model and hands them to the pool."""

    def __init__(self, pool: WorkerPool, model: str, *, service: str | None = None, address: str | None = None,
                 wait_s: float = 30.0, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0) -> None:
        super().__init__(f"discovery-{model}", min_backoff_s=min_backoff_s, max_backoff_s=max_backoff_s)
        from ..consul_api import ConsulAPI

        # caravan's Consul client: one construction, one token source, one set of timeouts and errors.
        consul = ConsulAPI(address)
        self.consul = consul
        self.pool, self.model, self.address, self.client = pool, model, consul.address, consul.client
        self.service = service or f"caravan-{consul.environment}-worker"
        self.wait_s = wait_s
        self.index: str | None = None
        self.members: dict[str, list[str]] = {}
        self.synced = threading.Event()  # set once the first membership has been read

    def step(self) -> float:
        """One (blocking) read of the service's passing instances, applied to the pool."""
        try:
            index, entries = self.consul.call(f"GET /v1/health/service/{self.service}", self.client.health.service,
                                              self.service, index=self.index, wait=f"{int(self.wait_s)}s",
                                              passing=True, tag=f"model={self.model}")
        except Exception:
            self.index = None  # read afresh after an error
            raise
        members = members_of(entries or [], self.model)
        if members != self.members or not self.synced.is_set():
            self.pool.set_members(members)
            if members != self.members:
                log.info("workers of %s: %s", self.model, {arm: len(t) for arm, t in members.items()})
            self.members = members
        # An index that goes backwards (a restored snapshot, another server) restarts the blocking query from
        # the beginning rather than waiting for the old index to come round again (Consul's blocking query notes).
        self.index = index if self.index is None or int(index or 0) >= int(self.index) else None
        self.synced.set()
        return 0.0

