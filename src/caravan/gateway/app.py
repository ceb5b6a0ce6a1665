"""The gateway's HTTP front: ``POST /predict``, ``POST /feedback``, ``GET /health``, ``GET /metrics``.

``POST /predict``: the body is read within its byte limit (:mod:`caravan.serving.limits`, 413 while it
arrives), its rows and unit taken apart (:mod:`.bodies`, 422 naming the field), its arm chosen
(:mod:`.routing`), the optional enricher run, and one of the arm's workers asked over gRPC with a deadline
(:mod:`.workers`); an arm with no healthy worker left sends the request to the production arm, else to any
arm that answers (counted, in ``/health``, and named in the answer's ``assigned_arm``). The answer is
``caravan serve``'s (``prediction`` or ``predictions``, ``model``: the artifact that answered) plus ``arm``,
``request_id`` (signed, :mod:`.signing`), ``sticky`` (false for a request without a unit: a random arm) and
``fallback``. A worker's refusal comes back as serve's 422 (or 413), with
its message; no worker at all is a 503; nothing a client sends gives a 500.

``POST /feedback`` ``{"request_id": ..., "reward": 0|1}``: 202 once counted; 422 for a malformed body or
id, 403 for an id this gateway's key did not sign, 409 for an id of an experiment that is not running any
more, a stale one (older than ``feedback_window_s``) or one already counted here.

The worker calls are awaited on the event loop (gRPC's asyncio channel: no thread per request); blocking work
(the enricher, parsing a body of megabytes) runs on a thread pool so that the event loop keeps answering.

With an event log (:mod:`caravan.events.log`), every answered prediction (the rows as sent to the worker, the
arm and artifact that answered, the signed request id) and every counted feedback is logged; the log never
makes a request wait on the store, and drains when the gateway stops.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import importlib
import json
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..errors import ConfigurationError
from ..events.log import EventLog, register_metrics
from ..serving import limits
from ..serving.limits import BodyTooLarge, ClientGone
from ..serving.model import RequestInvalid, excerpt
from . import bodies
from .follow import BanditUpdater, ExperimentFollower
from .metrics import GatewayMetrics
from .routing import Routes, choose
from .signing import RequestIdInvalid, RequestSigner
from .state import GatewayState
from .workers import ConsulDiscovery, NoHealthyWorker, WorkerPool, WorkerRefused

log = logging.getLogger("caravan.gateway")
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
_JSON_ERROR = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))  # may quote client input
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
FEEDBACK_MAX_BYTES = 4096
SEEN_FEEDBACK = 200_000  # request ids whose feedback this gateway remembers, to refuse a second one
OFF_LOOP_BYTES = 256 * 1024  # bodies above this are parsed on a thread (as caravan serve does)

Enricher = Callable[[str | None, list[Any]], list[Any]]


def load_enricher(spec: str) -> Enricher:
    """``module:function`` as a callable ``(unit, rows) -> rows``; ConfigurationError naming what is missing."""
    module_name, sep, name = spec.partition(":")
    if not sep or not module_name or not name:
        raise ConfigurationError(f"--enrich {spec!r}: expected module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--enrich {spec!r}: cannot import {module_name!r} ({exc})") from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ConfigurationError(f"--enrich {spec!r}: {module_name} has no function {name!r}")
    return function  # type: ignore[no-any-return]


class Gateway:
    """The non-HTTP heart of a gateway: routes, workers, signing, counters; and its background threads."""

    def __init__(self, model: str, pool: WorkerPool, signer: RequestSigner, *, store: Any = None,
                 discovery: ConsulDiscovery | None = None, unit: str | None = None, production_arm: str = "control",
                 timeout_s: float = 2.0, update_s: float = 60.0, min_weight: float = 0.05,
                 enrich: Enricher | None = None, gateway_id: str | None = None, wait_s: float = 30.0,
                 feedback_window_s: float = 7 * 86400.0, signing_key_configured: bool = True,
                 static_workers: Mapping[str, Sequence[str]] | None = None, event_log: EventLog | None = None) -> None:
        self.model, self.pool, self.signer, self.store, self.discovery = model, pool, signer, store, discovery
        self.event_log = event_log
        self.unit_flag, self.timeout_s, self.enrich = unit, timeout_s, enrich
        self.feedback_window_s, self.signing_key_configured = feedback_window_s, signing_key_configured
        # One id per process, never reused: a gateway restarted in the same allocation starts its counters from
        # zero, so it must not overwrite the counters its previous life wrote (they still count in the merge).
        alloc = os.environ.get("NOMAD_ALLOC_ID", "")[:8]
        self.gateway_id = gateway_id or f"gw-{alloc + '-' if alloc else ''}{uuid.uuid4().hex[:12]}"
        self.state = GatewayState(production_arm)
        self.metrics = GatewayMetrics()
        self.rng = random.Random()  # traffic splitting, not security
        self.fallbacks: collections.Counter[str] = collections.Counter()
        self.random_arm = 0
        self._tally = threading.Lock()  # requests are answered on many threads at once
        self._seen: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._seen_lock = threading.Lock()
        self.follower = ExperimentFollower(store, model, self.state, wait_s=wait_s,
                                           on_error=self._background_error) if store is not None else None
        self.bandit = BanditUpdater(store, model, self.state, self.gateway_id, update_s=update_s,
                                    min_weight=min_weight, on_error=self._background_error) \
            if store is not None else None
        if discovery is not None:
            discovery.on_error = self._background_error
        if static_workers is not None:
            pool.set_members(static_workers)
        if event_log is not None:
            register_metrics(event_log, self.metrics.registry)

    # -- threads ---------------------------------------------------------------------------------------------

    def _background_error(self, thread: str) -> None:
        self.metrics.background_errors.labels(thread).inc()

    def start(self) -> None:
        for thread in (self.discovery, self.follower, self.bandit):
            if thread is not None:
                thread.start()
        if self.event_log is not None:
            self.event_log.start()

    def stop(self) -> None:
        for thread in (self.discovery, self.follower, self.bandit):
            if thread is not None:
                thread.stop()
        self.pool.set_members({})
        if self.event_log is not None:  # after the last request was answered: everything logged is drained
            self.event_log.close()

    @property
    def unit(self) -> str:
        """The body field that names the unit: ``--unit``, else the experiment's, else ``user_id``."""
        if self.unit_flag:
            return self.unit_flag
        experiment = self.state.experiment
        return experiment.unit if experiment is not None else "user_id"

    # -- /predict ----------------------------------------------------------------------------------------------

    def route(self, unit: str | None) -> tuple[Routes, str, bool]:
        """The routes in effect, the arm of a request with ``unit``, and whether that choice is sticky."""
        routes = self.state.routes  # once: a document change never gives this request half of each
        arm, sticky = choose(routes, unit, self.rng)
        return routes, arm, sticky

    def _prepare(self, parsed: bodies.PredictBody) -> tuple[Routes, str, bool]:
        """The routes, the request's arm and whether it is sticky; RequestInvalid for a row that is no object."""
        for i, row in enumerate(parsed.rows):
            if not isinstance(row, dict):
                raise RequestInvalid(f"row {i} must be a JSON object of feature values, got {type(row).__name__}",
                                     row=i)
        routes, arm, sticky = self.route(parsed.unit)
        if not sticky:
            with self._tally:
                self.random_arm += 1
            self.metrics.random_arm.inc()
        return routes, arm, sticky

    async def predict_async(self, parsed: bodies.PredictBody,
                            blocking: Callable[..., Awaitable[Any]]) -> tuple[int, dict[str, Any], str | None]:
        """Status, JSON payload and answering arm of a parsed request. The worker calls are awaited on the event
        loop, not run on a thread; the enricher (I/O) runs through ``blocking``."""
        routes, arm, sticky = self._prepare(parsed)
        rows = await blocking(self.enrich, parsed.unit, parsed.rows) if self.enrich is not None else parsed.rows
        deadline = time.monotonic() + self.timeout_s
        reply = answered = request_id = None
        for candidate, include_cooling in self._order(routes, arm):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            request_id = self.signer.issue(candidate, routes.experiment)
            try:
                reply = await self.pool.call_async(candidate, rows, request_id, remaining,
                                                   include_cooling=include_cooling)
            except NoHealthyWorker as exc:
                self._no_worker(candidate, exc)
                continue
            answered = candidate
            break
        if self.event_log is not None and reply is not None and answered is not None and request_id:
            self.event_log.prediction(request_id, unit_id=None if parsed.unit is None else str(parsed.unit),
                                      arm=answered, artifact_id=reply.artifact_id, names=None, features=rows,
                                      scores=reply.scores)
        return self._finish(parsed, routes, arm, sticky, reply, answered, request_id)

    @staticmethod
    def _order(routes: Routes, arm: str) -> list[tuple[str, bool]]:
        """Who to ask, in order: ``arm``'s workers, else the production arm's, else any arm's (a stopped
        experiment's winner may have no worker yet while the old control still runs); then the same again with
        workers still cooling down after a failure."""
        arms = list(dict.fromkeys((arm, routes.production, *routes.artifacts)))
        return [(name, cooling) for cooling in (False, True) for name in arms]

    def _no_worker(self, arm: str, exc: NoHealthyWorker) -> None:
        if exc.tried:
            self.metrics.worker_errors.labels(arm).inc(exc.tried)

    def _finish(self, parsed: bodies.PredictBody, routes: Routes, arm: str, sticky: bool, reply: Any,
                answered: str | None, request_id: str | None) -> tuple[int, dict[str, Any], str | None]:
        """The answer: the scores and who gave them, or 503 when no worker answered in time."""
        if reply is None or answered is None:
            return 503, {"error": f"no worker of model {self.model!r} answered (arm {arm!r}, then the production "
                         f"arm {routes.production!r}, then any arm)", "arm": arm}, None
        fallback = answered != arm
        if fallback:
            with self._tally:
                self.fallbacks[arm] += 1
            self.metrics.fallbacks.labels(arm).inc()
            log.warning("arm %s has no healthy worker; answered by arm %s", arm, answered,
                        extra={"request_id": request_id})
        payload: dict[str, Any] = {"model": reply.artifact_id}
        if parsed.single:
            payload["prediction"] = reply.scores[0]
        else:
            payload["predictions"] = reply.scores
        payload.update(arm=answered, request_id=request_id, sticky=sticky, fallback=fallback)
        if fallback:
            payload["assigned_arm"] = arm
        return 200, payload, answered

    # -- /feedback ---------------------------------------------------------------------------------------------

    def feedback(self, body: bytes) -> tuple[int, dict[str, Any]]:
        """Status and JSON payload of a feedback body."""
        try:
            parsed = bodies.feedback_body(body)
        except RequestInvalid as exc:
            self.metrics.feedback.labels("refused").inc()
            return 422, {"error": str(exc)[:1000], "field": exc.field_name}
        try:
            issued = self.signer.verify(parsed.request_id)
        except RequestIdInvalid as exc:
            forged = "signature" in str(exc)
            self.metrics.feedback.labels("forged" if forged else "refused").inc()
            return (403 if forged else 422), {"error": str(exc), "field": "request_id"}
        if time.time() - issued.issued_at > self.feedback_window_s:
            self.metrics.feedback.labels("stale").inc()
            return 409, {"error": f"the request is older than the feedback window ({self.feedback_window_s:g} s)",
                         "field": "request_id"}
        routes = self.state.routes
        if issued.experiment != routes.experiment or routes.state != "running":
            self.metrics.feedback.labels("stale").inc()
            return 409, {"error": "the request was answered under an experiment that is not running now; its "
                         "feedback is not counted", "field": "request_id"}
        with self._seen_lock:
            if issued.request_id in self._seen:
                self.metrics.feedback.labels("duplicate").inc()
                return 409, {"error": "feedback for this request was counted already", "field": "request_id"}
            self._seen[issued.request_id] = None
            if len(self._seen) > SEEN_FEEDBACK:
                self._seen.popitem(last=False)
        if not self.state.reward(issued.experiment, issued.arm, parsed.reward):
            self.metrics.feedback.labels("stale").inc()
            return 409, {"error": f"arm {excerpt(issued.arm)!r} is not an arm of the running experiment",
                         "field": "request_id"}
        self.metrics.feedback.labels("counted").inc()
        self.metrics.rewards.labels(issued.arm, str(parsed.reward)).inc()
        if self.event_log is not None:
            self.event_log.feedback(parsed.request_id, float(parsed.reward))
        return 202, {"counted": True, "arm": issued.arm, "reward": parsed.reward}

    # -- /health -----------------------------------------------------------------------------------------------

    def health(self) -> tuple[int, dict[str, Any]]:
        """Status code and body of /health: arms, workers per arm, fallbacks, what each arm serves, errors."""
        routes = self.state.routes
        workers = self.pool.describe()
        arms = []
        for name in dict.fromkeys((*routes.arms, routes.production)):
            listed = workers.get(name, [])
            arms.append({"name": name, "artifact_id": routes.artifacts.get(name),
                         "weight": dict(routes.weights).get(name), "production": name == routes.production,
                         "workers": len(listed), "healthy_workers": sum(1 for w in listed if w["healthy"]),
                         "serves": sorted({w["serves"] for w in listed if w["serves"]}),
                         "fallbacks": self.fallbacks.get(name, 0)})
        problems = []
        for name, thread in (("experiment", self.follower), ("bandit", self.bandit), ("discovery", self.discovery)):
            if thread is not None and thread.last_error is not None:
                problems.append(f"{name}: {thread.last_error}")
        for arm in arms:
            if not arm["healthy_workers"]:
                problems.append(f"arm {arm['name']!r} has no healthy worker")
        unknown = sorted(set(workers) - set(routes.artifacts) - {routes.production})
        if unknown and routes.state is not None:
            problems.append(f"workers of arms the experiment does not have: {', '.join(unknown)}")
        any_worker = any(arm["healthy_workers"] for arm in arms)
        status = "unavailable" if not any_worker else "degraded" if problems else "ok"
        for name, weight in routes.weights:
            self.metrics.weight.labels(name).set(weight)
        self.metrics.degraded.set(0 if status == "ok" else 1)
        body: dict[str, Any] = {
            "status": status, "reason": "; ".join(problems) or None, "model": self.model,
            "gateway_id": self.gateway_id, "unit": self.unit, "experiment": routes.describe(), "arms": arms,
            "workers": workers, "fallbacks": dict(self.fallbacks), "random_arm_requests": self.random_arm,
            "signing_key_configured": self.signing_key_configured,
            "release": os.environ.get("CARAVAN_RELEASE") or None,
        }
        if self.event_log is not None:
            body["event_log"] = self.event_log.health()
        if self.follower is not None:
            body["experiment_follower"] = {"errors": self.follower.errors, "last_error": self.follower.last_error,
                                           "version": self.follower.version}
        if self.bandit is not None:
            body["bandit"] = {"errors": self.bandit.errors, "last_error": self.bandit.last_error,
                              "updates": self.bandit.updates, "merged_counts": self.bandit.merged,
                              "own_counts": self.state.counts()[1],
                              "weights_updated_at": self.state.bandit_updated_at}
        if self.discovery is not None:
            body["discovery"] = {"service": self.discovery.service, "errors": self.discovery.errors,
                                 "last_error": self.discovery.last_error}
        return (503 if status == "unavailable" else 200), body


def _error(status: int, exc: RequestInvalid | WorkerRefused) -> tuple[int, bytes]:
    field = excerpt(exc.field_name) if exc.field_name is not None else None
    return status, _JSON_ERROR.encode({"error": str(exc)[:1000], "field": field, "row": exc.row}).encode()


def _predict_endpoint(gateway: Gateway, pool: ThreadPoolExecutor, max_body_bytes: int) -> Callable[..., Any]:
    async def blocking(function: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, function, *args)

    async def predict(scope: dict[str, Any], receive: Any, send: Any) -> None:
        started = time.perf_counter()
        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                declared = limits.content_length(value)
        arm: str | None = None
        payload: dict[str, Any] | None = None
        try:
            body = await limits.read_body(receive, max_body_bytes, declared)
            loop = asyncio.get_running_loop()
            if len(body) > OFF_LOOP_BYTES:  # a body of megabytes is parsed on a thread: /health keeps answering
                parsed = await loop.run_in_executor(pool, bodies.predict_body, body, gateway.unit)
            else:
                parsed = bodies.predict_body(body, gateway.unit)
            status, payload, arm = await gateway.predict_async(parsed, blocking)
            try:
                data = (_JSON if status == 200 else _JSON_ERROR).encode(payload).encode()
            except ValueError:  # a score JSON cannot carry (NaN): the worker's fault, not the client's
                status, data = 502, _JSON_ERROR.encode({"error": "the worker gave a score that is not a finite "
                                                        f"number (arm {arm})"}).encode()
        except BodyTooLarge as exc:
            status, data = 413, _JSON_ERROR.encode({"error": limits.too_large_message(exc, limits.MAX_ROWS)}).encode()
        except ClientGone:
            status, data = 499, b""
        except RequestInvalid as exc:
            status, data = _error(422, exc)
        except WorkerRefused as exc:
            status, data = _error(413 if exc.too_large else 422, exc)
        except Exception as exc:  # a genuine fault (an enricher that raised): report it, keep the gateway up
            status = 500
            data = _JSON_ERROR.encode({"error": f"internal error ({type(exc).__name__})"}).encode()
            log.exception("predict failed")
        elapsed = time.perf_counter() - started
        gateway.metrics.answered(status, arm or "", elapsed)
        request_id = payload.get("request_id") if payload else None
        if status != 200 or log.isEnabledFor(logging.DEBUG):
            log.info("predict %s", status, extra={"request_id": request_id, "status": status, "path": "/predict",
                                                  "duration_ms": round(elapsed * 1000, 3),
                                                  "model": payload.get("model") if payload else None})
        if status == 499:
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        if request_id:
            headers.append((b"x-request-id", request_id.encode("ascii")))
        if arm:
            headers.append((b"x-caravan-arm", arm.encode("ascii", "replace")))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    return predict


class _Front:
    """``POST /predict`` straight to its handler (the hot path skips Starlette's router); the rest to Starlette."""

    def __init__(self, app: Starlette, predict: Callable[..., Any], gateway: Gateway) -> None:
        self.app, self.predict, self.gateway, self.state = app, predict, gateway, app.state

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            await self.predict(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def create_app(gateway: Gateway, *, start: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               threads: int = 32) -> _Front:
    """The ASGI app of ``gateway``; its background threads start and stop with the app (``start``)."""
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway")
    predict = _predict_endpoint(gateway, pool, max_body_bytes)

    async def feedback(request: Request) -> Response:
        declared = limits.content_length(request.headers.get("content-length", "").encode())
        try:
            body = await limits.read_body(request.receive, FEEDBACK_MAX_BYTES, declared)  # type: ignore[arg-type]
        except BodyTooLarge as exc:
            return Response(_JSON_ERROR.encode({"error": f"feedback body over {exc.limit} bytes"}), 413,
                            media_type="application/json")
        except ClientGone:
            return Response(b"", 499)
        status, payload = gateway.feedback(body)
        return Response(_JSON_ERROR.encode(payload), status, media_type="application/json")

    async def health(request: Request) -> Response:
        status, payload = gateway.health()
        return Response(_JSON_ERROR.encode(payload), status, media_type="application/json")

    async def prometheus(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        gateway.health()  # refreshes the gauges
        return Response(generate_latest(gateway.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def refuse(request: Request) -> Response:  # POST /predict never gets here; other methods get 405
        return Response(b"", 405)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if start:
            gateway.start()
        try:
            yield
        finally:
            gateway.stop()
            pool.shutdown(wait=False)

    app = Starlette(routes=[Route("/predict", refuse, methods=["POST"]),
                            Route("/feedback", feedback, methods=["POST"]), Route("/health", health),
                            Route("/metrics", prometheus)], lifespan=lifespan)
    app.state.gateway = gateway
    return _Front(app, predict, gateway)


def serve(model: str, *, host: str = "0.0.0.0", port: int = 8080, workers: Sequence[str] = (),  # noqa: S104
          unit: str | None = None, production_arm: str = "control", enrich: str | None = None,
          update_s: float = 60.0, min_weight: float = 0.05, timeout_s: float = 2.0, store_kind: str | None = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, event_log: dict[str, Any] | None = None) -> None:
    """Run a gateway under uvicorn, logging JSON lines to stdout. Workers from ``workers`` (``ARM=host:port``
    flags), else from Consul's health API. ``event_log``: keyword arguments of
    :meth:`caravan.events.log.EventLog.for_server` (None: no event log)."""
    import uvicorn

    from ..experiments import experiment_store
    from ..serving.observe import log_json_lines
    from ..serving.worker_client import PredictorClient
    from .signing import signer_from_secrets
    from .workers import parse_worker_flags

    log_json_lines()
    static = parse_worker_flags(workers) if workers else None
    enricher = load_enricher(enrich) if enrich else None
    if enricher is not None:
        enricher(None, [])  # once at start: it loads its data now, and a missing table fails here, not per request
    signer, configured = signer_from_secrets()
    pool = WorkerPool(PredictorClient)
    gateway = Gateway(model, pool, signer, store=experiment_store(store_kind),
                      discovery=None if static is not None else ConsulDiscovery(pool, model), unit=unit,
                      production_arm=production_arm, timeout_s=timeout_s, update_s=update_s, min_weight=min_weight,
                      enrich=enricher, signing_key_configured=configured,
                      static_workers=static,
                      event_log=EventLog.for_server(model, port=port, **event_log) if event_log is not None else None)
    uvicorn.run(create_app(gateway, max_body_bytes=max_body_bytes), host=host, port=port, log_config=None,
                access_log=False)
