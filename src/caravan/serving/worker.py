"""A worker: one model behind gRPC ``caravan.v1.Predictor/Predict``, plus HTTP ``/health`` and ``/metrics``.

``PredictStream`` answers the same requests on one long-lived stream (what the gateway uses: a message costs
less than a call), one reply per request in order, a refusal as a reply with ``error`` (the stream goes on).

``caravan worker --model M --arm NAME`` serves the artifact that arm NAME of M's experiment names, and
follows the experiment document live; ``--artifact URI`` serves one artifact. Either way the model is
loaded exactly as ``caravan serve`` loads it: :class:`~caravan.serving.watcher.Watcher` follows a pointer
(here :class:`ArmPointer` or :class:`FixedPointer`, which read like one), a model nobody loaded before is
checked in the probe process first (:mod:`.probe`), and a model that fails or kills the probe is refused
while the old one keeps serving. Rows are checked by the same code as ``caravan serve``
(:class:`~caravan.serving.model.LoadedModel`): a request that does not fit is answered ``INVALID_ARGUMENT``
with serve's message, and the field and row in trailing metadata; no request can bring the worker down.

The gateway finds workers in Consul (service ``caravan-<env>-worker``, tags ``model=M`` and ``arm=NAME``:
nomad/worker.nomad.hcl) and calls them through :class:`~caravan.serving.worker_client.PredictorClient`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import grpc

from ..registry import PointerState
from ..v1 import predict_pb2, predict_pb2_grpc
from .app import OFF_LOOP_BYTES
from .limits import MAX_ROWS
from .model import ModelHolder, RequestInvalid, excerpt
from .observe import Metrics, log_json_lines
from .probe import Probe
from .watcher import Watcher
from .wire import decode_rows
from .worker_client import FIELD_KEY, ROW_KEY, SERVER_OPTIONS

if TYPE_CHECKING:
    from ..experiments import ExperimentStore

log = logging.getLogger("caravan.worker")
_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))

__all__ = ["ArmPointer", "FixedPointer", "Worker", "run_worker"]


class ArmPointer:
    """Arm ``arm`` of a model's experiment, read like a model pointer: its document names the arm's artifact
    (None while there is no experiment, or the experiment has no such arm). Watches block on the store."""

    def __init__(self, store: ExperimentStore, arm: str) -> None:
        self.store, self.arm = store, arm
        self.problem: str | None = None  # why the arm names no artifact, for /health

    def _state(self, model: str, found: tuple[Any, int]) -> PointerState:
        experiment, version = found
        document: dict[str, Any] | None = None
        if experiment is None:
            self.problem = f"model {model!r} has no experiment"
        else:
            arms = {arm.name: arm for arm in experiment.arms}
            arm = arms.get(self.arm)
            if arm is None:
                self.problem = f"the experiment of {model!r} has no arm {self.arm!r} (arms: {', '.join(arms)})"
            else:
                self.problem = None
                document = {"artifact_id": arm.artifact_id, "artifact_uri": arm.artifact_uri,
                            "experiment_state": experiment.state}
        return PointerState(document, version, version)

    def read(self, model: str) -> PointerState:
        return self._state(model, self.store.read(model))

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        return self._state(model, self.store.watch(model, state.version, timeout_s))

    def history(self, model: str) -> list[dict[str, Any]]:
        return []  # an arm has no lineage to fall back on: a refused artifact leaves the worker unavailable


class FixedPointer:
    """One artifact, read like a pointer that never moves (``caravan worker --artifact URI``)."""

    def __init__(self, artifact_uri: str, artifact_id: str | None = None) -> None:
        if artifact_id is None:
            from .probe import artifact_from_uri

            artifact_id = artifact_from_uri(artifact_uri).id
        self.document = {"artifact_id": artifact_id, "artifact_uri": artifact_uri}
        self.problem: str | None = None
        self._never = threading.Event()

    def read(self, model: str) -> PointerState:
        return PointerState(dict(self.document), 1, 1)

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        self._never.wait(timeout_s)  # nothing ever changes: wait like a blocking query that times out
        return state

    def history(self, model: str) -> list[dict[str, Any]]:
        return []


_Outcome = tuple[predict_pb2.PredictReply | None, grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


class _Predictor(predict_pb2_grpc.PredictorServicer):
    """The gRPC servicer: decode, check and score with whatever model the holder has at the call's start.

    It runs on the worker's asyncio loop (one thread, like ``caravan serve``'s event loop: no lock contention
    between request threads); a request above :data:`OFF_LOOP_BYTES` is scored on a worker thread instead,
    so that small requests keep flowing meanwhile.
    """

    def __init__(self, worker: Worker, large: ThreadPoolExecutor) -> None:
        self.worker, self.large = worker, large
        ok = worker.metrics
        self._ok_count, self._ok_latency = ok.requests.labels("OK"), ok.latency.labels("OK")

    async def Predict(self, request: predict_pb2.PredictRequest,  # noqa: N802 — the rpc's name in predict.proto
                      context: grpc.aio.ServicerContext[Any, Any]) -> predict_pb2.PredictReply:
        reply, code, message, metadata = await self._outcome(request)
        if reply is not None:
            return reply
        if metadata:
            context.set_trailing_metadata(metadata)
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    async def PredictStream(self, requests: Any,  # noqa: N802 — the rpc's name in predict.proto
                            context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """One reply per request, in order; a refusal or failure is a reply with ``error`` (the stream goes on)."""
        while (request := await context.read()) is not grpc.aio.EOF:
            reply, code, message, metadata = await self._outcome(request)
            if reply is None:
                error = predict_pb2.Error(code=code.name, message=message)
                for key, value in metadata:
                    if key == FIELD_KEY:
                        error.field = value.decode("utf-8") if isinstance(value, bytes) else value
                    elif key == ROW_KEY:
                        error.row = int(value)
                reply = predict_pb2.PredictReply(error=error)
            await context.write(reply)

    async def _outcome(self, request: predict_pb2.PredictRequest) -> _Outcome:
        if request.ByteSize() > OFF_LOOP_BYTES:
            return await asyncio.get_running_loop().run_in_executor(self.large, self.score, request)
        return self.score(request)

    def score(self, request: predict_pb2.PredictRequest) -> _Outcome:
        """The reply, or the status, message and trailing metadata of a refusal."""
        started = time.perf_counter()
        worker = self.worker
        served = worker.holder.current  # this request's model, whatever a swap does meanwhile
        code, message = grpc.StatusCode.OK, ""
        metadata: list[tuple[str, str | bytes]] = []
        try:
            if served is None:
                reason = worker.status()[1]
                code, message = grpc.StatusCode.UNAVAILABLE, (f"no model is served: {reason}" if reason
                                                               else "no model loaded yet")
            elif len(request.rows) > worker.max_rows:
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                message = f"at most {worker.max_rows} rows per request, got {len(request.rows)}"
            elif not request.rows:
                raise RequestInvalid("no rows to predict")
            else:
                scores = served.predict(decode_rows(request))
                reply = predict_pb2.PredictReply(scores=scores, artifact_id=served.artifact_id, model=worker.model)
                self._ok_count.inc()
                self._ok_latency.observe(time.perf_counter() - started)
                return reply, code, message, ()
        except RequestInvalid as exc:
            code, message = grpc.StatusCode.INVALID_ARGUMENT, str(exc)[:1000]
            if exc.field_name is not None:  # binary metadata: a field name may be any Unicode
                metadata.append((FIELD_KEY, excerpt(exc.field_name).encode("utf-8", "backslashreplace")))
            if exc.row is not None:
                metadata.append((ROW_KEY, str(exc.row)))
        except Exception as exc:  # a genuine fault of the worker: report it, keep serving
            code = grpc.StatusCode.INTERNAL
            message = f"internal error ({type(exc).__name__}); request id {excerpt(request.request_id)}"
            log.exception("predict failed", extra={"request_id": request.request_id})
        elapsed = time.perf_counter() - started
        worker.metrics.requests.labels(code.name).inc()
        worker.metrics.latency.labels(code.name).observe(elapsed)
        log.info("predict %s", code.name, extra={"request_id": request.request_id, "status": code.name,
                                                 "duration_ms": round(elapsed * 1000, 3),
                                                 "model": served.artifact_id if served else None})
        return None, code, message, tuple(metadata)


class Worker:
    """A worker's parts: the holder and watcher of its model, the gRPC server (grpc.aio, on an asyncio loop of
    its own thread) and the HTTP health server.

    ``source`` is what the watcher follows (:class:`ArmPointer`, :class:`FixedPointer`, or a model pointer).
    Ports 0 pick free ports (see :attr:`grpc_port` and :attr:`http_port`).
    """

    def __init__(self, source: Any, model: str, *, arm: str | None = None, host: str = "0.0.0.0",  # noqa: S104
                 grpc_port: int = 9000, http_port: int = 9001, isolate: bool = True, max_rows: int = MAX_ROWS,
                 wait_s: float = 30.0, probe_timeout_s: float = 60.0) -> None:
        self.source, self.model, self.arm, self.host = source, model, arm, host
        self.max_rows = max_rows
        self.holder, self.metrics = ModelHolder(), Metrics()
        self.probe = Probe(timeout_s=probe_timeout_s) if isolate else None
        self.watcher = Watcher(source, model, self.holder, self.metrics, probe=self.probe, wait_s=wait_s)
        self.release = os.environ.get("CARAVAN_RELEASE") or None
        self._large = ThreadPoolExecutor(max_workers=2, thread_name_prefix="predict-large")  # two bound memory
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="worker-grpc", daemon=True)
        self._loop_thread.start()
        self._grpc, self.grpc_port = self._on_loop(self._bind(f"{_bracket(host)}:{grpc_port}"))
        self._http = ThreadingHTTPServer((host, http_port), _health_handler(self))
        self._http.daemon_threads = True
        self.http_port = self._http.server_address[1]
        self._http_thread = threading.Thread(target=self._http.serve_forever, name="worker-http", daemon=True)

    def _on_loop(self, coroutine: Any, timeout_s: float | None = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout_s)

    async def _bind(self, address: str) -> tuple[grpc.aio.Server, int]:
        server = grpc.aio.server(options=list(SERVER_OPTIONS))
        predict_pb2_grpc.add_PredictorServicer_to_server(_Predictor(self, self._large), server)
        port = server.add_insecure_port(address)
        if port == 0:
            raise OSError(f"cannot listen for gRPC on {address}")
        return server, port

    def start(self, *, watch: bool = True) -> Worker:
        if watch:
            self.watcher.start()
        self._on_loop(self._grpc.start())
        self._http_thread.start()
        log.info("worker of %s%s: gRPC on %s, HTTP on %s", self.model, f" arm {self.arm}" if self.arm else "",
                 self.grpc_port, self.http_port)
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Stop taking calls, let those in flight finish within ``grace_s``, stop following the model."""
        try:
            self._on_loop(self._grpc.stop(grace_s), grace_s + 5)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)
            self._http.shutdown()
            self._http.server_close()
            self.watcher.stop()
            self._large.shutdown(wait=False)
            if self.probe is not None:
                self.probe.close()

    def status(self) -> tuple[str, str | None]:
        """The watcher's status and reason, made precise by the source (an experiment without this arm)."""
        status, reason = self.watcher.status()
        problem = getattr(self.source, "problem", None)
        if problem:
            served = self.holder.current
            if served is None:
                return ("unavailable" if status != "loading" else status), problem
            return "degraded", f"{problem}; still serving {served.artifact_id}"
        return status, reason

    def health(self) -> tuple[int, dict[str, Any]]:
        """The status code and body of ``/health``: what this worker serves (model, arm, artifact) and how."""
        served = self.holder.current
        status, reason = self.status()
        details = {"reloads_ok": self.holder.reloads_ok, "reloads_failed": self.holder.reloads_failed,
                   "reloads_crashed": self.holder.reloads_crashed, "last_reload_error": self.holder.last_error,
                   "source_error": self.watcher.last_error, "source_errors": self.watcher.errors,
                   "source_version": self.watcher.state.version,
                   "source_target": self.watcher.target[0] if self.watcher.target else None}
        body: dict[str, Any] = {"status": status, "reason": reason, "name": self.model, "arm": self.arm,
                                "model": None, "release": self.release, "grpc_port": self.grpc_port,
                                "last_error": self.watcher.last_error or self.holder.last_error, "details": details}
        if served is None:
            return 503, body
        body.update(model=served.artifact_id, uri=served.artifact_uri, features=served.names,
                    schema=[{"name": f.name, "type": f.type} for f in served.features], max_rows=self.max_rows)
        return 200, body


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _health_handler(worker: Worker) -> Callable[..., BaseHTTPRequestHandler]:
    class Health(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            if self.path.split("?")[0] == "/health":
                status, body = worker.health()
                self._send(status, _JSON.encode(body).encode(), "application/json")
            elif self.path.split("?")[0] == "/metrics":
                from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

                self._send(200, generate_latest(worker.metrics.registry), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"error":"not found: /health, /metrics"}', "application/json")

        def _send(self, status: int, data: bytes, media_type: str) -> None:
            self.send_response(status)
            self.send_header("content-type", media_type)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no line per request: Nomad checks /health every few seconds

    return Health


def run_worker(model: str, *, arm: str | None = None, artifact: str | None = None, host: str = "0.0.0.0",  # noqa: S104
               grpc_port: int = 9000, http_port: int = 9001, isolate: bool = True, max_rows: int = MAX_ROWS,
               pointer_kind: str | None = None) -> None:
    """Run a worker until SIGTERM/SIGINT (calls in flight finish first), logging JSON lines to stdout."""
    import signal

    if (arm is None) == (artifact is None):
        from ..errors import ConfigurationError

        raise ConfigurationError("caravan worker: give exactly one of --arm NAME and --artifact URI")
    log_json_lines()
    if artifact is not None:
        source: Any = FixedPointer(artifact)
    else:
        from ..experiments import experiment_store

        source = ArmPointer(experiment_store(pointer_kind), str(arm))
    worker = Worker(source, model, arm=arm, host=host, grpc_port=grpc_port, http_port=http_port,
                    isolate=isolate, max_rows=max_rows).start()
    stopping = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    stopping.wait()
    log.info("worker of %s stopping", model)
    worker.stop()
