"""The model server: ``POST /predict``, ``GET /health``, ``GET /metrics``, with hot reload.

A watcher thread follows the model pointer (Consul blocking queries, or a stat of the pointer
file); on a change it loads the new model beside the old one, checks it on its stored sample,
and swaps one reference. A model that fails to load or check is logged, counted and shown in
``/health``, and the old one keeps serving. Losing the pointer backend does not stop serving:
the watcher backs off and tries again.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import BackendError
from ..registry import ModelPointer, PointerState
from ..step import artifact_at
from .model import LoadedModel, ModelHolder, RequestInvalid, load_model

log = logging.getLogger("caravan.serving")
MAX_ROWS = 10_000
# Built once: json.dumps with any non-default option builds a new encoder on every call.
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_LENIENT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


class JsonFormatter(logging.Formatter):
    """One JSON object per log line, with the request id and model when the record carries them."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                                 "logger": record.name, "message": record.getMessage()}
        for key in ("request_id", "model", "status", "duration_ms", "path"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class Metrics:
    """Prometheus metrics of one server (its own registry, so tests can run several)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("caravan_requests", "Prediction requests by status code", ["status"],
                                registry=self.registry)
        self.latency = Histogram("caravan_request_seconds", "Prediction request latency by status code", ["status"],
                                 registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.model_info = Gauge("caravan_model_info", "The model being served (value 1)", ["artifact_id"],
                                registry=self.registry)
        self.reloads = Counter("caravan_model_reloads", "Model reloads by result", ["result"], registry=self.registry)

    def served(self, model: LoadedModel, previous: LoadedModel | None) -> None:
        if previous is not None:
            self.model_info.remove(previous.artifact_id)
        self.model_info.labels(model.artifact_id).set(1)


class Watcher(threading.Thread):
    """Follows the pointer of one model and swaps in each new version that loads and checks."""

    def __init__(self, pointer: ModelPointer, model: str, holder: ModelHolder, metrics: Metrics,
                 wait_s: float = 30.0, max_backoff_s: float = 30.0) -> None:
        super().__init__(name=f"watch-{model}", daemon=True)
        self.pointer, self.model, self.holder, self.metrics = pointer, model, holder, metrics
        self.wait_s, self.max_backoff_s = wait_s, max_backoff_s
        self.state = PointerState(None, -1, 0)  # -1: nothing seen yet, so the first read counts as a change
        self.stopped = threading.Event()
        self.backend_error: str | None = None

    def run(self) -> None:
        backoff = 0.5
        while not self.stopped.is_set():
            try:
                state = self.pointer.read(self.model) if self.state.version < 0 else \
                    self.pointer.watch(self.model, self.state, self.wait_s)
                self.backend_error = None
                backoff = 0.5
            except BackendError as exc:  # the pointer backend is away: keep serving, try again later
                self.backend_error = str(exc)
                log.warning("pointer backend unavailable, retrying in %.1f s: %s", backoff, exc)
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
                continue
            if state.version != self.state.version:
                self.state = state
                self.load(state)

    def load(self, state: PointerState) -> None:
        document = state.document
        if document is None:
            return
        current = self.holder.current
        if current is not None and current.artifact_id == document.get("artifact_id"):
            return
        try:
            model = load_model(artifact_at(document["artifact_uri"], document["artifact_id"]))
        except Exception as exc:  # any failure to load or check keeps the old model serving
            self.holder.failed(document.get("artifact_id"), exc)
            self.metrics.reloads.labels("failure").inc()
            log.error("model %s failed to load or check; still serving %s: %s", document.get("artifact_id"),
                      current.artifact_id if current else None, exc)
            return
        self.holder.swap(model)
        self.metrics.reloads.labels("success").inc()
        self.metrics.served(model, current)
        log.info("now serving %s", model.artifact_id, extra={"model": model.artifact_id})

    def stop(self) -> None:
        self.stopped.set()


def _rows(body: Any) -> tuple[list[Any], bool]:
    """The rows of a request body: one object, a list of objects, or {"rows": [...]}; and whether it was one."""
    if isinstance(body, dict) and set(body) == {"rows"}:
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


def create_app(pointer: ModelPointer, model: str, *, watch: bool = True, wait_s: float = 30.0) -> _FastPredict:
    """The ASGI app serving ``model``; the watcher starts with the app and stops with it."""
    holder, metrics = ModelHolder(), Metrics()
    watcher = Watcher(pointer, model, holder, metrics, wait_s=wait_s)
    sentry = _sentry(holder)

    requests_ok = metrics.requests.labels("200")
    latency_ok = metrics.latency.labels("200")
    ids = itertools.count(1)
    id_prefix = uuid.uuid4().hex[:8]

    async def predict(scope: dict[str, Any], receive: Any, send: Any) -> None:
        """POST /predict as a plain ASGI endpoint: the hot path builds no Request or Response objects."""
        started = time.perf_counter()
        request_id = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                request_id = value.decode("latin-1")[:128]
                break
        if request_id is None:
            request_id = f"{id_prefix}-{next(ids):x}"  # unique per server process, cheaper than a uuid per request
        served = holder.current  # this request's model, whatever a swap does meanwhile
        status: int = 200
        payload: dict[str, Any] = {}
        try:
            if served is None:
                status, payload = 503, {"error": "no model loaded yet"}
            else:
                chunks = []
                more = True
                while more:
                    message = await receive()
                    chunks.append(message.get("body", b""))
                    more = message.get("more_body", False)
                try:
                    body = json.loads(b"".join(chunks))
                except ValueError as exc:
                    raise RequestInvalid(f"body is not JSON: {exc}") from None
                rows, single = _rows(body)
                if len(rows) > MAX_ROWS:
                    status, payload = 413, {"error": f"at most {MAX_ROWS} rows per request, got {len(rows)}"}
                else:
                    predictions = served.predict(rows)
                    payload = {"model": served.artifact_id,
                               "prediction" if single else "predictions": predictions[0] if single else predictions}
            data = _JSON.encode(payload).encode()
        except RequestInvalid as exc:
            status, payload = 422, {"error": str(exc), "field": exc.field_name, "row": exc.row}
            data = _JSON_LENIENT.encode(payload).encode()
        except Exception as exc:  # a genuine server fault: report it, keep the server up
            status = 500
            data = json.dumps({"error": f"internal error ({type(exc).__name__}); request id {request_id}"}).encode()
            log.exception("predict failed", extra={"request_id": request_id})
            if sentry is not None:
                sentry.capture_exception(exc)
        elapsed = time.perf_counter() - started
        if status == 200:
            requests_ok.inc()
            latency_ok.observe(elapsed)
        else:
            metrics.requests.labels(str(status)).inc()
            metrics.latency.labels(str(status)).observe(elapsed)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                   (b"x-request-id", request_id.encode("latin-1"))]
        if served is not None:
            headers.append((b"x-model-version", served.artifact_id.encode("latin-1")))
        if status != 200 or log.isEnabledFor(logging.DEBUG):
            log.info("predict %s", status, extra={"request_id": request_id, "status": status, "path": "/predict",
                                                  "duration_ms": round(elapsed * 1000, 3),
                                                  "model": served.artifact_id if served else None})
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    release = os.environ.get("CARAVAN_RELEASE") or None  # the published tag (serving.nomad.hcl sets it)

    async def health(request: Request) -> Response:
        served = holder.current
        details = {"reloads_ok": holder.reloads_ok, "reloads_failed": holder.reloads_failed,
                   "last_error": holder.last_error, "pointer_backend_error": watcher.backend_error,
                   "pointer_version": watcher.state.version}
        if served is None:
            return JSONResponse({"status": "loading", "model": None, "release": release, "details": details},
                                status_code=503)
        # "schema" and "max_rows" let a client build valid requests from /health alone (the contract tests
        # and the load test against a deployed server do); "features" stays for the clients that read it.
        return JSONResponse({"status": "ok", "model": served.artifact_id, "uri": served.artifact_uri,
                             "release": release, "features": served.names,
                             "schema": [{"name": f.name, "type": f.type} for f in served.features],
                             "max_rows": MAX_ROWS, "details": details})

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if watch:
            watcher.start()
        try:
            yield
        finally:
            watcher.stop()

    # POST /predict never reaches this router (see _FastPredict); the route is here so that other methods get 405.
    app = Starlette(routes=[Route("/predict", _Asgi(predict), methods=["POST"]), Route("/health", health),
                            Route("/metrics", prometheus)], lifespan=lifespan)
    app.state.holder, app.state.watcher, app.state.metrics = holder, watcher, metrics
    return _FastPredict(app, predict)


def _sentry(holder: ModelHolder) -> Any:
    """Sentry, when SENTRY_DSN is set and sentry-sdk is installed; errors carry the served model as a tag."""
    if not os.environ.get("SENTRY_DSN"):
        return None
    try:
        import sentry_sdk
    except ImportError:
        log.warning("SENTRY_DSN is set but sentry-sdk is not installed; errors are only logged")
        return None

    def tag(event: dict[str, Any], hint: Any) -> dict[str, Any]:
        event.setdefault("tags", {})["model_version"] = holder.current.artifact_id if holder.current else None
        return event

    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], before_send=tag)  # type: ignore[arg-type]
    return sentry_sdk


def serve(model: str, host: str = "0.0.0.0", port: int = 8080, pointer_kind: str | None = None) -> None:  # noqa: S104
    """Run the server under uvicorn, logging JSON lines to stdout."""
    import uvicorn

    from ..registry import open_pointer

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    app = create_app(open_pointer(pointer_kind), model)
    uvicorn.run(app, host=host, port=port, log_config=None, access_log=False)
