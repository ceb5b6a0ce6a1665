"""Coalescing a worker's calls (caravan.gateway.coalesce): whatever the interleaving, every caller gets exactly its
own scores, in order, as if it had called alone; a bad request fails only itself; deadlines and failures stay
each request's own. The scripted client below answers on the event loop after as many loop turns as the test
draws, so hypothesis explores the interleavings; the real-gRPC tests go through WorkerPool and a worker's stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.gateway.coalesce import CallFailed, Coalescer
from caravan.gateway.workers import WorkerPool, WorkerRefused
from caravan.serving.wire import decode_rows
from caravan.serving.worker_client import PredictorClient, WorkerError, encode
from caravan.v1 import predict_pb2
from tests.grpc_workers import FakeWorker


def score(row: dict[str, Any]) -> float:
    """What the scripted worker (and tests/grpc_workers.py) answers for a row: the sum of its numbers."""
    return sum(v for v in row.values() if isinstance(v, (int, float)))


class ScriptedClient:
    """A worker client on the event loop: answers each call after ``turns`` loop turns (popped from the front, 0 once
    they run out), refuses a call with a row holding ``bad`` (INVALID_ARGUMENT naming it, as a worker does), and
    records the row count of every call it was sent."""

    encode = staticmethod(encode)

    def __init__(self, turns: list[int] | None = None, *, wrong_count: bool = False,
                 release: asyncio.Event | None = None) -> None:
        self.turns, self.wrong_count, self.release = list(turns or []), wrong_count, release
        self.calls: list[int] = []

    async def predict_encoded_async(self, parts: list[bytes], request_id: str, timeout_s: float) -> Any:
        request = predict_pb2.PredictRequest.FromString(b"".join(parts))
        rows = decode_rows(request)
        self.calls.append(len(rows))
        for _ in range(self.turns.pop(0) if self.turns else 0):
            await asyncio.sleep(0)
        if self.release is not None:
            await self.release.wait()
        for i, row in enumerate(rows):
            if "bad" in row:
                raise WorkerError(grpc.StatusCode.INVALID_ARGUMENT, f"row {i}: unknown fields ['bad']", "bad", i)
        scores = [score(row) for row in rows] + ([1.0] if self.wrong_count else [])
        return predict_pb2.PredictReply(scores=scores, artifact_id="A", model="m")


def rows_of(size: int, seed: int, bad_at: int | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"a": float(seed), "b": float(i)} for i in range(size)]
    if bad_at is not None:
        rows[bad_at % size]["bad"] = 1.0
    return rows


requests_st = st.lists(st.tuples(st.integers(1, 5), st.integers(0, 3), st.booleans()), min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(requests=requests_st, turns=st.lists(st.integers(0, 4), max_size=12), max_rows=st.integers(1, 12),
       bad_row=st.integers(0, 4))
def test_every_caller_gets_its_own_scores_and_only_a_bad_request_fails(requests: list[tuple[int, int, bool]],
                                                                       turns: list[int], max_rows: int,
                                                                       bad_row: int) -> None:
    client = ScriptedClient(turns)
    coalescer = Coalescer(client, max_rows=max_rows)
    bodies = [rows_of(size, n, bad_row if bad else None) for n, (size, _, bad) in enumerate(requests)]

    async def one(n: int, delay: int) -> Any:
        for _ in range(delay):  # arrive on a drawn loop turn
            await asyncio.sleep(0)
        try:
            return (await coalescer.predict(bodies[n], f"r{n}", 5.0)).scores
        except WorkerError as exc:
            return (exc.code(), exc.details(), exc.field, exc.row)

    async def run() -> list[Any]:
        return await asyncio.gather(*(one(n, delay) for n, (_, delay, _) in enumerate(requests)))

    outcomes = asyncio.run(run())
    for body, (size, _, bad), outcome in zip(bodies, requests, outcomes, strict=True):
        if bad:  # its own refusal: its own row number, as if it had called alone
            assert outcome == (grpc.StatusCode.INVALID_ARGUMENT, f"row {bad_row % size}: unknown fields ['bad']",
                               "bad", bad_row % size)
        else:
            assert outcome == [score(row) for row in body]
    sizes = {size for size, _, _ in requests}
    assert all(rows <= max_rows or rows in sizes for rows in client.calls)  # above the cap only a request alone


def test_requests_that_arrive_together_share_one_call() -> None:
    release = asyncio.Event()
    client = ScriptedClient(release=release)
    coalescer = Coalescer(client, max_rows=64)

    async def run() -> list[list[float]]:
        calls = [asyncio.ensure_future(coalescer.predict(rows_of(n + 1, n, None), f"r{n}", 5.0)) for n in range(6)]
        while not client.calls:  # the first call is on its way: the rest arrive while it is in flight
            await asyncio.sleep(0)
        later = [asyncio.ensure_future(coalescer.predict(rows_of(2, 10 + n, None), f"s{n}", 5.0)) for n in range(3)]
        for _ in range(3):
            await asyncio.sleep(0)
        release.set()
        return [p.scores for p in await asyncio.gather(*calls, *later)]

    answers = asyncio.run(run())
    assert client.calls == [sum(range(1, 7)), 6]  # the six of the first turn in one call, the three later in one
    assert coalescer.calls == 2 and coalescer.shared == 9
    assert answers[:6] == [[score(r) for r in rows_of(n + 1, n, None)] for n in range(6)]
    assert answers[6:] == [[score(r) for r in rows_of(2, 10 + n, None)] for n in range(3)]


def test_a_call_carries_at_most_max_rows_and_a_larger_request_goes_alone() -> None:
    client = ScriptedClient()
    coalescer = Coalescer(client, max_rows=4)

    async def run() -> None:
        await asyncio.gather(*(coalescer.predict(rows_of(size, n, None), f"r{n}", 5.0)
                               for n, size in enumerate([1, 2, 1, 3, 9, 1])))

    asyncio.run(run())
    assert sorted(client.calls) == [4, 4, 9]  # the 9 alone at once; then 1+2+1 and 3+1 in queue order


def test_a_request_whose_time_runs_out_while_queued_fails_alone() -> None:
    release = asyncio.Event()
    client = ScriptedClient(release=release)
    coalescer = Coalescer(client)

    async def run() -> tuple[Any, Any, Any]:
        first = asyncio.ensure_future(coalescer.predict(rows_of(1, 1, None), "first", 5.0))
        while not client.calls:
            await asyncio.sleep(0)
        hurried = asyncio.ensure_future(coalescer.predict(rows_of(1, 2, None), "hurried", 0.05))
        patient = asyncio.ensure_future(coalescer.predict(rows_of(1, 3, None), "patient", 5.0))
        with pytest.raises(CallFailed) as late:
            await hurried  # its 50 ms run out while the first call holds the worker
        release.set()
        return late.value, (await first).scores, (await patient).scores

    late, first, patient = asyncio.run(run())
    assert late.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (first, patient) == ([1.0], [3.0])
    assert client.calls == [1, 1]  # the request that gave up was never sent


def test_a_reply_that_does_not_fit_its_call_fails_every_request_in_it() -> None:
    coalescer = Coalescer(ScriptedClient(wrong_count=True))

    async def run() -> list[Any]:
        return await asyncio.gather(*(coalescer.predict(rows_of(2, n, None), f"r{n}", 5.0) for n in range(3)),
                                    return_exceptions=True)

    outcomes = asyncio.run(run())
    assert all(isinstance(o, CallFailed) and o.code() == grpc.StatusCode.INTERNAL for o in outcomes)


# -- real gRPC: WorkerPool -> PredictorClient -> a worker's PredictStream (or Predict, for an older worker) ------

@pytest.fixture(params=[True, False], ids=["stream", "unary"])
def arm_workers(request: pytest.FixtureRequest) -> Iterator[list[FakeWorker]]:
    found = [FakeWorker("A", 0.0, stream=request.param), FakeWorker("A", 0.0, stream=request.param)]
    yield found
    for worker in found:
        worker.stop()


def test_concurrent_requests_over_grpc_get_their_own_scores_and_refusals(arm_workers: list[FakeWorker]) -> None:
    pool = WorkerPool(PredictorClient, cooldown_s=30.0)
    pool.set_members({"control": [w.target for w in arm_workers]})
    sizes = [1, 3, 1, 2, 5, 1, 1, 4, 2, 1, 1, 3]
    bodies = [rows_of(size, n, 1 if n == 7 else None) for n, size in enumerate(sizes)]

    async def one(n: int) -> Any:
        try:
            return (await pool.call_async("control", bodies[n], f"r{n}", 5.0)).scores
        except WorkerRefused as exc:
            return (str(exc), exc.field_name, exc.row)

    async def run() -> list[Any]:
        await pool.call_async("control", rows_of(1, 0, None), "warm", 5.0)  # channels and streams open
        await pool.call_async("control", rows_of(1, 0, None), "warm", 5.0)
        return await asyncio.gather(*(one(n) for n in range(len(sizes))))

    try:
        outcomes = asyncio.run(run())
        workers = pool.describe()["control"]
    finally:
        pool.set_members({})
    assert outcomes[7] == ("row 1: unknown fields ['bad']", "bad", 1)  # its own row, not the shared call's
    for n, outcome in enumerate(outcomes):
        if n != 7:
            assert outcome == [score(row) for row in bodies[n]], n
    served = sum(w.calls for w in arm_workers) - 2  # without the warm-up
    assert served < len(sizes) - 1, "the requests of one turn share calls"
    # Nothing failed over: a refusal is the client's fault, never the worker's.
    assert all(w["errors"] == 0 and w["healthy"] for w in workers)


def test_a_dead_worker_fails_its_shared_call_once_and_its_requests_fail_over() -> None:
    dead, alive = FakeWorker("A", 0.0), FakeWorker("A", 100.0)
    pool = WorkerPool(PredictorClient, cooldown_s=30.0)
    pool.set_members({"control": [dead.target, alive.target]})
    dead.stop()

    async def run() -> list[Any]:
        return await asyncio.gather(*(pool.call_async("control", rows_of(1, n, None), f"r{n}", 5.0)
                                      for n in range(8)))

    try:
        answers = asyncio.run(run())
        workers = {w["target"]: w for w in pool.describe()["control"]}
    finally:
        pool.set_members({})
        alive.stop()
    assert [a.scores for a in answers] == [[100.0 + n] for n in range(8)]  # every one answered by the live worker
    # The four requests that went to the dead worker first shared one call: one failure, not four (a worker's
    # cool-down doubles with each failure in a row).
    assert (workers[dead.target]["errors"], workers[dead.target]["healthy"]) == (1, False)
    assert workers[alive.target]["errors"] == 0


def test_a_request_not_answered_in_time_fails_and_the_next_gets_its_own_answer() -> None:
    worker = FakeWorker("A", 0.0)
    client = PredictorClient(worker.target)

    async def run() -> tuple[Any, list[float]]:
        await client.predict_encoded_async([encode(rows_of(1, 1, None))], "warm", 5.0)  # the stream is open
        late = None
        try:
            await client.predict_encoded_async([encode([{"a": 1.0, "hang": 1.0}])], "stuck", 0.2)
        except grpc.RpcError as exc:
            late = exc
        worker.servicer.released.set()
        return late, list((await client.predict_encoded_async([encode(rows_of(2, 3, None))], "next", 5.0)).scores)

    try:
        late, scores = asyncio.run(run())
    finally:
        client.close()
        worker.stop()
    assert late is not None and late.code() == grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
    assert scores == [3.0, 4.0]  # its own answer, never the stuck request's late one
