"""The event log's cost and its losses: ``caravan serve`` with logging on against off, SIGTERM, a store outage.

Run: ``.venv/bin/python bench/event_log.py [--duration 5] [--rounds 3] [--outage-s 30]``

1. **Throughput.** The model of ``bench/serving.py`` (20 numeric features, 100 trees of 31 leaves) served by two
   ``caravan serve`` processes side by side, one logging to a local artifact root (default flush settings),
   one with ``--no-event-log``; the load generator of ``bench/serving.py`` (keep-alive connections, pre-encoded
   requests), 1-row and ``--batch``-row bodies, ``--rounds`` rounds with the order alternating.
   Goal: logging on >= 90% of off's throughput in both cases.
2. **SIGTERM.** A logging server (``--log-flush-s 60``: everything still buffered) under load from client
   threads that give every request its own ``x-request-id``; SIGTERM after 2 s. Events lost = request ids
   answered 200 that are not in the log afterwards. Goal 0.
3. **Store outage.** The log on S3 (moto's server) behind a TCP proxy; load for 5 s, the proxy off for
   ``--outage-s`` seconds (connections refused, open ones cut), back on for 5 s; then wait until the server
   says everything is shipped, SIGTERM, and read the log from S3. Goals: 0 lost; p50 latency during the
   outage at most 1.5x (+1 ms) the p50 before (requests never wait on the store).

4. **Monitor.** One day of ``--monitor-predictions`` logged predictions (default 1,000,000: 100,000 requests of
   10 rows, 20 features, rewards on ~5% of rows) written through ``caravan.events.EventLog`` by a child, then
   ``caravan monitor`` over that day in another child (``--no-triggers``): wall time of the command and its peak
   RSS (``ru_maxrss`` from ``os.wait4``; the writer's memory does not leak in). Goal: under 60 s.
   ``--only-monitor`` runs this part alone.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

from common import percentile, verdict  # first: puts the repository root on sys.path
from proxy import Proxy
from servers import free_port, process
from serving import Run, Target, load, publish, train  # its import also sets OMP_NUM_THREADS=1

MODEL = "bench-events"
GOAL_RATIO = 0.90
MONITOR_MODEL = "bench-monitor"
MONITOR_DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
MONITOR_GOAL_S = 60.0


class IdLoad:
    """Client threads sending 1-row requests, each with its own x-request-id; what was answered, and how fast."""

    def __init__(self, port: int, body: bytes, threads: int = 3) -> None:
        self.port, self.body, self.threads = port, body, threads
        self.answered: list[str] = []
        self.failed = 0
        self.latencies: list[tuple[float, float]] = []  # (sent at, seconds)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def __enter__(self) -> IdLoad:
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def _run(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n, errors = 0, 0
        while not self._stop.is_set() and errors < 3:
            request_id = f"t{index}-{n}"
            n += 1
            sent = time.perf_counter()
            try:
                conn.request("POST", "/predict", self.body, {"content-type": "application/json",
                                                             "x-request-id": request_id})
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                continue
            errors = 0
            with self._lock:
                if response.status == 200:
                    self.answered.append(request_id)
                    self.latencies.append((sent, time.perf_counter() - sent))
                else:
                    self.failed += 1
        conn.close()

    def between(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [s for at, s in self.latencies if start <= at < end]


def health(port: int) -> dict[str, Any]:
    import requests

    return dict(requests.get(f"http://127.0.0.1:{port}/health", timeout=10).json())


def wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.1)


def serve_args(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "caravan.cli", "serve", "--model", MODEL, "--host", "127.0.0.1", "--port",
            str(port), "--pointer", "file", "--no-isolation", *extra]


@contextlib.contextmanager
def server(port: int, env: dict[str, str], *extra: str) -> Iterator[subprocess.Popen[bytes]]:
    with process(serve_args(port, *extra), f"http://127.0.0.1:{port}/metrics", env=env) as proc:
        wait_for(lambda: health(port).get("model") is not None, 60, "the server never loaded the model")
        yield proc


def logged_ids(root: str, env: dict[str, str]) -> set[str]:
    """Every prediction request id in the log under ``root`` (all days), read in a fresh process's settings."""
    os.environ.update(env)
    from caravan.events.log import events_prefix
    from caravan.storage import clear_store_cache, open_store

    clear_store_cache()
    store = open_store(root)
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids: set[str] = set()
    for key in store.list_keys(events_prefix(MODEL, "predictions")):
        if key.endswith(".parquet"):
            ids.update(pq.read_table(pa.BufferReader(store.read(key)), columns=["request_id"])
                       .column("request_id").to_pylist())
    return ids


def sigterm_run(port: int, env: dict[str, str], root: str, body: bytes, spool: str) -> tuple[int, int]:
    """(answered, lost) when SIGTERM arrives under load with everything still buffered."""
    with server(port, env, "--log-flush-s", "60", "--log-flush-rows", "1000000", "--log-spool-dir", spool) as proc, \
            IdLoad(port, body) as ids:
        time.sleep(2.0)  # load for a while, then the signal, with the load still running
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    answered = set(ids.answered)
    return len(answered), len(answered - logged_ids(root, env))


def outage_run(port: int, env: dict[str, str], body: bytes, outage_s: float, spool: str) -> dict[str, Any]:
    """Load through an S3 outage of ``outage_s`` seconds; answered, lost, latencies, spool peak."""
    import boto3

    moto_port = free_port()
    moto_url = f"http://127.0.0.1:{moto_port}"
    keys = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    with process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
                 f"{moto_url}/moto-api/"):
        boto3.client("s3", endpoint_url=moto_url, **{k.lower(): v for k, v in keys.items()
                                                    if k != "AWS_DEFAULT_REGION"},
                     region_name="us-east-1").create_bucket(Bucket="bench-events")
        proxy = Proxy(("127.0.0.1", moto_port), free_port())
        proxy.up()
        root = "s3://bench-events/log"
        server_env = {**env, **keys, "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{proxy.port}"}
        peak = {"spool_bytes": 0, "spool_files": 0, "dropped": 0}
        try:
            with server(port, server_env, "--log-root", root, "--log-flush-s", "1", "--log-spool-dir", spool) as proc:
                with IdLoad(port, body) as ids:
                    start = time.perf_counter()
                    time.sleep(5.0)
                    proxy.down()
                    down_at = time.perf_counter()
                    while time.perf_counter() - down_at < outage_s:
                        state = health(port)["event_log"]
                        for key in ("spool_bytes", "spool_files"):
                            peak[key] = max(peak[key], state[key])
                        time.sleep(0.5)
                    proxy.up()
                    up_at = time.perf_counter()
                    time.sleep(5.0)
                    end = time.perf_counter()
                wait_for(lambda: (lambda s: s["shipped_rows"]["predictions"] + s["dropped_rows"]["predictions"]
                                  == s["logged_rows"]["predictions"])(health(port)["event_log"]), 180,
                         "the spool never emptied after the outage")
                state = health(port)["event_log"]
                peak["dropped"] = state["dropped_rows"]["predictions"]
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=60)
        finally:
            proxy.down()
        answered = set(ids.answered)
        lost = len(answered - logged_ids(root, {**keys, "AWS_ENDPOINT_URL_S3": moto_url}))
    return {"answered": len(answered), "lost": lost, "failed": ids.failed, **peak,
            "before": ids.between(start, down_at), "outage": ids.between(down_at, up_at),
            "after": ids.between(up_at, end)}


def _write_monitored_day(tmp: str, predictions: int) -> None:
    """In a child: a model whose training statistics cover 20 features, and one day of its logged predictions."""
    import numpy as np
    import pyarrow as pa

    from caravan.addressing import Address
    from caravan.artifacts import Artifact
    from caravan.events import EventLog
    from caravan.ml.stats import column_stats
    from caravan.registry.file import FilePointer
    from caravan.storage import open_store

    root, rows_per_request, names = f"{tmp}/artifacts", 10, [f"x{i}" for i in range(20)]
    store = open_store(root)
    rng = np.random.default_rng(7)

    def artifact(family: str, upstream: object, files: dict[str, object]) -> Artifact:
        made = Artifact(store, Address(family=family, params={"name": "bench"}, upstream=upstream))
        with made.writer() as writer:
            for name, value in files.items():
                writer.write_json(name, value)
        return Artifact(store, made.id)

    training = pa.table({name: rng.normal(size=50_000) for name in names})
    dataset = artifact("PrepareDataset", None, {"stats.json": column_stats(training)})
    model = artifact("TrainRanker", {"dataset": dataset.id}, {"features.json": {"label": "clicked", "features": [
        {"name": name, "type": "double"} for name in names]}})
    FilePointer(f"{tmp}/pointers").change(MONITOR_MODEL, lambda state: {
        "artifact_uri": model.uri, "artifact_id": model.id, "metrics": {"gate_auc": 0.7}, "action": "promote",
        "promoted_by": "bench"})
    requests = predictions // rows_per_request
    start = MONITOR_DAY.timestamp()
    stamps = start + np.sort(rng.uniform(0, 86_400 - 3_600, requests))  # feedback of the last hour stays in the day
    chunk = 10_000  # requests per writer: each writer's buffer is written (and its day closed) on close
    for first in range(0, requests, chunk):
        log = EventLog(store, MONITOR_MODEL, f"{tmp}/spool-monitor", flush_rows=10**9, writer_id=f"bench-{first}",
                       clock=lambda: start + 86_400)
        for i in range(first, min(first + chunk, requests)):
            at = float(stamps[i])
            features = rng.normal(size=(rows_per_request, len(names)))
            features[:, 3] += 0.5  # one feature drifted
            scores = rng.uniform(0, 0.1, rows_per_request)
            log.prediction(f"r{i}", unit_id=str(i % 5000), arm=None, artifact_id=model.id, names=names,
                           features=features, scores=scores, ts=at)
            for row in np.flatnonzero(rng.random(rows_per_request) < scores):
                log.feedback(f"r{i}", 1.0, row=int(row), ts=at + 120)
        log.close()  # never started: flushes and ships in this thread


def monitor_run(tmp: str, predictions: int) -> dict[str, Any]:
    """Write one day of ``predictions`` in a child, then time ``caravan monitor`` over it in another one."""
    subprocess.run([sys.executable, __file__, "--monitor-write", tmp, str(predictions)], check=True)
    env = {**os.environ, "CARAVAN_POINTER": "file", "CARAVAN_POINTER_ROOT": f"{tmp}/pointers",
           "CARAVAN_ARTIFACT_ROOT": f"{tmp}/artifacts"}
    end = MONITOR_DAY + dt.timedelta(days=1)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.monotonic()
        child = subprocess.Popen([sys.executable, "-m", "caravan.cli", "monitor", MONITOR_MODEL, "--window", "24h",
                                  "--at", end.isoformat(), "--no-triggers"], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # reaped here, for the child's own peak RSS
        seconds = time.monotonic() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "exit": child.returncode,
                "out": out.read(), "err": err.read()}


def main() -> int:
    if sys.argv[1:2] == ["--monitor-write"]:
        _write_monitored_day(sys.argv[2], int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per case, server and round")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--outage-s", type=float, default=30.0)
    parser.add_argument("--monitor-predictions", type=int, default=1_000_000,
                        help="logged predictions in the day the monitor reads (default 1,000,000)")
    parser.add_argument("--only-monitor", action="store_true", help="run the monitor timing (part 4) alone")
    args = parser.parse_args()
    if args.only_monitor:
        problems = monitor_part(args.monitor_predictions)
        print(f"\n(run at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)")
        return verdict(f"caravan monitor on one day of {args.monitor_predictions:,} predictions in under "
                       f"{MONITOR_GOAL_S:g} s", problems)

    from caravan.registry.file import FilePointer

    booster, fresh = train(20, 100, 31)
    names = booster.feature_name()

    def row(i: int) -> dict[str, float]:
        return dict(zip(names, map(float, fresh[i % len(fresh)]), strict=True))

    cases = {"1 row": (1, [json.dumps(row(i)).encode() for i in range(64)]),
             f"{args.batch} rows": (args.batch, [json.dumps({"rows": [row(i * args.batch + j) for j in range(
                 args.batch)]}).encode() for i in range(64)])}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="caravan-bench-events-") as tmp:
        root = f"{tmp}/artifacts"
        artifact = publish(root, booster, fresh[-16:], 31)
        FilePointer(f"{tmp}/pointers").change(MODEL, lambda state: {
            "artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
            "promoted_by": "bench"})
        env = {"CARAVAN_POINTER": "file", "CARAVAN_POINTER_ROOT": f"{tmp}/pointers", "CARAVAN_ARTIFACT_ROOT": root}

        # 1. throughput, logging on and off side by side
        port_on, port_off = free_port(), free_port()
        runs = {(case, name): Run() for case in cases for name in ("on", "off")}
        with server(port_on, env, "--log-spool-dir", f"{tmp}/spool-on") as on, \
                server(port_off, env, "--no-event-log") as off:
            servers = {"on": (port_on, on.pid), "off": (port_off, off.pid)}
            for n in range(args.rounds):
                for case, (_, bodies) in cases.items():
                    for name in ("on", "off") if n % 2 == 0 else ("off", "on"):
                        port, pid = servers[name]
                        print(f"round {n + 1}/{args.rounds}: {case:<9} logging {name} ...", flush=True)
                        load(Target("127.0.0.1", port), pid, bodies, args.connections, args.warmup, args.duration,
                             runs[case, name])
            logged = health(port_on)["event_log"]
        print(f"\nPOST /predict, {len(names)} features, 100 trees; {args.connections} connections; {args.rounds} "
              f"rounds x {args.duration:g} s per case and server; logging on: default flush (10,000 rows / 10 s)\n")
        print(f"{'case':<10} {'logging':<8} {'req/s':>8} {'rows/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'server CPU':>11} {'failed':>7}")
        for case, (n_rows, _) in cases.items():
            for name in ("on", "off"):
                run = runs[case, name]
                print(f"{case:<10} {name:<8} {run.rate:>8.0f} {run.rate * n_rows:>9.0f} "
                      f"{percentile(run.latencies, 50) * 1000:>7.2f} {percentile(run.latencies, 99) * 1000:>7.2f} "
                      f"{run.server_cpu / run.seconds:>11.0%} {run.failed:>7}")
        print(f"(the logging server logged {logged['logged_rows']['predictions']:,} prediction rows, dropped "
              f"{logged['dropped_rows']['predictions']})\n")
        for case in cases:
            on_run, off_run = runs[case, "on"], runs[case, "off"]
            ratio = on_run.rate / off_run.rate if off_run.rate else math.nan
            per_round = [a / b if b else math.nan for a, b in zip(on_run.per_round, off_run.per_round, strict=True)]
            print(f"on/off throughput, {case:<9} {ratio:>6.2f}   (per round: "
                  f"{', '.join(f'{r:.2f}' for r in per_round)})")
            if not ratio >= GOAL_RATIO:
                problems.append(f"{case}: logging on at {ratio:.2f} of off")
        failed = sum(run.failed for run in runs.values())
        if failed:
            problems.append(f"{failed} failed requests in the throughput runs")

        # 2. SIGTERM under load
        body = cases["1 row"][1][0]
        answered, lost = sigterm_run(free_port(), env, root, body, f"{tmp}/spool-term")
        print(f"\nSIGTERM under load: {answered:,} requests answered, {lost} of them missing from the log")
        if lost or not answered:
            problems.append(f"SIGTERM: {lost} of {answered} answered requests not logged")

        # 3. store outage
        print(f"\nS3 outage of {args.outage_s:g} s under load ...", flush=True)
        outage = outage_run(free_port(), env, body, args.outage_s, f"{tmp}/spool-outage")
        print(f"S3 outage of {args.outage_s:g} s: {outage['answered']:,} requests answered, {outage['lost']} missing "
              f"from the log, {outage['dropped']} rows dropped, {outage['failed']} failed requests; spool peak "
              f"{outage['spool_files']} files, {outage['spool_bytes'] / 1e6:.2f} MB")
        print(f"{'phase':<8} {'requests':>9} {'p50 ms':>7} {'p99 ms':>7}")
        for phase in ("before", "outage", "after"):
            values = outage[phase]
            print(f"{phase:<8} {len(values):>9} {percentile(values, 50) * 1000:>7.2f} "
                  f"{percentile(values, 99) * 1000:>7.2f}")
        if outage["lost"] or not outage["answered"]:
            problems.append(f"outage: {outage['lost']} of {outage['answered']} answered requests not logged")
        if outage["failed"]:
            problems.append(f"outage: {outage['failed']} failed requests")
        p50_before, p50_outage = percentile(outage["before"], 50), percentile(outage["outage"], 50)
        if not p50_outage <= 1.5 * p50_before + 0.001:
            problems.append(f"outage: p50 {p50_outage * 1000:.2f} ms against {p50_before * 1000:.2f} ms before")

    # 4. the monitor on one logged day
    problems += monitor_part(args.monitor_predictions)
    print(f"\n(run at {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)")
    return verdict(f"logging on >= {GOAL_RATIO:.0%} of off's throughput in every case; 0 events lost under SIGTERM "
                   f"and a store outage; requests not slowed by the outage; the monitor on one day of "
                   f"{args.monitor_predictions:,} predictions in under {MONITOR_GOAL_S:g} s", problems)


def monitor_part(predictions: int) -> list[str]:
    """Part 4: print the monitor's time and peak RSS on one logged day; what missed the goal."""
    print(f"\nmonitor: writing one day of {predictions:,} logged predictions ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="caravan-bench-monitor-") as tmp:
        run = monitor_run(tmp, predictions)
    if run["exit"] != 0:
        print(run["out"], run["err"], sep="\n")
        return [f"monitor: caravan monitor exited {run['exit']}: {run['err'].strip()[-300:]}"]
    print(run["out"])
    print(f"caravan monitor, one day of {predictions:,} predictions (20 features): {run['seconds']:.1f} s, "
          f"peak RSS {run['peak_rss'] / 1e6:.0f} MB (goal < {MONITOR_GOAL_S:g} s)")
    return [] if run["seconds"] < MONITOR_GOAL_S else [f"monitor: {run['seconds']:.1f} s on {predictions:,} "
                                                      "predictions"]


if __name__ == "__main__":
    sys.exit(main())
