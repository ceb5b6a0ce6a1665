"""The Python client of a worker's ``caravan.v1.Predictor/Predict`` (what the gateway calls).

One :class:`PredictorClient` per worker address holds one HTTP/2 channel for its lifetime; calls from many
threads share it (gRPC multiplexes them). Errors are gRPC's own (``grpc.RpcError`` with ``code()`` and
``details()``), so a caller tells a refused request (``INVALID_ARGUMENT``: the client's fault, never worth
another worker) from a worker that failed (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``...: try the next one).
Rows that cannot even be written (a row that is not an object) are refused here the same way, with the
message ``caravan serve`` gives. :func:`refusal` reads the field and row a refusal names.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ..v1 import predict_pb2_grpc
from .model import RequestInvalid
from .wire import encode_rows

__all__ = ["MAX_MESSAGE_BYTES", "Prediction", "PredictorClient", "RowsRefused", "refusal"]

# Room for the largest request a worker takes (serve's 10,000 rows of a few hundred features).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A worker that vanished without closing its connection is noticed within seconds, not minutes.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
FIELD_KEY = "caravan-field-bin"  # trailing metadata of an INVALID_ARGUMENT: the field at fault (UTF-8)
ROW_KEY = "caravan-row"  # ... and its row


@dataclass(frozen=True)
class Prediction:
    """A worker's answer: one score per row, the artifact that gave them, and the model it serves."""

    scores: list[float]
    artifact_id: str
    model: str


class RowsRefused(grpc.RpcError, RequestInvalid):
    """Rows refused before they were sent; it reads like a worker's INVALID_ARGUMENT (``code()``, ``details()``)."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.INVALID_ARGUMENT

    def details(self) -> str:
        return str(self)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ((ROW_KEY, str(self.row)),) if self.row is not None else ()


def refusal(error: Any) -> tuple[str, str | None, int | None]:
    """The message, field and row of an INVALID_ARGUMENT (from a worker, or :class:`RowsRefused`)."""
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    field: str | None = None
    row: int | None = None
    metadata = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
    for key, value in metadata or ():
        if key == FIELD_KEY:
            field = value if isinstance(value, str) else value.decode("utf-8", "replace")
        elif key == ROW_KEY and str(value).isdigit():
            row = int(value)
    return str(details or ""), field, row


class PredictorClient:
    """A pooled channel to one worker at ``target`` (``host:port``): :meth:`predict` from threads, and
    :meth:`predict_async` from an asyncio event loop (its own grpc.aio channel, made on first use: no thread
    hop, which is what a gateway's event loop wants)."""

    def __init__(self, target: str, *, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> None:
        self.target = target
        self._options = list(options)
        self._channel = grpc.insecure_channel(target, options=self._options)
        self._predict = predict_pb2_grpc.PredictorStub(self._channel).Predict
        self._aio: tuple[asyncio.AbstractEventLoop, grpc.aio.Channel, Any] | None = None

    def predict(self, rows: Sequence[Any], request_id: str = "", timeout_s: float = 5.0) -> Prediction:
        """Scores for ``rows`` (JSON objects of feature values) within ``timeout_s``.

        Raises ``grpc.RpcError``: ``INVALID_ARGUMENT`` (see :func:`refusal`) when the rows do not fit the
        model, ``RESOURCE_EXHAUSTED`` for more rows than the worker takes, ``UNAVAILABLE`` when it serves no
        model or cannot be reached, ``DEADLINE_EXCEEDED`` past ``timeout_s``.
        """
        try:
            request = encode_rows(rows, request_id)
        except RequestInvalid as exc:
            raise RowsRefused(str(exc), field_name=exc.field_name, row=exc.row) from None
        reply = self._predict(request, timeout=timeout_s)
        return Prediction(list(reply.scores), reply.artifact_id, reply.model)

    async def predict_async(self, rows: Sequence[Any], request_id: str = "", timeout_s: float = 5.0) -> Prediction:
        """:meth:`predict` for an asyncio event loop; the same errors (``grpc.aio.AioRpcError`` is an RpcError)."""
        try:
            request = encode_rows(rows, request_id)
        except RequestInvalid as exc:
            raise RowsRefused(str(exc), field_name=exc.field_name, row=exc.row) from None
        loop = asyncio.get_running_loop()
        if self._aio is None or self._aio[0] is not loop:  # a grpc.aio channel belongs to one event loop
            channel = grpc.aio.insecure_channel(self.target, options=self._options)
            self._aio = (loop, channel, predict_pb2_grpc.PredictorStub(channel).Predict)
        reply = await self._aio[2](request, timeout=timeout_s)
        return Prediction(list(reply.scores), reply.artifact_id, reply.model)

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        self._channel.close()
        if self._aio is not None:
            loop, channel, _ = self._aio
            self._aio = None
            if not loop.is_closed():
                try:
                    running = asyncio.get_running_loop()
                except RuntimeError:
                    running = None
                if running is loop:
                    loop.create_task(channel.close())
                else:
                    asyncio.run_coroutine_threadsafe(channel.close(), loop)

    def __enter__(self) -> PredictorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
