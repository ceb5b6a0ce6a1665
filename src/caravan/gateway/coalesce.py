"""Natural coalescing of one worker's calls: requests that arrive while a call is in flight share the next one.

A gRPC call costs the gateway and the worker a few hundred microseconds of CPU each, whatever its size: more
than scoring one row. So while a call to a worker is in flight, the requests for that worker wait in a queue,
and when the call returns everything queued goes as ONE call (their rows side by side, each request encoded
once), whose scores are split back by request. There is no timer: a request that finds the worker idle is
sent on the event loop's next turn (with whatever else that turn brought), so at low load nothing waits; the
busier the worker, the more requests share a call. A call carries at most ``max_rows`` rows (64), and a
request that large goes alone: sharing pays where the call costs more than the rows, and a large shared call
would make each of its requests wait for all of them (with few requests in flight the gateway and the worker
would take turns instead of working at once).

Each request keeps what is its own: its request id (the call's id lists them all, for the worker's logs), its
deadline (it stops waiting when its own time is up; the call's deadline is the latest of its requests'), and
its error: rows that cannot be encoded are refused before they join anything, and when the worker refuses a
shared call (``INVALID_ARGUMENT``, ``RESOURCE_EXHAUSTED``) every request of it is sent again alone, so that
only the request at fault gets the refusal, with its own message and row numbers. A worker that fails a
shared call fails it for every request in it; each then fails over as it would have alone
(:meth:`caravan.gateway.workers.WorkerPool.call_async`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ..serving.worker_client import Prediction

__all__ = ["DEFAULT_MAX_ROWS", "CallFailed", "Coalescer"]

DEFAULT_MAX_ROWS = 64  # rows per shared call; a request of this many goes alone (see the module docstring)
_REFUSALS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


class CallFailed(Exception):
    """A request's time ran out in the queue (``DEADLINE_EXCEEDED``), or the worker's reply did not fit its call
    (``INTERNAL``); it reads like a gRPC error (``code()``, ``details()``), so the pool treats it as one."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        self._code = code
        super().__init__(message)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self)


@dataclass
class _Pending:
    part: bytes
    rows: int
    request_id: str
    deadline: float
    future: asyncio.Future[Prediction]


def _code(exc: BaseException) -> Any:
    code = getattr(exc, "code", None)
    try:
        return code() if callable(code) else None
    except Exception:  # an error with a code() of another kind
        return None


class Coalescer:
    """One worker's calls, coalesced (see the module's docstring). ``client`` is a
    :class:`~caravan.serving.worker_client.PredictorClient` (``encode`` and ``predict_encoded_async``); a
    coalescer belongs to the event loop it was first used on.

    ``calls`` counts the calls sent, ``shared`` the requests that went in a call with others.
    """

    def __init__(self, client: Any, *, max_rows: int = DEFAULT_MAX_ROWS, max_in_flight: int = 1) -> None:
        if max_rows < 1 or max_in_flight < 1:
            raise ValueError("max_rows and max_in_flight must be at least 1")
        self.client, self.max_rows, self.max_in_flight = client, max_rows, max_in_flight
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: collections.deque[_Pending] = collections.deque()
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.calls = 0
        self.shared = 0

    async def predict(self, rows: Sequence[Any], request_id: str, timeout_s: float) -> Prediction:
        """The worker's scores for ``rows`` (alone or in a shared call), within ``timeout_s``; the errors of
        :meth:`PredictorClient.predict_async` (:class:`CallFailed` when the time is up while queued)."""
        part = self.client.encode(rows)  # a row that cannot be written is refused here, for this request alone
        loop = asyncio.get_running_loop()
        self.loop = loop
        if not rows or len(rows) >= self.max_rows:  # nothing to share a call with: alone, at once
            return await self._call([part], request_id, timeout_s, len(rows))
        pending = _Pending(part, len(rows), request_id, loop.time() + timeout_s, loop.create_future())
        self._queue.append(pending)
        if self._in_flight < self.max_in_flight:
            # The call starts on the loop's next turn: requests that the same turn brings (several connections
            # read at once) join it. No timer: on an idle gateway that turn comes at once.
            self._in_flight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._tasks.discard)
        # Its own deadline (cheaper than wait_for): a request whose time is up is answered so, and skipped if queued.
        timer = loop.call_at(pending.deadline, _expire, pending.future, timeout_s)
        try:
            return await pending.future
        finally:
            timer.cancel()

    async def _call(self, parts: list[bytes], request_id: str, timeout_s: float, rows: int) -> Prediction:
        self.calls += 1
        reply = await self.client.predict_encoded_async(parts, request_id, timeout_s)
        scores = list(reply.scores)
        if len(scores) != rows:  # a worker that does not answer row for row has failed, whoever sent what
            raise CallFailed(grpc.StatusCode.INTERNAL, f"the worker gave {len(scores)} scores for {rows} rows")
        return Prediction(scores, reply.artifact_id, reply.model)

    def _take(self) -> list[_Pending]:
        """The queue's head up to ``max_rows`` rows (at least one request), without requests that gave up."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue:
            head = self._queue[0]
            if head.future.done():  # its caller's time ran out, or it was cancelled
                self._queue.popleft()
                continue
            if batch and rows + head.rows > self.max_rows:
                break
            batch.append(self._queue.popleft())
            rows += head.rows
        return batch

    async def _drain(self) -> None:
        try:
            while batch := self._take():
                await self._send(batch)
        finally:
            self._in_flight -= 1

    async def _send(self, batch: list[_Pending]) -> None:
        """One call for ``batch``; each request's future gets its scores or its error."""
        loop = asyncio.get_running_loop()
        timeout_s = max(p.deadline for p in batch) - loop.time()
        if timeout_s <= 0:
            for p in batch:
                _settle(p, exc=CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED,
                                          "the deadline passed while queued behind other calls to the worker"))
            return
        if len(batch) > 1:
            self.shared += len(batch)
        try:
            prediction = await self._call([p.part for p in batch], ",".join(p.request_id for p in batch), timeout_s,
                                          sum(p.rows for p in batch))
        except Exception as exc:
            if len(batch) > 1 and _code(exc) in _REFUSALS:
                # Which request is at fault, and its own message and row numbers: ask for each one alone.
                await asyncio.gather(*(self._send([p]) for p in batch))
            else:
                for p in batch:
                    _settle(p, exc=exc)
            return
        start = 0
        for p in batch:
            _settle(p, Prediction(prediction.scores[start:start + p.rows], prediction.artifact_id, prediction.model))
            start += p.rows


def _expire(future: asyncio.Future[Prediction], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(CallFailed(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s:.3f} s "
                                        "(queued behind other calls to the worker)"))


def _settle(pending: _Pending, result: Prediction | None = None, *, exc: BaseException | None = None) -> None:
    if pending.future.done():  # its caller gave up meanwhile
        return
    if exc is not None:
        pending.future.set_exception(exc)
    else:
        pending.future.set_result(result)  # type: ignore[arg-type]
