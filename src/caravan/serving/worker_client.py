"""The Python client of a worker's ``caravan.v1.Predictor/Predict`` (what the gateway calls).

One :class:`PredictorClient` per worker address holds one HTTP/2 channel for its lifetime; calls from many
threads share it (gRPC multiplexes them). Errors are gRPC's own (``grpc.RpcError`` with ``code()`` and
``details()``), so a caller tells a refused request (``INVALID_ARGUMENT``: the client's fault, never worth
another worker) from a worker that failed (``UNAVAILABLE``, ``DEADLINE_EXCEEDED``...: try the next one).
Rows that cannot even be written (a row that is not an object) are refused here the same way, with the
message ``caravan serve`` gives. :func:`refusal` reads the field and row a refusal names.

:meth:`PredictorClient.predict_encoded_async` sends on one long-lived ``PredictStream`` per event loop (a message
on an open stream costs both ends less than half of what a call costs), requests in order and replies matched
in order; a worker without PredictStream (``UNIMPLEMENTED``: an older worker) gets unary calls instead. A
reply's ``error`` comes back as a :class:`WorkerError` that reads like the status Predict would have given.
A request not answered within its time cancels the stream (the next request opens a new one), as a unary
call's deadline would end that call.

A caller that sends several requests' rows in one call (the gateway's coalescing, :mod:`caravan.gateway.coalesce`)
encodes each request once (:meth:`PredictorClient.encode`) and sends the encodings side by side
(:meth:`PredictorClient.predict_encoded_async`): protobuf concatenates repeated fields, so the bytes of several
``PredictRequest`` messages joined are one request with all their rows, in order, and nothing is encoded twice.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from ..v1 import predict_pb2, predict_pb2_grpc
from .model import RequestInvalid
from .wire import encode_rows

__all__ = ["MAX_MESSAGE_BYTES", "Prediction", "PredictorClient", "RowsRefused", "WorkerError", "encode", "refusal"]

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
# What a worker's server takes: the same, and the clients' keepalive pings every 10 s even while nothing but an
# idle stream is open (the default wants 5 minutes between such pings and answers more with GOAWAY
# "too_many_pings", which would end the gateway's stream).
SERVER_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.http2.min_ping_interval_without_data_ms", 5_000))
FIELD_KEY = "caravan-field-bin"  # trailing metadata of an INVALID_ARGUMENT: the field at fault (UTF-8)
ROW_KEY = "caravan-row"  # ... and its row
_METHOD = "/caravan.v1.Predictor/Predict"
_STREAM_METHOD = "/caravan.v1.Predictor/PredictStream"


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


class WorkerError(grpc.RpcError):
    """A worker's answer without scores on PredictStream, or a stream that ended; it reads like the status a
    unary Predict would have given (``code()``, ``details()``, ``trailing_metadata()`` for :func:`refusal`)."""

    def __init__(self, code: grpc.StatusCode, message: str, field: str | None = None, row: int | None = None) -> None:
        self._code, self.field, self.row = code, field, row
        super().__init__(message)

    @classmethod
    def of(cls, error: predict_pb2.Error) -> WorkerError:
        code = getattr(grpc.StatusCode, error.code, grpc.StatusCode.UNKNOWN)
        return cls(code, error.message, error.field or None, error.row if error.HasField("row") else None)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return str(self)

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        found = [] if self.field is None else [(FIELD_KEY, self.field)]
        return (*found, *([] if self.row is None else [(ROW_KEY, str(self.row))]))


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


def encode(rows: Sequence[Any]) -> bytes:
    """``rows`` as the bytes of a ``PredictRequest`` without a request id; :class:`RowsRefused` for a row that
    is no object (serve's message). Joined with others' bytes they make one request of all their rows."""
    try:
        encoded: bytes = encode_rows(rows).SerializeToString()
    except RequestInvalid as exc:
        raise RowsRefused(str(exc), field_name=exc.field_name, row=exc.row) from None
    return encoded


def _request_id_field(request_id: str) -> bytes:
    return predict_pb2.PredictRequest(request_id=request_id).SerializeToString() if request_id else b""


class _Stream:
    """One ``PredictStream`` call: requests written one at a time, each reply given to the oldest request."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.call = channel.stream_stream(_STREAM_METHOD, request_serializer=None,
                                          response_deserializer=predict_pb2.PredictReply.FromString)()
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.writing = asyncio.Lock()  # gRPC takes one write at a time, and replies come in the order written
        self.broken: BaseException | None = None
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                reply = await self.call.read()
                if reply is grpc.aio.EOF:
                    raise WorkerError(grpc.StatusCode.UNAVAILABLE, "the worker ended the stream")
                if not self.waiting:
                    raise WorkerError(grpc.StatusCode.INTERNAL, "the worker answered a request nobody sent")
                future = self.waiting.popleft()
                if not future.done():  # its caller gave up meanwhile
                    future.set_result(reply)
        except (Exception, asyncio.CancelledError) as exc:
            self._break(exc if isinstance(exc, grpc.RpcError) else
                        WorkerError(grpc.StatusCode.UNAVAILABLE, f"the stream ended ({type(exc).__name__})"))

    def _break(self, exc: BaseException) -> None:
        if self.broken is None:
            self.broken = exc
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(self.broken)
        self.call.cancel()

    async def send(self, payload: bytes, timeout_s: float) -> Any:
        if self.broken is not None:
            raise self.broken
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        async with self.writing:
            if self.broken is not None:
                raise self.broken
            self.waiting.append(future)
            try:
                await self.call.write(payload)
            except Exception as exc:  # the call has ended: its status (what the reader gets) says why
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.reader), timeout_s)
                self._break(WorkerError(grpc.StatusCode.UNAVAILABLE,
                                        f"the stream takes no more requests ({type(exc).__name__})"))
        try:
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            # Like a unary call's deadline: the worker did not answer in time; the next request opens a new stream.
            self._break(WorkerError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"no answer within {timeout_s:.3f} s (stream cancelled)"))
            raise WorkerError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {timeout_s:.3f} s") from None
        if reply.HasField("error"):
            raise WorkerError.of(reply.error)
        return reply


class _Aio:
    """What a client holds on one event loop: its grpc.aio channel, the Predict callables and the stream."""

    def __init__(self, target: str, options: Sequence[tuple[str, Any]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.channel = grpc.aio.insecure_channel(target, options=options)
        self.predict = predict_pb2_grpc.PredictorStub(self.channel).Predict
        self.predict_raw = self.channel.unary_unary(_METHOD, request_serializer=None,
                                                    response_deserializer=predict_pb2.PredictReply.FromString)
        self.stream: _Stream | None = None
        self.streaming = True  # until the worker says it has no PredictStream


class PredictorClient:
    """A pooled channel to one worker at ``target`` (``host:port``): :meth:`predict` from threads, and
    :meth:`predict_async` from an asyncio event loop (its own grpc.aio channel, made on first use: no thread
    hop, which is what a gateway's event loop wants)."""

    def __init__(self, target: str, *, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS) -> None:
        self.target = target
        self._options = list(options)
        self._channel = grpc.insecure_channel(target, options=self._options)
        self._predict = predict_pb2_grpc.PredictorStub(self._channel).Predict
        self._aio: _Aio | None = None

    encode = staticmethod(encode)

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
        reply = await self._on_loop().predict(request, timeout=timeout_s)
        return Prediction(list(reply.scores), reply.artifact_id, reply.model)

    async def predict_encoded_async(self, parts: Sequence[bytes], request_id: str = "",
                                    timeout_s: float = 5.0) -> Any:
        """Scores for the rows of ``parts`` (each from :meth:`encode`) in one request, in order, as the worker's
        ``PredictReply``, over the stream (see the module's docstring); the same errors as :meth:`predict_async`
        (:class:`WorkerError` for an answer without scores)."""
        payload = b"".join(parts) + _request_id_field(request_id) if len(parts) > 1 or request_id else parts[0]
        aio = self._on_loop()
        if aio.streaming:
            if aio.stream is None or aio.stream.broken is not None:
                aio.stream = _Stream(aio.channel)
            try:
                return await aio.stream.send(payload, timeout_s)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
                    raise
                aio.streaming = False  # an older worker: unary calls from now on
        return await aio.predict_raw(payload, timeout=timeout_s)

    def _on_loop(self) -> _Aio:
        """This event loop's channel (a grpc.aio channel belongs to one event loop)."""
        aio = self._aio
        if aio is None or aio.loop is not asyncio.get_running_loop():
            aio = self._aio = _Aio(self.target, self._options)
        return aio

    def close(self) -> None:
        """Close the channels (calls in flight are cancelled)."""
        self._channel.close()
        if self._aio is not None:
            loop, channel = self._aio.loop, self._aio.channel
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
