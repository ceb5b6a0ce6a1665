"""Throughput and latency of ``POST /predict``: caravan's server vs a hand-written raw ASGI endpoint vs the floor.

Run: ``.venv/bin/python bench/serving.py [--duration 6] [--rounds 3] [--connections 4]``, or
``.venv/bin/python bench/serving.py --url http://host:port [--duration 10] [--max-p99-ms 1000]``

Trains a LightGBM model of realistic size in the script (``--features`` 20 numeric features,
``--trees`` 100 trees of ``--leaves`` 31 leaves), publishes it as an artifact and points a file
model pointer at it. Two servers then run as separate processes, each under uvicorn with one
worker on 127.0.0.1, as ``caravan serve`` runs it:

* caravan: ``python -m caravan.cli serve --pointer file`` (Starlette, request validation,
  Prometheus metrics, hot-reload watcher);
* baseline: this script's ``--baseline-server PORT MODEL_FILE`` mode, a raw ASGI app (no
  framework) that reads the body, ``json.loads`` it, builds the numpy rows in feature order,
  calls ``booster.predict`` on the same model string and returns JSON. No validation.

The load generator runs in this process: ``--connections`` threads, each with one keep-alive
HTTP/1.1 connection sending pre-encoded requests over a raw socket (a few µs of client work per
request, so the client is not what limits the servers; ``requests`` costs ~1 ms per request).
Each case (one row per request, ``--batch`` rows per request) runs ``--warmup`` s unmeasured then
``--duration`` s measured, against each server in turn, ``--rounds`` times with the order
alternating; the numbers pool every round. ``server CPU`` is the server process's CPU time over the
measured window (100% = one core), ``client CPU`` the load generator's (this whole process). The
floor is ``booster.predict`` on a ready numpy matrix in this process, beside each server's own
path from parsed JSON rows to predictions, without HTTP.

LightGBM predicts on OpenMP threads, one per core by default; this script sets ``OMP_NUM_THREADS=1``
for itself and both servers unless the caller sets it (see the comment below the imports).

Goal: caravan's throughput at least 80% of the baseline's, in both cases.

With ``--url URL`` (CI's staging-test job), only the caravan server at that base URL is load-tested: no
model is trained, no server started, no baseline. The rows are built from the server's ``GET /health``
(its features and their types; the batch case is cut to its ``max_rows``), one request of each case is
checked first, then the same load generator drives ``URL/predict`` (http, or https with the certificate
checked against the system's store) and the script prints req/s, rows/s, p50/p99 and failed requests per
case. It exits non-zero if any request failed or a case's p99 is above ``--max-p99-ms`` (default 1000).
``--rounds`` defaults to 1 there; ``--features``, ``--trees`` and ``--leaves`` do not apply.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from common import percentile, verdict  # first: puts the repository root on sys.path
from servers import free_port, process

for _name in list(os.environ):  # the script names every setting the servers need itself
    if _name.startswith(("CARAVAN_", "CONSUL_")):
        del os.environ[_name]
# LightGBM predicts on OpenMP threads, by default one per core. Beside the load generator on a small shared
# machine that oversubscribes the cores, and a parallel region waits for whichever thread was descheduled
# (10-20 ms per call here, even for one row). One thread in every process of the run, servers included (they
# inherit it), unless the caller sets OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

MODEL = "bench-serving"
GOAL = 0.8


# -- the hand-written baseline ------------------------------------------------------------------------------

def baseline_app(booster: Any, names: list[str]) -> Callable[..., Any]:
    """A raw ASGI app: POST /predict with one JSON object, a list of objects or {"rows": [...]}; GET /health."""

    async def respond(send: Callable[..., Any], status: int, body: bytes) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/health":
            await respond(send, 200, b'{"status":"ok"}')
            return
        if scope["path"] != "/predict" or scope["method"] != "POST":
            await respond(send, 404, b'{"error":"not found"}')
            return
        chunks = []
        more = True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        try:
            data = json.loads(b"".join(chunks))
            single = isinstance(data, dict) and "rows" not in data
            rows = [data] if single else data["rows"] if isinstance(data, dict) else data
            scores = booster.predict(np.array([[row[name] for name in names] for row in rows], dtype=np.float64))
        except (ValueError, KeyError, TypeError) as exc:
            await respond(send, 400, json.dumps({"error": str(exc)}).encode())
            return
        payload = {"prediction": float(scores[0])} if single else {"predictions": scores.tolist()}
        await respond(send, 200, json.dumps(payload).encode())

    return app


def run_baseline(port: int, model_file: str) -> None:
    """Serve the baseline under uvicorn the way ``caravan serve`` runs its app."""
    import lightgbm as lgb
    import uvicorn

    booster = lgb.Booster(model_str=Path(model_file).read_text())
    uvicorn.run(baseline_app(booster, booster.feature_name()), host="127.0.0.1", port=port, log_config=None,
                access_log=False)


# -- the load generator -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """Where the load goes: a host and port, over TLS or not, with ``/predict`` under ``prefix``."""

    host: str
    port: int
    tls: bool = False
    prefix: str = ""

    @classmethod
    def from_url(cls, url: str) -> Target:
        """``http[s]://host[:port][/prefix]``; anything else is a clear error naming the URL."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise SystemExit(f"--url {url!r}: the scheme must be http or https, not {parts.scheme or 'none'!r}")
        try:
            port = parts.port
        except ValueError as exc:
            raise SystemExit(f"--url {url!r}: {exc}") from None
        if not parts.hostname or parts.query or parts.fragment or parts.username:
            raise SystemExit(f"--url {url!r}: expected http[s]://host[:port][/path], without query or credentials")
        tls = parts.scheme == "https"
        return cls(parts.hostname, port or (443 if tls else 80), tls, parts.path.rstrip("/"))

    @property
    def authority(self) -> str:
        """The Host header: the host, and the port unless it is the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == (443 if self.tls else 80) else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.authority}{self.prefix}"


class Connection:
    """One keep-alive HTTP/1.1 connection (TLS for https, the certificate verified); one request in flight.

    A response must carry Content-Length or be chunked; after a ``Connection: close`` answer (some proxies
    send one) the next request opens a new connection.
    """

    def __init__(self, target: Target) -> None:
        self.target = target
        self.sock: socket.socket | None = self._connect()
        self.buffer = b""

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.target.host, self.target.port), timeout=30)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.target.tls:
            import ssl

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.target.host)
        return sock

    def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.sock is None:
            self.sock, self.buffer = self._connect(), b""
        self.sock.sendall(raw)
        buffer = self.buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += self._recv()
        head = buffer[:end].lower()
        start = head.find(b"\r\ncontent-length:")
        if start >= 0:
            stop = head.find(b"\r\n", start + 2)
            total = end + 4 + int(head[start + 17:stop if stop >= 0 else len(head)])
            while len(buffer) < total:
                buffer += self._recv()
            body, self.buffer = buffer[end + 4:total], buffer[total:]
        elif b"\r\ntransfer-encoding: chunked" in head:
            body, self.buffer = self._chunked(buffer, end + 4)
        else:
            raise ConnectionError(f"response with neither content-length nor chunked encoding: {head[:200]!r}")
        if b"\r\nconnection: close" in head or head.startswith(b"http/1.0"):
            self.close()
        return int(head[9:12]), body

    def _chunked(self, buffer: bytes, pos: int) -> tuple[bytes, bytes]:
        """The body of a chunked response starting at ``pos``, and what follows it."""
        parts = []
        while True:
            while (eol := buffer.find(b"\r\n", pos)) < 0:
                buffer += self._recv()
            size = int(buffer[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                break
            while len(buffer) < pos + size + 2:
                buffer += self._recv()
            parts.append(buffer[pos:pos + size])
            pos += size + 2
        while True:  # trailer lines, up to an empty one
            while (eol := buffer.find(b"\r\n", pos)) < 0:
                buffer += self._recv()
            line, pos = buffer[pos:eol], eol + 2
            if not line:
                return b"".join(parts), buffer[pos:]

    def _recv(self) -> bytes:
        chunk = self.sock.recv(262144) if self.sock is not None else b""
        if not chunk:
            raise ConnectionError("the server closed the connection")
        return chunk

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def encode_post(target: Target, body: bytes) -> bytes:
    return (f"POST {target.prefix}/predict HTTP/1.1\r\nHost: {target.authority}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


@dataclass
class Run:
    """One server, one case, pooled over rounds."""

    requests: int = 0
    failed: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)
    per_round: list[float] = field(default_factory=list)  # requests/s of each round

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else math.nan


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(target: Target, pid: int | None, bodies: list[bytes], connections: int, warmup: float, duration: float,
         run: Run) -> None:
    """Drive one server for warmup + duration seconds; add the measured window to ``run``.

    Latencies are those of the measured window; a failed request (not 200, or no answer) counts wherever it
    falls. After a connection error a worker reconnects and goes on; after three in a row it gives up.
    ``pid`` is the server's process, for its CPU time (None for a server elsewhere).
    """
    raws = [encode_post(target, body) for body in bodies]
    begin = time.perf_counter() + 0.2  # every connection is open before the clock starts
    measure_from, measure_to = begin + warmup, begin + warmup + duration
    results: list[tuple[list[float], int, str | None]] = []

    def worker(offset: int) -> None:
        latencies: list[float] = []
        failed, error, in_a_row = 0, None, 0
        conn = None
        try:
            conn = Connection(target)
            time.sleep(max(0.0, begin - time.perf_counter()))
            n = offset
            while in_a_row < 3:
                sent = time.perf_counter()
                if sent >= measure_to:
                    break
                raw = raws[n % len(raws)]
                n += 1
                try:
                    status, body = conn.request(raw)
                except OSError as exc:
                    failed, in_a_row = failed + 1, in_a_row + 1
                    error = error or f"{type(exc).__name__}: {exc}"
                    conn.close()  # the next request opens a new connection
                    continue
                in_a_row = 0
                done = time.perf_counter()
                if status != 200:  # a failure, never throughput
                    failed += 1
                    error = error or f"{status}: {body[:200]!r}"
                elif sent >= measure_from and done <= measure_to:
                    latencies.append(done - sent)
        except OSError as exc:
            failed, error = failed + 1, error or f"{type(exc).__name__}: {exc}"
        finally:
            if conn is not None:
                conn.close()
            results.append((latencies, failed, error))

    threads = [threading.Thread(target=worker, args=(i * 7,), daemon=True) for i in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu_before, client_before = cpu_seconds(pid) if pid else 0.0, time.process_time()
    time.sleep(max(0.0, measure_to - time.perf_counter()))
    cpu_after, client_after = cpu_seconds(pid) if pid else 0.0, time.process_time()
    for thread in threads:
        thread.join(timeout=60)
    count = sum(len(latencies) for latencies, _, _ in results)
    run.requests += count
    run.failed += sum(failed for _, failed, _ in results)
    run.seconds += duration
    run.server_cpu += cpu_after - cpu_before
    run.client_cpu += client_after - client_before
    run.per_round.append(count / duration)
    for latencies, _, error in results:
        run.latencies.extend(latencies)
        if error:
            print(f"  failure at {target.url}: {error}", flush=True)


# -- the model ----------------------------------------------------------------------------------------------

def train(n_features: int, trees: int, leaves: int) -> tuple[Any, np.ndarray]:
    """A binary LightGBM model on synthetic numeric features; and fresh rows to request predictions for."""
    import lightgbm as lgb

    rng = np.random.default_rng(7)
    x = rng.normal(size=(20_000, n_features))
    signal = x[:, 0] * x[:, 1] + np.sin(3 * x[:, 2]) + x[:, 3] ** 2 - x[:, 4] + 0.3 * x[:, 5:].sum(axis=1)
    y = (signal + rng.normal(0, 0.5, len(x)) > 1).astype(float)
    names = [f"f{i:02d}" for i in range(n_features)]
    booster = lgb.train({"objective": "binary", "num_leaves": leaves, "verbosity": -1, "seed": 7,
                         "min_data_in_leaf": 5}, lgb.Dataset(x, y, feature_name=names), num_boost_round=trees)
    return booster, np.round(rng.normal(size=(10_000, n_features)), 4)


def publish(root: str, booster: Any, sample: np.ndarray, leaves: int) -> Any:
    from caravan import Address, Artifact, open_store

    names = booster.feature_name()
    artifact = Artifact(open_store(root), Address("BenchServingModel", {
        "features": str(len(names)), "trees": str(booster.num_trees()), "leaves": str(leaves)}))
    with artifact.writer() as writer:
        writer.write_text("model.txt", booster.model_to_string())
        writer.write_json("features.json", {"label": "y", "features": [{"name": n, "type": "double"} for n in names]})
        writer.write_json("sample.json", [dict(zip(names, map(float, row), strict=True)) for row in sample[:16]])
    return artifact


def per_call(fn: Callable[[], Any], seconds: float, slices: int = 10) -> float:
    """Seconds per call of ``fn``: the best of ``slices`` slices of ``seconds`` in all (the machine is shared)."""
    best = math.inf
    for _ in range(slices):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < seconds / slices:
            fn()
            n += 1
        best = min(best, elapsed / n)
    return best


# -- a server elsewhere (--url) -----------------------------------------------------------------------------

def example_value(kind: str, rng: np.random.Generator) -> Any:
    """A random JSON value a server accepts for a feature of this type (null, a missing value, for others)."""
    if kind == "bool":
        return bool(rng.integers(0, 2))
    if kind.startswith(("int", "uint")):
        return int(rng.integers(0, 20))
    if kind.startswith(("float", "double", "half")):
        return round(float(rng.normal()), 4)
    return None


def served_health(target: Target) -> dict[str, Any]:
    """The server's ``GET /health`` (standard library: the same certificate store as the load generator's)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{target.url}/health", timeout=30) as response:  # noqa: S310
            health: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"GET {target.url}/health answered {exc.code}: {exc.read()[:300]!r}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise SystemExit(f"GET {target.url}/health failed: {type(exc).__name__}: {exc}") from None
    if health.get("status") != "ok":
        raise SystemExit(f"{target.url} is not healthy: {json.dumps(health)[:300]}")
    return health


def load_test_url(target: Target, args: argparse.Namespace) -> int:
    """Load-test the server at ``target`` alone, with the two cases, on rows built from its ``/health``."""
    health = served_health(target)
    schema = health.get("schema")
    if not schema:
        print("its /health gives no feature types ('schema'): every value sent is null (a missing value)")
        schema = [{"name": name, "type": "unknown"} for name in health["features"]]
    batch = min(args.batch, int(health.get("max_rows", args.batch)))
    rng = np.random.default_rng(7)

    def row() -> dict[str, Any]:
        return {feature["name"]: example_value(feature["type"], rng) for feature in schema}

    cases = {"1 row": (1, [json.dumps(row()).encode() for _ in range(64)]),
             f"{batch} rows": (batch, [json.dumps({"rows": [row() for _ in range(batch)]}).encode()
                                       for _ in range(64)])}
    print(f"{target.url}: model {health.get('model')}, {len(schema)} features", flush=True)
    conn = None
    try:  # one request of each case first: a server that refuses them is no load test
        conn = Connection(target)
        for case, (n_rows, bodies) in cases.items():
            status, body = conn.request(encode_post(target, bodies[0]))
            if status != 200:
                raise SystemExit(f"POST {target.url}/predict ({case}) answered {status}: {body[:300]!r}")
            data = json.loads(body)
            got = [data["prediction"]] if n_rows == 1 else data["predictions"]
            if len(got) != n_rows or not all(math.isfinite(x) for x in got):
                raise SystemExit(f"POST {target.url}/predict ({case}): expected {n_rows} finite predictions, "
                                 f"got {body[:300]!r}")
    except OSError as exc:
        raise SystemExit(f"POST {target.url}/predict failed: {type(exc).__name__}: {exc}") from None
    finally:
        if conn is not None:
            conn.close()

    rounds = 1 if args.rounds is None else args.rounds
    runs = {case: Run() for case in cases}
    for n in range(rounds):
        for case, (_, bodies) in cases.items():
            print(f"round {n + 1}/{rounds}: {case} ...", flush=True)
            load(target, None, bodies, args.connections, args.warmup, args.duration, runs[case])

    print(f"\nPOST {target.url}/predict: model {health.get('model')}, {len(schema)} features; "
          f"{args.connections} keep-alive connections; {rounds} x {args.duration:g} s per case after "
          f"{args.warmup:g} s of warm-up\n")
    print(f"{'case':<10} {'req/s':>8} {'rows/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'client CPU':>11} {'failed':>7}")
    problems = []
    for case, (n_rows, _) in cases.items():
        run = runs[case]
        p50, p99 = percentile(run.latencies, 50) * 1000, percentile(run.latencies, 99) * 1000
        print(f"{case:<10} {run.rate:>8.0f} {run.rate * n_rows:>9.0f} {p50:>8.2f} {p99:>8.2f} "
              f"{run.client_cpu / run.seconds:>11.0%} {run.failed:>7}")
        if run.failed:
            problems.append(f"{case}: {run.failed} failed requests")
        if not run.latencies:
            problems.append(f"{case}: no request completed in the measured window")
        elif p99 > args.max_p99_ms:
            problems.append(f"{case}: p99 {p99:.1f} ms above {args.max_p99_ms:g} ms")
    return verdict(f"no failed request, p99 <= {args.max_p99_ms:g} ms in every case", problems)


# -- the run ------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per case, server and round")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each measurement")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds, alternating which server goes first (default 3; 1 with --url)")
    parser.add_argument("--connections", type=int, default=4, help="concurrent client connections (threads)")
    parser.add_argument("--batch", type=int, default=100, help="rows per request in the batch case")
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--leaves", type=int, default=31)
    parser.add_argument("--url", metavar="URL",
                        help="load-test only the caravan server at this base URL (http:// or https://); no baseline, "
                             "no local servers, rows built from its /health")
    parser.add_argument("--max-p99-ms", type=float, default=1000.0,
                        help="with --url: exit non-zero when a case's p99 latency is above this")
    parser.add_argument("--baseline-server", nargs=2, metavar=("PORT", "MODEL_FILE"),
                        help="run the hand-written baseline server (used by the benchmark itself)")
    args = parser.parse_args()
    if args.baseline_server:
        run_baseline(int(args.baseline_server[0]), args.baseline_server[1])
        return 0
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.url is not None:  # an empty --url (an unset CI variable) is an error, not the side-by-side run
        return load_test_url(Target.from_url(args.url), args)
    rounds = 3 if args.rounds is None else args.rounds

    import requests

    from caravan.registry.file import FilePointer
    from caravan.serving.model import load_model

    booster, fresh = train(args.features, args.trees, args.leaves)
    names = booster.feature_name()
    leaves = max(t["num_leaves"] for t in booster.dump_model()["tree_info"])
    print(f"model: {len(names)} features, {booster.num_trees()} trees, up to {leaves} leaves", flush=True)

    def row(i: int) -> dict[str, float]:
        return dict(zip(names, map(float, fresh[i]), strict=True))

    cases = {"1 row": (1, [json.dumps(row(i)).encode() for i in range(64)]),
             f"{args.batch} rows": (args.batch, [json.dumps({"rows": [row(i * args.batch + j) for j in range(
                 args.batch)]}).encode() for i in range(64)])}
    failed = 0
    with tempfile.TemporaryDirectory(prefix="caravan-bench-serving-") as tmp:
        artifact = publish(f"{tmp}/artifacts", booster, fresh[-16:], args.leaves)
        model_file = Path(tmp, "model.txt")
        model_file.write_text(booster.model_to_string())
        pointer = FilePointer(f"{tmp}/pointers")
        pointer.change(MODEL, lambda state: {"artifact_uri": artifact.uri, "artifact_id": artifact.id,
                                             "metrics": {}, "action": "promote", "promoted_by": "bench"})

        # The floor and each server's own path from parsed JSON to predictions, in this process, without HTTP.
        loaded = load_model(artifact)
        served = lgb_booster(model_file)
        floor: dict[str, list[tuple[str, float]]] = {}
        for case, (n_rows, bodies) in cases.items():
            rows = json.loads(bodies[0])
            rows = [rows] if n_rows == 1 else rows["rows"]
            matrix = np.array([[r[n] for n in names] for r in rows], dtype=np.float64)
            floor[case] = [
                ("booster.predict(matrix): the floor", per_call(lambda m=matrix: served.predict(m), 2)),
                ("baseline: dicts -> np.array -> predict", per_call(lambda r=rows: served.predict(
                    np.array([[x[n] for n in names] for x in r], dtype=np.float64)), 2)),
                ("caravan: LoadedModel.predict(dicts)", per_call(lambda r=rows: loaded.predict(r), 2))]

        port_c, port_b = free_port(), free_port()
        caravan_args = [sys.executable, "-m", "caravan.cli", "serve", "--model", MODEL, "--host", "127.0.0.1",
                        "--port", str(port_c), "--pointer", "file"]
        baseline_args = [sys.executable, __file__, "--baseline-server", str(port_b), str(model_file)]
        env = {"CARAVAN_POINTER": "file", "CARAVAN_POINTER_ROOT": f"{tmp}/pointers",
               "CARAVAN_ARTIFACT_ROOT": f"{tmp}/artifacts"}
        with process(caravan_args, f"http://127.0.0.1:{port_c}/metrics", env=env) as caravan_proc, \
                process(baseline_args, f"http://127.0.0.1:{port_b}/health") as baseline_proc:
            deadline = time.monotonic() + 30
            while requests.get(f"http://127.0.0.1:{port_c}/health", timeout=5).json().get("model") != artifact.id:
                if time.monotonic() > deadline:
                    raise SystemExit("caravan never loaded the model")
                time.sleep(0.05)
            servers = {"caravan": (port_c, caravan_proc.pid), "baseline (raw ASGI)": (port_b, baseline_proc.pid)}
            check(servers, cases, served, names)
            runs = {(case, server): Run() for case in cases for server in servers}
            order = list(servers)
            for n in range(rounds):
                for case, (_, bodies) in cases.items():
                    for server in order if n % 2 == 0 else order[::-1]:
                        port, pid = servers[server]
                        print(f"round {n + 1}/{rounds}: {case:<9} {server} ...", flush=True)
                        load(Target("127.0.0.1", port), pid, bodies, args.connections, args.warmup, args.duration,
                             runs[case, server])
        failed = sum(run.failed for run in runs.values())

    print(f"\nPOST /predict: {len(names)} features, {booster.num_trees()} trees x {args.leaves} leaves; one uvicorn "
          f"worker per server (h11, asyncio); OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}; "
          f"{args.connections} keep-alive connections; {rounds} rounds x {args.duration:g} s per case and "
          f"server; CPU 100% = one core\n")
    print(f"{'case':<10} {'server':<22} {'req/s':>8} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'server CPU':>11} "
          f"{'client CPU':>11} {'failed':>7}")
    for case, (n_rows, _) in cases.items():
        for server in servers:
            run = runs[case, server]
            print(f"{case:<10} {server:<22} {run.rate:>8.0f} {run.rate * n_rows:>9.0f} "
                  f"{percentile(run.latencies, 50) * 1000:>7.2f} {percentile(run.latencies, 99) * 1000:>7.2f} "
                  f"{run.server_cpu / run.seconds:>11.0%} {run.client_cpu / run.seconds:>11.0%} {run.failed:>7}")
    print(f"\nin this process, no HTTP (best of 10 slices):\n{'case':<10} {'what':<40} {'µs/call':>9} "
          f"{'predictions/s':>14}")
    for case, (n_rows, _) in cases.items():
        for what, seconds in floor[case]:
            print(f"{case:<10} {what:<40} {seconds * 1e6:>9.1f} {n_rows / seconds:>14.0f}")
    print()
    problems = []
    for case in cases:
        caravan, baseline = runs[case, "caravan"], runs[case, "baseline (raw ASGI)"]
        ratio = caravan.rate / baseline.rate if baseline.rate else math.nan
        per_round = [c / b if b else math.nan for c, b in zip(caravan.per_round, baseline.per_round, strict=True)]
        print(f"caravan/baseline throughput, {case:<9} {ratio:>6.2f}   (per round: "
              f"{', '.join(f'{r:.2f}' for r in per_round)})")
        if not ratio >= GOAL:  # NaN (nothing measured) misses too
            problems.append(f"{case}: caravan at {ratio:.2f} of the baseline")
    if failed:
        problems.append(f"{failed} failed requests (non-200 or no answer)")
    return verdict(f"caravan >= {GOAL:.0%} of the baseline's throughput in every case, no failed request",
                   problems)


def lgb_booster(model_file: Path) -> Any:
    import lightgbm as lgb

    return lgb.Booster(model_str=model_file.read_text())


def check(servers: dict[str, tuple[int, int]], cases: dict[str, tuple[int, list[bytes]]], booster: Any,
          names: list[str]) -> None:
    """Both servers give the in-process booster's predictions for the same bodies."""
    for server, (port, _) in servers.items():
        target = Target("127.0.0.1", port)
        conn = Connection(target)
        try:
            for n_rows, bodies in cases.values():
                status, body = conn.request(encode_post(target, bodies[0]))
                if status != 200:
                    raise SystemExit(f"{server} answered {status}: {body[:300]!r}")
                data = json.loads(body)
                got = [data["prediction"]] if n_rows == 1 else data["predictions"]
                rows = json.loads(bodies[0])
                rows = [rows] if n_rows == 1 else rows["rows"]
                expected = booster.predict(np.array([[r[n] for n in names] for r in rows], dtype=np.float64))
                if not np.allclose(got, expected, rtol=1e-9, atol=0):
                    raise SystemExit(f"{server} predicts differently from booster.predict")
        finally:
            conn.close()


if __name__ == "__main__":
    sys.exit(main())
