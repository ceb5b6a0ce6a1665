"""Hot reload latency under load, with every new model tried in the probe process first: from the pointer
write to the first response from the new model.

Run: ``.venv/bin/python bench/reload_latency.py [--swaps 50] [--threads 3]``

Each case starts the real server (``python -m caravan.cli serve``) and a load generator in this process
(``--threads`` threads, each a ``requests.Session`` POSTing a valid row to ``/predict`` in a loop and
timestamping every response), then moves the pointer ``--swaps`` times, each time to a model this server
has never loaded, so every swap goes through the probe (load and score in the warm disposable process,
then load here). For each swap, ``t_write`` is ``time.perf_counter()`` just before ``pointer.change(...)``,
and the reload latency is the time from ``t_write`` to the first response whose ``x-model-version`` is the
new artifact id; ``change()`` itself (read, check-and-set, history entry) is part of it.

Cases:

* ``consul``: the Consul double in its own process; the watcher waits on a blocking query the write wakes.
* ``file``: the file pointer, polled every 50 ms.
* ``consul, one crasher``: swap number ``--swaps // 2`` names a model file that aborts LightGBM (SIGABRT):
  the probe dies instead of the server, the old model keeps serving, the crash is counted
  (``caravan_model_reloads{result="crashed"}``) and the next swap is followed (after the probe restarts).
* ``consul, no isolation`` (reference, no goal): ``--no-isolation``, models loaded in the server directly.

Goals: p99 < 250 ms with isolation on, on the Consul double (``consul``); p99 < 1000 ms on ``file``; zero
failed requests (non-2xx or no answer) and every swap seen in every case; in the crash case the crash is
counted once. A case that measured nothing misses its goal. Exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from common import percentile, verdict  # first: puts the repository root on sys.path
from servers import ROW, consul_double, free_port, process, publish

# A developer's own cluster settings must not leak into the run: this script names every backend itself.
for _name in list(os.environ):
    if _name.startswith(("CARAVAN_", "CONSUL_")):
        del os.environ[_name]

import requests  # noqa: E402

from caravan.registry import ModelPointer  # noqa: E402

MODEL = "bench-reload"


@dataclass(frozen=True)
class Case:
    """One server run: a pointer backend, isolation on or off, a crashing model or not, and its goal."""

    name: str
    backend: str
    isolate: bool = True
    crash: bool = False
    goal_ms: float | None = None  # None: a reference, no goal


@dataclass
class Swap:
    """One pointer change and when the load generator first saw the new model answer."""

    artifact_id: str
    t_write: float
    crash: bool = False
    t_written: float = math.nan
    t_seen: float | None = None
    seen: threading.Event = field(default_factory=threading.Event)


@dataclass
class Result:
    """One case's run."""

    case: Case
    latencies: list[float]  # seconds, one per swap the load generator saw
    writes: list[float]  # seconds each change() call took
    missed: int
    requests: int
    non_2xx: int
    no_answer: int
    errors: list[str]
    crashed: float = 0.0  # caravan_model_reloads_total{result="crashed"} at the end
    crash_named: bool = False  # /health named the crashing model while the old one served
    crash_refused_ms: float = math.nan

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
            except Exception as exc:  # any failure is counted, never a dead thread
                counts[0] += 1
                counts[2] += 1
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            now = time.perf_counter()
            counts[0] += 1
            if response.status_code != 200:
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


def point(pointer: ModelPointer, artifact: Any) -> None:
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
                "promoted_by": "bench"}
    if pointer.change(MODEL, lambda state: document)[1] is None:
        raise SystemExit(f"the pointer refused the change to {artifact.id}")


def health(url: str) -> dict[str, Any]:
    return dict(requests.get(f"{url}/health", timeout=5).json())


def crashed_count(url: str) -> float:
    for line in requests.get(f"{url}/metrics", timeout=5).text.splitlines():
        if line.startswith('caravan_model_reloads_total{result="crashed"}'):
            return float(line.split()[-1])
    return 0.0


def measure(case: Case, pointer: ModelPointer, env: dict[str, str], models: list[Any], crash_at: int | None,
            args: argparse.Namespace) -> Result:
    """Start the server on models[0], then swap to models[1:] in turn under load."""
    point(pointer, models[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "caravan.cli", "serve", "--model", MODEL, "--host", "127.0.0.1",
               "--port", str(port), "--pointer", case.backend, *([] if case.isolate else ["--no-isolation"])]
    crash_named, refused_ms = False, math.nan
    with process(command, f"{url}/metrics", env=env):
        deadline = time.monotonic() + 60
        while (state := health(url)).get("model") != models[0].id:
            if time.monotonic() > deadline:
                raise SystemExit(f"{case.name}: the server never loaded its first model; /health: {state}")
            time.sleep(0.05)
        load = Load(url, args.threads)
        load.start()
        time.sleep(args.warmup)  # load before the first swap (not synchronization)
        swaps: list[Swap] = []
        for n, new in enumerate(models[1:], start=1):
            swap = Swap(new.id, time.perf_counter(), crash=n == crash_at)
            if swap.crash:
                before = health(url)["details"]["reloads_crashed"]
                point(pointer, new)
                deadline = time.monotonic() + args.timeout
                while (state := health(url))["details"]["reloads_crashed"] == before \
                        and time.monotonic() < deadline:
                    time.sleep(0.01)
                refused_ms = (time.perf_counter() - swap.t_write) * 1000
                crash_named = state["details"]["reloads_crashed"] > before and new.id in (state.get("reason") or "") \
                    and state.get("model") == models[n - 1].id
            else:
                load.target = swap
                point(pointer, new)
                swap.t_written = time.perf_counter()
                swap.seen.wait(args.timeout)
                load.target = None
                swaps.append(swap)
            # A random pause, so a swap does not fall at the same phase of the file watcher's 50 ms poll.
            time.sleep(random.uniform(0.05, 0.15))
        total, non_2xx, no_answer = load.finish()
        crashed = crashed_count(url)
    seen = [s.t_seen - s.t_write for s in swaps if s.t_seen is not None]
    return Result(case, seen, [s.t_written - s.t_write for s in swaps], len(swaps) - len(seen), total, non_2xx,
                  no_answer, load.errors[:5], crashed, crash_named, refused_ms)


def run_case(case: Case, tmp: str, args: argparse.Namespace) -> Result:
    """Publish the case's models (each one new to its server) and measure it on its backend."""
    root = f"{tmp}/artifacts"
    crash_at = args.swaps // 2 if case.crash else None
    models = [publish(root, seed, crash=seed == crash_at, case=case.name) for seed in range(args.swaps + 1)]
    env = {"CARAVAN_ARTIFACT_ROOT": root}
    if case.backend == "file":
        from caravan.registry.file import FilePointer

        pointers = f"{tmp}/pointers-{case.name.replace(' ', '-').replace(',', '')}"
        return measure(case, FilePointer(pointers), {**env, "CARAVAN_POINTER": "file",
                                                    "CARAVAN_POINTER_ROOT": pointers}, models, crash_at, args)
    from caravan.registry.consul import ConsulPointer

    with consul_double() as address:
        return measure(case, ConsulPointer(address=address), {**env, "CARAVAN_POINTER": "consul",
                                                             "CONSUL_HTTP_ADDR": address}, models, crash_at, args)


CASES = {
    "consul": Case("consul", "consul", goal_ms=250),
    "file": Case("file", "file", goal_ms=1000),
    "crash": Case("consul, one crasher", "consul", crash=True),
    "no-isolation": Case("consul, no isolation", "consul", isolate=False),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=50, help="pointer changes per case (each to a new model)")
    parser.add_argument("--threads", type=int, default=3, help="load generator threads")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of: {', '.join(CASES)}")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before the first swap")
    parser.add_argument("--timeout", type=float, default=10.0, help="give up on one swap after this many seconds")
    args = parser.parse_args()
    if args.swaps < 2:
        parser.error("--swaps must be at least 2")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        parser.error(f"unknown cases {unknown}; choose from {', '.join(CASES)}")

    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="caravan-bench-reload-") as tmp:
        os.environ["CARAVAN_ARTIFACT_ROOT"] = f"{tmp}/artifacts"
        for name in names:
            case = CASES[name]
            print(f"{case.name}: {args.swaps} swaps to new models under load from {args.threads} threads ...",
                  flush=True)
            results.append(run_case(case, tmp, args))

    print(f"\nreload latency: pointer write -> first response from the new model ({args.swaps} swaps per case, "
          f"each to a model the server never loaded; {args.threads} load threads)\n")
    print(f"{'case':<22} {'median ms':>10} {'p99 ms':>9} {'max ms':>9} {'change() ms':>12} {'seen':>7} "
          f"{'requests':>9} {'non-2xx':>8} {'no answer':>10} {'crashed':>8}")
    problems: list[str] = []
    for r in results:
        lat = r.ms
        median = statistics.median(lat) if lat else math.nan
        p99 = percentile(lat, 99)
        writes = statistics.median(r.writes) * 1000 if r.writes else math.nan
        print(f"{r.case.name:<22} {median:>10.1f} {p99:>9.1f} {max(lat, default=math.nan):>9.1f} "
              f"{writes:>12.1f} {len(lat):>3}/{len(lat) + r.missed:<3} "
              f"{r.requests:>9} {r.non_2xx:>8} {r.no_answer:>10} {r.crashed:>8.0f}")
        for error in r.errors:
            print(f"  {r.case.name} failure: {error}")
        if not lat:
            problems.append(f"{r.case.name}: nothing measured")
        if r.case.goal_ms is not None and not p99 < r.case.goal_ms:  # NaN (nothing measured) is not below
            problems.append(f"{r.case.name}: p99 {p99:.0f} ms, goal < {r.case.goal_ms:.0f} ms")
        if r.non_2xx or r.no_answer:
            problems.append(f"{r.case.name}: {r.non_2xx + r.no_answer} failed requests")
        if r.missed:
            problems.append(f"{r.case.name}: {r.missed} swaps never seen")
        if r.case.crash:
            print(f"  {r.case.name}: the crashing model was refused {r.crash_refused_ms:.0f} ms after its write; "
                  f"/health named it while the old model served: {'yes' if r.crash_named else 'NO'}")
            if r.crashed != 1 or not r.crash_named:
                problems.append(f"{r.case.name}: crash counted {r.crashed:.0f} times (want 1), "
                                f"named in /health: {r.crash_named}")
    if not results:
        problems.append("no case ran")
    goals = "p99 < 250 ms on consul with isolation, < 1000 ms on file; zero failed requests; every swap seen; " \
            "the crash counted once"
    return verdict(goals, problems)


if __name__ == "__main__":
    sys.exit(main())
