"""How soon a finished Nomad step is noticed: blocking queries vs fixed 1 s and 5 s polling loops.

Run: ``.venv/bin/python bench/dispatch_latency.py [--steps 20] [--parallel 5]``

Against the Nomad double (which really runs each step's command), dispatches ``--steps`` sleep
steps of known length through caravan's NomadExecutor, then the same through a variant whose
wait is a fixed polling loop: every 5 s like luigi's Kubernetes task, and every 1 s, the best a
polling client does without hammering the servers. For each step it measures
``detection`` = when the executor noticed the child job was dead minus when the allocation
finished (the task's ``FinishedAt``), and ``overhead`` = the executor's whole ``run()`` minus the
task's own running time (``FinishedAt - StartedAt``): dispatch, placement, waiting, log copying.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from common import ROOT, percentile, verdict
from nomad_double import BenchSleep, nomad_double

from caravan.executors.base import StepRequest
from caravan.executors.jobspec import load_spec
from caravan.executors.nomad import DONE, NomadExecutor


class Recording(NomadExecutor):
    """caravan's executor, noting when it sees the child job dead."""

    def __init__(self) -> None:
        super().__init__()
        self.noticed: dict[str, float] = {}

    def _follow(self, request: StepRequest, child_id: str, eval_id: str, deadline: float,
                placement_s: float) -> dict[str, Any]:
        job = super()._follow(request, child_id, eval_id, deadline, placement_s)
        self.noticed[child_id] = time.time()
        return job


class Polling(Recording):
    """The same executor waiting like luigi's Kubernetes task: look, sleep a fixed interval, look again."""

    def __init__(self, interval_s: float) -> None:
        super().__init__()
        self.interval_s = interval_s

    def _follow(self, request: StepRequest, child_id: str, eval_id: str, deadline: float,
                placement_s: float) -> dict[str, Any]:
        while True:
            job = self.api.get(f"job/{child_id}")
            if job.get("Status") == DONE:
                self.noticed[child_id] = time.time()
                return dict(job)
            time.sleep(self.interval_s)


def rfc3339(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure(executor: Recording, seconds: list[float], parallel: int) -> tuple[list[float], list[float]]:
    spec = load_spec("sleep")

    def one(i_seconds: tuple[int, float]) -> tuple[float, float]:
        i, secs = i_seconds
        task = BenchSleep(date=dt.date(2026, 11, 22), seconds=secs + i * 1e-6)  # distinct artifacts
        request = StepRequest(spec=spec, artifact=task.output(), meta=task.meta(), run_id="bench", timeout_s=120)
        start = time.time()
        result = executor.run(request)
        total = time.time() - start
        alloc = executor.api.get(f"job/{result.job_id}/allocations")[0]
        state = alloc["TaskStates"][spec.task]
        finished, started = rfc3339(state["FinishedAt"]), rfc3339(state["StartedAt"])
        return executor.noticed[result.job_id] - finished, total - (finished - started)

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, enumerate(seconds)))
    return [r[0] for r in results], [r[1] for r in results]


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=5)
    args = parser.parse_args()
    seconds = [0.5 + (i % 5) * 0.3 for i in range(args.steps)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(CARAVAN_ARTIFACT_ROOT=f"{tmp}/artifacts", CARAVAN_JOBSPEC_DIR=str(ROOT / "tests/steps/nomad"),
                          PYTHONPATH=str(ROOT))
        # The double stops (and kills its step processes) however the measurement ends.
        with nomad_double() as double:
            os.environ["NOMAD_ADDR"] = double.address
            double.load_specs(ROOT / "tests/steps/nomad")
            strategies = (("caravan (blocking queries)", Recording), ("fixed 1 s polling", lambda: Polling(1.0)),
                          ("fixed 5 s polling", lambda: Polling(5.0)))
            for n, (name, make) in enumerate(strategies):
                os.environ["CARAVAN_ARTIFACT_ROOT"] = f"{tmp}/run{n}"
                detection, overhead = measure(make(), seconds, args.parallel)
                rows.append((name, detection, overhead))
    print(f"\n{args.steps} sleep steps ({min(seconds)}-{max(seconds)} s), {args.parallel} at a time, Nomad double\n")
    print(f"{'wait strategy':<28} {'detect median':>14} {'detect p95':>11} "
          f"{'overhead median':>16} {'overhead p95':>13}")
    for name, detection, overhead in rows:
        print(f"{name:<28} {statistics.median(detection) * 1000:>11.1f} ms {percentile(detection, 95) * 1000:>8.1f} ms "
              f"{statistics.median(overhead) * 1000:>13.1f} ms {percentile(overhead, 95) * 1000:>10.1f} ms")
    ours, best_polling = rows[0], rows[1]
    problems = []
    if not percentile(ours[1], 95) < statistics.median(best_polling[1]):
        problems.append(f"blocking-query detection p95 {percentile(ours[1], 95) * 1000:.0f} ms is not below the "
                        f"1 s poll's median {statistics.median(best_polling[1]) * 1000:.0f} ms")
    return verdict("caravan notices a finished step sooner (p95) than a 1 s polling loop does on median", problems)


if __name__ == "__main__":
    sys.exit(main())
