"""Real gRPC servers that speak caravan.v1.Predictor with a canned model, for the gateway's unit tests.

A row's score is the sum of its numbers plus the server's ``offset`` (the offset alone if the sum overflows);
a row with a field named ``bad`` is refused with INVALID_ARGUMENT naming it (as a worker refuses an unknown
field), so is a non-finite number, and ``too_many`` rows or more with RESOURCE_EXHAUSTED. Each server counts
the calls it answered (a message on PredictStream counts as a call; ``stream=False`` serves Predict alone, as an
older worker does) and keeps the row counts of the requests it was sent. A row with a field ``hang`` holds its
answer until ``servicer.released`` is set.
"""

from __future__ import annotations

import math
import threading
from concurrent import futures
from typing import Any

import grpc

from caravan.serving.wire import decode_rows
from caravan.serving.worker_client import FIELD_KEY, ROW_KEY, SERVER_OPTIONS
from caravan.v1 import predict_pb2, predict_pb2_grpc


class _Servicer(predict_pb2_grpc.PredictorServicer):
    def __init__(self, artifact_id: str, offset: float, too_many: int) -> None:
        self.artifact_id, self.offset, self.too_many, self.calls = artifact_id, offset, too_many, 0
        self.sizes: list[int] = []  # rows per request answered or refused, in order
        self.released = threading.Event()

    def answer(self, request: Any) -> Any:
        """The reply, or (code, message, field, row) of a refusal; a row with ``hang`` waits (up to 5 s) until
        ``released`` is set, as a worker that stopped answering."""
        rows = decode_rows(request)
        if any("hang" in row for row in rows):
            self.released.wait(5)
        self.sizes.append(len(rows))
        if len(rows) >= self.too_many:
            return grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self.too_many - 1} rows per request", None, None
        for i, row in enumerate(rows):
            for name, value in row.items():  # as a real worker: a non-finite number is refused
                if isinstance(value, float) and not math.isfinite(value):
                    return grpc.StatusCode.INVALID_ARGUMENT, f"row {i}: field {name!r} must be finite", name, i
            if "bad" in row:
                return grpc.StatusCode.INVALID_ARGUMENT, f"row {i}: unknown fields ['bad']", "bad", i
        self.calls += 1
        scores = [self.offset + sum(v for v in row.values() if isinstance(v, (int, float))) for row in rows]
        scores = [score if math.isfinite(score) else self.offset for score in scores]
        return predict_pb2.PredictReply(scores=scores, artifact_id=self.artifact_id, model="ranker")

    def Predict(self, request: Any, context: Any) -> Any:  # gRPC names the method
        answer = self.answer(request)
        if isinstance(answer, tuple):
            code, message, field, row = answer
            if field is not None:
                context.set_trailing_metadata(((FIELD_KEY, field.encode()), (ROW_KEY, str(row))))
            context.abort(code, message)
        return answer

    def PredictStream(self, requests: Any, context: Any) -> Any:  # as caravan.serving.worker answers a stream
        for request in requests:
            answer = self.answer(request)
            if isinstance(answer, tuple):
                code, message, field, row = answer
                error = predict_pb2.Error(code=code.name, message=message, field=field or "")
                if row is not None:
                    error.row = row
                answer = predict_pb2.PredictReply(error=error)
            yield answer


class _UnaryServicer(_Servicer):
    PredictStream = predict_pb2_grpc.PredictorServicer.PredictStream  # as a worker that predates PredictStream


class FakeWorker:
    """One real gRPC server on a loopback port; ``stop()`` makes it vanish like a killed worker."""

    def __init__(self, artifact_id: str, offset: float = 0.0, too_many: int = 1000, *, stream: bool = True) -> None:
        self.servicer = (_Servicer if stream else _UnaryServicer)(artifact_id, offset, too_many)
        # A stream holds a thread of a sync server for its life: room for several clients' streams.
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=32), options=SERVER_OPTIONS)
        predict_pb2_grpc.add_PredictorServicer_to_server(self.servicer, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        self.server.start()

    @property
    def calls(self) -> int:
        return self.servicer.calls

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
