"""How soon a finished Nomad step is noticed: blocking queries vs a fixed 5 s polling loop.

Run: ``.venv/bin/python bench/dispatch_latency.py [--steps 20] [--parallel 5]``

Against the Nomad double (which really runs each step's command), dispatches ``--steps`` sleep
steps of known length through caravan's NomadExecutor, then the same through a variant whose
wait is a fixed 5 s polling loop like luigi's Kubernetes task. For each step it measures
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
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from caravan.executors.base import StepRequest  # noqa: E402
from caravan.executors.jobspec import load_spec  # noqa: E402
from caravan.executors.nomad import DONE, NomadExecutor  # noqa: E402
from tests.doubles.nomad import NomadDouble  # noqa: E402
from tests.steps.tasks import Sleep  # noqa: E402


class Recording(NomadExecutor):
    """caravan's executor, noting when it sees the child job dead."""

    def __init__(self) -> None:
        super().__init__()
        self.noticed: dict[str, float] = {}

    def _wait_dead(self, child_id: str, deadline: float) -> dict[str, Any]:
        job = super()._wait_dead(child_id, deadline)
        self.noticed[child_id] = time.time()
        return job


class Polling(Recording):
    """The same executor waiting like luigi's Kubernetes task: look, sleep 5 s, look again."""

    def _check_placement(self, child_id: str, eval_id: str, deadline: float) -> None:
        return None

    def _wait_dead(self, child_id: str, deadline: float) -> dict[str, Any]:
        while True:
            job = self._get("job", child_id).json()
            if job.get("Status") == DONE:
                self.noticed[child_id] = time.time()
                return dict(job)
            time.sleep(5)


def rfc3339(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def measure(executor: Recording, seconds: list[float], parallel: int) -> tuple[list[float], list[float]]:
    spec = load_spec("sleep")

    def one(i_seconds: tuple[int, float]) -> tuple[float, float]:
        i, secs = i_seconds
        task = Sleep(date=dt.date(2026, 11, 22), seconds=secs + i * 1e-6)  # distinct artifacts
        request = StepRequest(spec=spec, artifact=task.output(), meta=task.meta(), run_id="bench", timeout_s=120)
        start = time.time()
        result = executor.run(request)
        total = time.time() - start
        alloc = executor._get("job", result.job_id, "allocations").json()[0]
        state = alloc["TaskStates"][spec.task]
        finished, started = rfc3339(state["FinishedAt"]), rfc3339(state["StartedAt"])
        return executor.noticed[result.job_id] - finished, total - (finished - started)

    with ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, enumerate(seconds)))
    return [r[0] for r in results], [r[1] for r in results]


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=5)
    args = parser.parse_args()
    seconds = [0.5 + (i % 5) * 0.3 for i in range(args.steps)]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(CARAVAN_ARTIFACT_ROOT=f"{tmp}/artifacts", CARAVAN_JOBSPEC_DIR=str(ROOT / "tests/steps/nomad"),
                          PYTHONPATH=str(ROOT))
        double = NomadDouble(env={"PYTHONPATH": str(ROOT)})
        os.environ["NOMAD_ADDR"] = double.start()
        double.load_specs(ROOT / "tests/steps/nomad")
        rows = []
        for name, executor in (("caravan (blocking queries)", Recording()), ("fixed 5 s polling", Polling())):
            os.environ["CARAVAN_ARTIFACT_ROOT"] = f"{tmp}/{name[:7]}"
            detection, overhead = measure(executor, seconds, args.parallel)
            rows.append((name, detection, overhead))
        double.stop()
    print(f"\n{args.steps} sleep steps ({min(seconds)}-{max(seconds)} s), {args.parallel} at a time, Nomad double\n")
    print(f"{'wait strategy':<28} {'detect median':>14} {'detect p95':>11} "
          f"{'overhead median':>16} {'overhead p95':>13}")
    for name, detection, overhead in rows:
        print(f"{name:<28} {statistics.median(detection) * 1000:>11.1f} ms {p95(detection) * 1000:>8.1f} ms "
              f"{statistics.median(overhead) * 1000:>13.1f} ms {p95(overhead) * 1000:>10.1f} ms")


if __name__ == "__main__":
    main()
