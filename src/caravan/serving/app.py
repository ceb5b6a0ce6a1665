"""The model server: ``POST /predict``, ``GET /health``, ``GET /metrics``, with hot reload.

Who does what: :mod:`.watcher` follows the pointer and swaps models (after :mod:`.probe` has loaded each
new one in a disposable process); :mod:`.limits` bounds and decodes request bodies; :mod:`.model` checks
rows against the schema and predicts; :mod:`.observe` holds logs, metrics and Sentry. This module wires
them into one ASGI app.

``POST /predict`` is answered by a plain ASGI function (no Request/Response objects, no router): it is
the hot path. A body over the byte limit is refused with 413 while it arrives, before any parsing; a
large body is parsed and scored on a worker thread so that ``/health`` keeps answering; every body that
is not valid rows gets a 4xx with a short message; a client that leaves is counted as status 499.

With an event log (:mod:`caravan.events.log`), every answered prediction is logged before its answer is sent
(request id, ``x-unit-id`` header as the unit, the model, the features as scored, the scores), and
``POST /feedback`` ``{"request_id": ..., "reward": number, "row": int (optional)}`` logs a reward (202). The
log never makes a request wait on the store; it is drained when the server shuts down (SIGTERM).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..events.log import EventLog
from ..registry import ModelPointer
from . import limits
from .limits import MAX_ROWS, BodyTooLarge, ClientGone
from .model import LoadedModel, ModelHolder, RequestInvalid, excerpt
from .observe import Metrics, log_json_lines, sentry
from .probe import Probe
from .watcher import Watcher

log = logging.getLogger("caravan.serving")
# Built once: json.dumps with any non-default option builds a new encoder on every call.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# Error bodies may quote client input (a lone surrogate cannot be written as UTF-8): ASCII with escapes.
_JSON_ERROR = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
OFF_LOOP_BYTES = 256 * 1024  # bodies above this are parsed and scored on a worker thread

__all__ = ["MAX_ROWS", "create_app", "serve"]


def _rows(body: Any) -> tuple[list[Any], bool]:
    """The rows of a request body: one object, a list of objects, or {"rows": [...]}; and whether it was one."""
    if isinstance(body, dict) and len(body) == 1 and "rows" in body:
        body = body["rows"]
        if not isinstance(body, list):
            raise RequestInvalid("'rows' must be a list of JSON objects", field_name="rows")
    if isinstance(body, dict):
        return [body], True
    if isinstance(body, list):
        if not body:
            raise RequestInvalid("no rows to predict")
        return body, False
    raise RequestInvalid(f"the body must be a JSON object or a list of objects, got {type(body).__name__}")


def _answer(served: LoadedModel, body: bytes, max_rows: int,
            logged: tuple[EventLog, str, str | None] | None = None) -> tuple[int, bytes]:
    """Status and JSON of a prediction request whose body has been read: predictions, or why not (4xx).

    ``logged``: (event log, request id, unit id) of a request whose answer is to be logged.
    """
    try:
        rows, single = _rows(limits.decode(body))
        if len(rows) > max_rows:
            return 413, _JSON_ERROR.encode({"error": f"at most {max_rows} rows per request, got {len(rows)}"}).encode()
        if logged is None:
            predictions = served.predict(rows)
        else:  # the same two steps as served.predict, keeping the matrix: the features as scored
            matrix = served.matrix(rows)
            predictions = served.booster.predict(matrix).tolist()
            event_log, request_id, unit_id = logged
            event_log.prediction(request_id, unit_id=unit_id, arm=None, artifact_id=served.artifact_id,
                                 names=served.names, features=matrix, scores=predictions)
        payload = {"model": served.artifact_id,
                   "prediction" if single else "predictions": predictions[0] if single else predictions}
        return 200, _JSON.encode(payload).encode()
    except RequestInvalid as exc:
        field = excerpt(exc.field_name) if exc.field_name is not None else None
        return 422, _JSON_ERROR.encode({"error": str(exc)[:1000], "field": field, "row": exc.row}).encode()


def _predict_endpoint(holder: ModelHolder, watcher: Watcher, metrics: Metrics, large: ThreadPoolExecutor, *,
                      max_rows: int, max_body_bytes: int | None,
                      event_log: EventLog | None = None) -> Callable[..., Awaitable[None]]:
    """POST /predict as a plain ASGI function; large bodies are handled on ``large``."""
    report = sentry(holder)
    requests_ok, latency_ok = metrics.requests.labels("200"), metrics.latency.labels("200")
    ids, id_prefix = itertools.count(1), uuid.uuid4().hex[:8]
    limit_of: list[Any] = [None, 0]  # the byte limit of the last model served: (model, bytes)

    def body_limit(served: LoadedModel) -> int:
        if limit_of[0] is not served:
            limit_of[:] = [served, max_body_bytes or limits.max_body_bytes(served.names, max_rows)]
        return int(limit_of[1])

    async def predict(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        request_id = declared = unit_id = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = limits.content_length(value)
            elif name == b"x-request-id":
                request_id = limits.request_id(value)
            elif name == b"x-unit-id":
                unit_id = limits.request_id(value)
        if request_id is None:  # none, or not short printable ASCII: ours (unique per process, cheaper than uuid4)
            request_id = f"{id_prefix}-{next(ids):x}"
        served = holder.current  # this request's model, whatever a swap does meanwhile
        status = 200
        try:
            if served is None:
                status, reason = 503, watcher.status()[1]
                data = _JSON_ERROR.encode({"error": f"no model is served: {reason}" if reason else
                                           "no model loaded yet"}).encode()
            else:
                body = await limits.read_body(receive, body_limit(served), declared)
                logged = (event_log, request_id, unit_id) if event_log is not None else None
                if len(body) > OFF_LOOP_BYTES:
                    status, data = await asyncio.get_running_loop().run_in_executor(
                        large, _answer, served, body, max_rows, logged)
                else:
                    status, data = _answer(served, body, max_rows, logged)
        except BodyTooLarge as exc:
            status, data = 413, _JSON_ERROR.encode({"error": limits.too_large_message(exc, max_rows)}).encode()
        except ClientGone:
            status, data = 499, b""
        except Exception as exc:  # a genuine server fault: report it, keep the server up
            status = 500
            data = _JSON_ERROR.encode({"error": f"internal error ({type(exc).__name__}); request id {request_id}"})\
                .encode()
            log.exception("predict failed", extra={"request_id": request_id})
            if report is not None:
                report.capture_exception(exc)
        elapsed = time.perf_counter() - started
        if status == 200:
            requests_ok.inc()
            latency_ok.observe(elapsed)
        else:
            metrics.requests.labels(str(status)).inc()
            metrics.latency.labels(str(status)).observe(elapsed)
        if status != 200 or log.isEnabledFor(logging.DEBUG):
            log.info("predict %s", status, extra={"request_id": request_id, "status": status, "path": "/predict",
                                                  "duration_ms": round(elapsed * 1000, 3),
                                                  "model": served.artifact_id if served else None})
        if status == 499:
            return  # nobody to answer
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"x-request-id", request_id.encode("ascii"))]
        if served is not None:
            headers.append((b"x-model-version", served.artifact_id.encode("latin-1")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return predict


def _health_endpoint(holder: ModelHolder, watcher: Watcher, *, max_rows: int, max_body_bytes: int | None,
                     event_log: EventLog | None = None) -> Callable[[Request], Awaitable[Response]]:
    release = os.environ.get("CARAVAN_RELEASE") or None  # the published tag (serving.nomad.hcl sets it)

    async def health(request: Request) -> Response:
        served = holder.current
        status, reason = watcher.status()
        details = {"reloads_ok": holder.reloads_ok, "reloads_failed": holder.reloads_failed,
                   "reloads_crashed": holder.reloads_crashed, "last_reload_error": holder.last_error,
                   "last_error": holder.last_error, "pointer_backend_error": watcher.last_error,
                   "pointer_errors": watcher.errors, "pointer_version": watcher.state.version,
                   "pointer_target": watcher.target[0] if watcher.target else None}
        body: dict[str, Any] = {"status": status, "reason": reason, "model": None, "release": release,
                                "last_error": watcher.last_error or holder.last_error, "details": details}
        if event_log is not None:
            body["event_log"] = event_log.health()
        if served is None:
            return Response(_JSON_ERROR.encode(body), status_code=503, media_type="application/json")
        # "schema" and "max_rows" let a client build valid requests from /health alone (the contract tests
        # and the load test against a deployed server do); "features" stays for the clients that read it.
        body.update(model=served.artifact_id, uri=served.artifact_uri, features=served.names,
                    schema=[{"name": f.name, "type": f.type} for f in served.features], max_rows=max_rows,
                    max_body_bytes=max_body_bytes or limits.max_body_bytes(served.names, max_rows))
        return Response(_JSON_ERROR.encode(body), media_type="application/json")

    return health


def _feedback_endpoint(event_log: EventLog | None) -> Callable[[Request], Awaitable[Response]]:
    async def feedback(request: Request) -> Response:
        def refuse(status: int, message: str) -> Response:
            return Response(_JSON_ERROR.encode({"error": message}), status_code=status, media_type="application/json")

        if event_log is None:
            return refuse(404, "this server does not log events (started with --no-event-log)")
        body = await request.body()
        if len(body) > 4096:
            return refuse(413, "feedback body over 4096 bytes")
        try:
            parsed = json.loads(body)
        except ValueError:
            return refuse(422, "the body must be JSON: {\"request_id\": ..., \"reward\": number}")
        if not isinstance(parsed, dict):
            return refuse(422, "the body must be a JSON object")
        request_id, reward, row = parsed.get("request_id"), parsed.get("reward"), parsed.get("row")
        if not isinstance(request_id, str) or not 0 < len(request_id) <= limits.REQUEST_ID_MAX:
            return refuse(422, "'request_id' must be the request id of a prediction (a short string)")
        if isinstance(reward, bool) or not isinstance(reward, (int, float)) or reward != reward \
                or reward in (float("inf"), float("-inf")):
            return refuse(422, "'reward' must be a finite number")
        if row is not None and (isinstance(row, bool) or not isinstance(row, int) or not 0 <= row < 2**31):
            return refuse(422, "'row' must be a row index of the request, or absent")
        event_log.feedback(request_id, float(reward), row=row)
        return Response(b'{"status":"logged"}', status_code=202, media_type="application/json")

    return feedback


async def _prometheus(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _FastPredict:
    """The Starlette app, with ``POST /predict`` answered straight away: the hot path skips the router and
    Starlette's middleware layers (``predict`` handles its own errors). Everything else goes to Starlette."""

    def __init__(self, app: Starlette, predict: Callable[..., Awaitable[None]]) -> None:
        self.app, self.predict = app, predict
        self.state = app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            await self.predict(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _Asgi:
    """Marks a function as a raw ASGI app for Starlette's router (it wraps plain functions as request handlers)."""

    def __init__(self, app: Callable[..., Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def create_app(pointer: ModelPointer, model: str, *, watch: bool = True, wait_s: float = 30.0,
               isolate: bool = True, max_rows: int = MAX_ROWS, max_body_bytes: int | None = None,
               probe_timeout_s: float = 60.0, event_log: EventLog | None = None) -> _FastPredict:
    """The ASGI app serving ``model``; the watcher (and its probe process) start and stop with the app.

    ``isolate=False`` loads new models in this process without the probe: only for models you trust.
    ``max_body_bytes`` None: room for ``max_rows`` rows of the served model's features.
    ``event_log``: started with the app, drained and closed when it stops.
    """
    holder, metrics = ModelHolder(), Metrics()
    probe = Probe(timeout_s=probe_timeout_s) if isolate else None
    watcher = Watcher(pointer, model, holder, metrics, probe=probe, wait_s=wait_s)
    large = ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict-large")  # two at a time bounds memory
    predict = _predict_endpoint(holder, watcher, metrics, large, max_rows=max_rows, max_body_bytes=max_body_bytes,
                                event_log=event_log)
    health = _health_endpoint(holder, watcher, max_rows=max_rows, max_body_bytes=max_body_bytes, event_log=event_log)
    if event_log is not None:
        from ..events.log import register_metrics

        register_metrics(event_log, metrics.registry)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if watch:
            watcher.start()
        if event_log is not None:
            event_log.start()
        try:
            yield
        finally:
            if event_log is not None:  # uvicorn gets here on SIGTERM once in-flight requests are answered
                await asyncio.get_running_loop().run_in_executor(None, event_log.close)
            watcher.stop()
            if probe is not None:
                probe.close()
            large.shutdown(wait=False)

    # POST /predict never reaches this router (see _FastPredict); the route is here so that other methods get 405.
    app = Starlette(routes=[Route("/predict", _Asgi(predict), methods=["POST"]), Route("/health", health),
                            Route("/feedback", _feedback_endpoint(event_log), methods=["POST"]),
                            Route("/metrics", _prometheus)], lifespan=lifespan)
    app.state.holder, app.state.watcher, app.state.metrics, app.state.probe = holder, watcher, metrics, probe
    app.state.event_log = event_log
    return _FastPredict(app, predict)


def serve(model: str, host: str = "0.0.0.0", port: int = 8080, pointer_kind: str | None = None, *,  # noqa: S104
          isolate: bool = True, max_rows: int = MAX_ROWS, max_body_bytes: int | None = None,
          event_log: dict[str, Any] | None = None) -> None:
    """Run the server under uvicorn, logging JSON lines to stdout.

    ``event_log``: keyword arguments of :meth:`caravan.events.log.EventLog.for_server` (None: no event log).
    """
    import uvicorn

    from ..registry import open_pointer

    log_json_lines()
    events = EventLog.for_server(model, port=port, **event_log) if event_log is not None else None
    app = create_app(open_pointer(pointer_kind), model, isolate=isolate, max_rows=max_rows,
                     max_body_bytes=max_body_bytes, event_log=events)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
