"""Steps through a Nomad that misbehaves: leader elections, a full node, a job GC in the middle.

Run: ``.venv/bin/python bench/chaos.py [--steps 20] [--seconds 1.0] [--windows 3] [--window-s 3]``

Against the Nomad double (which really runs each step's command), ``--steps`` sleep steps are handed to
caravan's NomadExecutor at once, one worker thread each, on a single node with room for two steps at a
time: the others queue (Nomad blocks their evals until room frees). The same run is made twice:

- fault-free;
- with ``--windows`` leader-loss windows of ``--window-s`` seconds (500 ``No cluster leader``; every other
  one also drops connections) spread over the run, and one job GC in the middle.

Per run it prints the steps completed, the step processes the double started, the stops caravan sent,
duplicate runs (processes beyond one per step), and the median overhead per step (the executor's whole
``run()`` minus the step's own running time; queueing for the node is part of it in both runs).
Goal: all steps completed, one process per step, no stop, no duplicate, and a median overhead within 2x
the fault-free one plus the total outage time. The exit status says whether it was met.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from common import ROOT, verdict
from nomad_double import BenchSleep, nomad_double

from caravan.executors.base import StepRequest
from caravan.executors.jobspec import load_spec
from caravan.executors.nomad import NomadExecutor

SPECS = ROOT / "tests/steps/nomad"
# The sleep step asks cpu 200 / memory 256: this node has room for two at a time.
NODE = {"cpu": 500, "memory": 600, "datacenter": "dc1", "class": "", "attributes": {}, "meta": {}}


def rfc3339(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Timing(NomadExecutor):
    """caravan's executor, noting how long the step's task itself ran (read as soon as the child is dead,
    before the GC can take it; None when the GC was quicker)."""

    ran_s: float | None = None

    def _finish(self, request: StepRequest, child_id: str, dead_job: dict[str, Any] | None) -> Any:
        allocs = self.api.retry("time the step", lambda: self.api.get(f"job/{child_id}/allocations"),
                                deadline=time.monotonic() + 60)
        states = [a["TaskStates"][request.spec.task] for a in allocs if (a.get("TaskStates") or {}).get(
            request.spec.task, {}).get("FinishedAt", "0001").startswith("2")]
        if states:
            self.ran_s = rfc3339(states[-1]["FinishedAt"]) - rfc3339(states[-1]["StartedAt"])
        return super()._finish(request, child_id, dead_job)


def run_steps(label: str, steps: int, seconds: float, faults: list[tuple[float, str, float]], gc_at: float | None,
              workdir: str) -> dict[str, Any]:
    """One run of ``steps`` sleep steps; ``faults`` are (start offset s, kind, duration s)."""
    os.environ["CARAVAN_ARTIFACT_ROOT"] = f"{workdir}/{label}"
    logging.getLogger("caravan").setLevel(logging.ERROR)  # one line per worker per outage: too many to read here
    with nomad_double(nodes=[NODE]) as double:
        os.environ["NOMAD_ADDR"] = double.address
        double.load_specs(SPECS)
        spec = load_spec("sleep")
        tasks = [BenchSleep(date=dt.date(2026, 11, 22), seconds=seconds + i * 1e-6, timeout_s=600)
                 for i in range(steps)]
        durations: dict[int, float] = {}
        results: dict[int, Any] = {}
        ran: dict[int, float | None] = {}

        def one(i: int) -> None:
            task = tasks[i]
            request = StepRequest(spec=spec, artifact=task.output(), meta=task.meta(), run_id=label, timeout_s=600)
            executor = Timing()  # one executor per worker, as separate processes have
            start = time.monotonic()
            try:
                results[i] = executor.run(request)
            except Exception as exc:  # counted as not completed, shown below
                results[i] = exc
            durations[i] = time.monotonic() - start
            ran[i] = executor.ran_s

        stop_faults = threading.Event()

        def stage_faults() -> None:
            began = time.monotonic()
            events = sorted([(at, kind, length) for at, kind, length in faults]
                            + ([(gc_at, "gc", 0.0)] if gc_at is not None else []))
            for at, kind, length in events:
                if stop_faults.wait(max(0.0, began + at - time.monotonic())):
                    return
                if kind == "gc":  # every dead child, even one whose end caravan has not read yet
                    double.gc(threshold_s=0)
                else:
                    double.leader_loss(length, drop_connections=(kind == "drop"))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(steps)]
        chaos = threading.Thread(target=stage_faults)
        began = time.monotonic()
        chaos.start()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - began
        stop_faults.set()
        chaos.join()
        overheads, failures, untimed = [], [], 0
        for i, result in sorted(results.items()):
            if isinstance(result, BaseException):
                failures.append(f"step {i}: {str(result).splitlines()[0]}")
                continue
            own = ran.get(i)
            if own is None:
                untimed += 1
                continue
            overheads.append(durations[i] - own)
        stats, requests = double.counters()
        stops = [path for method, path in requests if method == "DELETE" and "/dispatch-" in path]
        return {"label": label, "completed": sum(1 for t in tasks if t.output().exists()),
                "processes": stats["processes_started"], "stops": len(stops), "overheads": overheads,
                "failures": failures, "wall": wall, "untimed": untimed, "purged": stats["gc_purged"],
                "faulty_answers": stats["no_leader_answers"] + stats["dropped_connections"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=1.0, help="how long each step sleeps")
    parser.add_argument("--windows", type=int, default=3, help="leader-loss windows")
    parser.add_argument("--window-s", type=float, default=3.0, help="length of each leader-loss window")
    args = parser.parse_args()
    fault_free_s = args.steps * args.seconds / 2
    # Windows spread over the fault-free duration, every other one dropping connections; GC in the middle.
    faults = [(fault_free_s * (k + 0.5) / args.windows + k * args.window_s, "drop" if k % 2 else "500",
               args.window_s) for k in range(args.windows)]
    outage_s = args.windows * args.window_s
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(CARAVAN_JOBSPEC_DIR=str(SPECS), PYTHONPATH=str(ROOT))
        calm = run_steps("fault-free", args.steps, args.seconds, [], None, tmp)
        chaos = run_steps("chaos", args.steps, args.seconds, faults, (fault_free_s + outage_s) / 2, tmp)
    print(f"\n{args.steps} sleep steps of {args.seconds:g} s on one node with room for 2, Nomad double; chaos: "
          f"{args.windows} leader-loss windows of {args.window_s:g} s and one job GC\n")
    print(f"{'run':<12} {'completed':>9} {'processes':>9} {'stops':>6} {'duplicates':>10} "
          f"{'overhead median':>16} {'wall':>8} {'500s/drops':>10} {'GC purged':>9}")
    for run in (calm, chaos):
        duplicates = max(0, run["processes"] - run["completed"])
        median = statistics.median(run["overheads"]) if run["overheads"] else float("nan")
        print(f"{run['label']:<12} {run['completed']:>6}/{args.steps:<2} {run['processes']:>9} {run['stops']:>6} "
              f"{duplicates:>10} {median:>14.2f} s {run['wall']:>6.1f} s {run['faulty_answers']:>10} "
              f"{run['purged']:>9}")
        if run["untimed"]:
            print(f"  {run['label']}: {run['untimed']} steps left out of the overhead (GC'd before they were timed)")
        for failure in run["failures"]:
            print(f"  {run['label']}: {failure}")
    problems = []
    for run in (calm, chaos):
        name = run["label"]
        if run["completed"] != args.steps:
            problems.append(f"{name}: {run['completed']}/{args.steps} steps completed")
        if run["processes"] != args.steps:
            problems.append(f"{name}: {run['processes']} processes for {args.steps} steps")
        if run["stops"]:
            problems.append(f"{name}: caravan sent {run['stops']} stops")
    if not (chaos["faulty_answers"] and chaos["purged"]):
        problems.append("the chaos run met no election or collected nothing: it measured nothing")
    calm_median = statistics.median(calm["overheads"]) if calm["overheads"] else float("nan")
    chaos_median = statistics.median(chaos["overheads"]) if chaos["overheads"] else float("nan")
    limit = 2 * calm_median + outage_s
    if not chaos_median <= limit:
        problems.append(f"median overhead {chaos_median:.2f} s is above 2 x {calm_median:.2f} s + {outage_s:g} s "
                        f"= {limit:.2f} s")
    return verdict(f"{args.steps}/{args.steps} completed, {args.steps} processes, 0 stops, 0 duplicates, median "
                   "overhead within 2x fault-free plus the outage time", problems)


if __name__ == "__main__":
    sys.exit(main())
