"""Hot reload latency under load: from the pointer write to the first response from the new model.

Run: ``.venv/bin/python bench/reload_latency.py [--swaps 50] [--threads 3] [--models 4]``

For each pointer backend, side by side in one run (Consul, through the Consul double in its own
process, and the file backend), starts the real server (``python -m caravan.cli serve``) and a
load generator in this process (``--threads`` threads, each a ``requests.Session`` POSTing a
valid row to ``/predict`` in a loop and timestamping every response). Then it moves the pointer
``--swaps`` times, round-robin over ``--models`` pre-published small LightGBM models. For each
swap, ``t_write`` is ``time.perf_counter()`` just before ``pointer.change(...)`` is called, and the
reload latency is the time from ``t_write`` to the first response whose ``x-model-version`` is
the new artifact id. ``change()`` itself (read, check-and-set, history entry: four requests on
Consul, flock + fsync'd renames on files) is part of that latency; its own median is shown too.

The file backend's watcher polls the pointer file every 50 ms; the Consul one waits on a
blocking query, which the write wakes up.

Goal: p99 reload latency under 1 s on both backends, and zero failed requests (non-2xx or no
answer) while the model changes under load. The script exits non-zero if any request failed
or any swap was never observed. With 50 swaps, p99 (nearest rank) is the largest value.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# A developer's own cluster settings must not leak into the run: this script names every backend itself.
for _name in list(os.environ):
    if _name.startswith(("CARAVAN_", "CONSUL_")):
        del os.environ[_name]

import requests  # noqa: E402

from caravan import Artifact  # noqa: E402
from caravan.registry import ModelPointer  # noqa: E402
from tests.integration.test_serving import ROW, publish_model  # noqa: E402
from tests.servers import free_port, process  # noqa: E402

MODEL = "bench-reload"


@dataclass
class Swap:
    """One pointer change and when the load generator first saw the new model answer."""

    artifact_id: str
    t_write: float
    t_written: float = math.nan
    t_seen: float | None = None
    seen: threading.Event = field(default_factory=threading.Event)


@dataclass
class Result:
    """One backend's run."""

    backend: str
    latencies: list[float]  # seconds, one per swap the load generator saw
    writes: list[float]  # seconds each change() call took
    missed: int
    requests: int
    non_2xx: int
    no_answer: int
    errors: list[str]

    @property
    def ms(self) -> list[float]:
        return [x * 1000 for x in self.latencies]


@dataclass
class Load:
    """The load generator: threads POSTing one row in a loop, noticing the first answer of each new model."""

    url: str
    threads: int
    stop: threading.Event = field(default_factory=threading.Event)
    target: Swap | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    counts: list[list[int]] = field(default_factory=list)  # per thread: [requests, non-2xx, no answer]
    errors: list[str] = field(default_factory=list)
    workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for n in range(self.threads):
            self.counts.append([0, 0, 0])
            self.workers.append(threading.Thread(target=self._run, args=(self.counts[n],), daemon=True))
        for worker in self.workers:
            worker.start()

    def _run(self, counts: list[int]) -> None:
        session = requests.Session()
        while not self.stop.is_set():
            try:
                response = session.post(f"{self.url}/predict", json=ROW, timeout=10)
            except requests.RequestException as exc:
                counts[0] += 1
                counts[2] += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            now = time.perf_counter()
            counts[0] += 1
            if not 200 <= response.status_code < 300:
                counts[1] += 1
                self.errors.append(f"{response.status_code}: {response.text[:200]}")
                continue
            target = self.target
            if target is not None and target.t_seen is None and now >= target.t_write \
                    and response.headers.get("x-model-version") == target.artifact_id:
                with self.lock:
                    if target.t_seen is None:
                        target.t_seen = now
                        target.seen.set()
        session.close()

    def finish(self) -> tuple[int, int, int]:
        self.stop.set()
        for worker in self.workers:
            worker.join(timeout=30)
        return sum(c[0] for c in self.counts), sum(c[1] for c in self.counts), sum(c[2] for c in self.counts)


def consul_double() -> None:
    """Child process mode: run the Consul double until stdin closes (the parent is done or gone)."""
    from tests.doubles.consul import ConsulDouble

    double = ConsulDouble(lock_delay_s=0)
    print(double.start(), flush=True)
    sys.stdin.read()
    double.stop()


def point(pointer: ModelPointer, artifact: Artifact) -> None:
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
                "promoted_by": "bench"}
    if pointer.change(MODEL, lambda state: document)[1] is None:
        raise SystemExit(f"the pointer refused the change to {artifact.id}")


def measure(backend: str, pointer: ModelPointer, env: dict[str, str], models: list[Artifact],
            args: argparse.Namespace) -> Result:
    point(pointer, models[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "caravan.cli", "serve", "--model", MODEL, "--host", "127.0.0.1",
               "--port", str(port), "--pointer", backend]
    with process(command, f"{url}/metrics", env=env, cwd=ROOT):
        deadline = time.monotonic() + 30
        while requests.get(f"{url}/health", timeout=5).json().get("model") != models[0].id:
            if time.monotonic() > deadline:
                raise SystemExit(f"{backend}: the server never loaded its first model")
            time.sleep(0.05)
        load = Load(url, args.threads)
        load.start()
        time.sleep(args.warmup)
        swaps: list[Swap] = []
        for n in range(1, args.swaps + 1):
            new = models[n % len(models)]
            swap = Swap(new.id, time.perf_counter())
            load.target = swap
            point(pointer, new)
            swap.t_written = time.perf_counter()
            swap.seen.wait(args.timeout)
            load.target = None
            swaps.append(swap)
            # A random pause, so a swap does not fall at the same phase of the file watcher's 50 ms poll.
            time.sleep(random.uniform(0.05, 0.15))
        total, non_2xx, no_answer = load.finish()
    seen = [s.t_seen - s.t_write for s in swaps if s.t_seen is not None]
    return Result(backend, seen, [s.t_written - s.t_write for s in swaps], len(swaps) - len(seen), total, non_2xx,
                  no_answer, load.errors[:5])


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (with 50 values, p99 is the largest)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)] if ordered else math.nan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=50, help="pointer changes per backend")
    parser.add_argument("--threads", type=int, default=3, help="load generator threads")
    parser.add_argument("--models", type=int, default=4, help="pre-published models to alternate between (>= 3)")
    parser.add_argument("--backends", default="consul,file", help="comma-separated: consul, file")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the first swap")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up on one swap after this many seconds")
    parser.add_argument("--consul-double", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consul_double:
        consul_double()
        return 0
    if args.models < 3:
        parser.error("--models must be at least 3 (a swap back to the previous model would be ambiguous)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="caravan-bench-reload-") as tmp:
        os.environ["CARAVAN_ARTIFACT_ROOT"] = f"{tmp}/artifacts"
        print(f"publishing {args.models} models ...", flush=True)
        models = [publish_model(f"{tmp}/artifacts", seed) for seed in range(1, args.models + 1)]
        base_env = {"CARAVAN_ARTIFACT_ROOT": f"{tmp}/artifacts"}
        for backend in backends:
            print(f"{backend}: {args.swaps} swaps under load from {args.threads} threads ...", flush=True)
            if backend == "file":
                from caravan.registry.file import FilePointer

                root = f"{tmp}/pointers"
                env = {**base_env, "CARAVAN_POINTER": "file", "CARAVAN_POINTER_ROOT": root}
                results.append(measure(backend, FilePointer(root), env, models, args))
            elif backend == "consul":
                from caravan.registry.consul import ConsulPointer

                # The double runs in its own process, so the load generator's threads do not hold up its answers.
                double = subprocess.Popen([sys.executable, __file__, "--consul-double"], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, cwd=ROOT)
                try:
                    assert double.stdout is not None and double.stdin is not None
                    address = double.stdout.readline().strip()
                    if not address.startswith("http://127.0.0.1:"):
                        raise SystemExit(f"the Consul double did not start (it said {address!r})")
                    env = {**base_env, "CARAVAN_POINTER": "consul", "CONSUL_HTTP_ADDR": address}
                    results.append(measure(backend, ConsulPointer(address=address), env, models, args))
                finally:
                    if double.stdin is not None:
                        double.stdin.close()
                    try:
                        double.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        double.kill()
                        double.wait()
            else:
                parser.error(f"unknown backend {backend!r}")

    print(f"\nreload latency: pointer write -> first response from the new model ({args.swaps} swaps per backend, "
          f"{args.threads} load threads)\n")
    print(f"{'backend':<22} {'median ms':>10} {'p99 ms':>9} {'max ms':>9} {'change() ms':>12} {'seen':>6} "
          f"{'requests':>9} {'non-2xx':>8} {'no answer':>10}")
    failed = False
    for r in results:
        lat = r.ms
        label = "consul (double)" if r.backend == "consul" else "file (50 ms poll)"
        median = statistics.median(lat) if lat else math.nan
        print(f"{label:<22} {median:>10.1f} {percentile(lat, 99):>9.1f} {max(lat, default=math.nan):>9.1f} "
              f"{statistics.median(r.writes) * 1000:>12.1f} {len(lat):>3}/{len(lat) + r.missed:<2} "
              f"{r.requests:>9} {r.non_2xx:>8} {r.no_answer:>10}")
        failed |= bool(r.non_2xx or r.no_answer or r.missed)
        for error in r.errors:
            print(f"  {r.backend} failure: {error}")
    met = all(r.ms and percentile(r.ms, 99) < 1000 for r in results)
    print(f"\ngoal (p99 < 1000 ms on every backend, zero failed requests): "
          f"{'met' if met and not failed else 'NOT met'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
