"""Scaling out, preparation: prepare-dataset streamed against the whole table in memory, side by side.

For each size, a SIMULATED click log (caravan.ml.simulate, in files of at most 2M events) is prepared
twice, each run in its own process: ``prepare`` (streamed) and ``prepare_in_memory`` (the former
path). Peak RSS is the child's ``ru_maxrss`` (from ``os.wait4``), wall time the step call alone.
Goal: streamed peak RSS flat in the number of events (largest at most 1.5x the smallest, and at most
1.5 GB) while the in-memory one grows, at no more than 1.3x the in-memory time at every size.

    .venv/bin/python bench/scale.py                  # 2M, 8M, 20M events (several minutes here)
    .venv/bin/python bench/scale.py --sizes 200000,800000,2000000   # quick

Scaling out, training (``--training``): TrainRanker on one machine against ``--machines`` N on loopback
(LightGBM's data-parallel learner, N local processes through the local executor, as on N Nomad allocations),
on one prepared dataset of ``--train-events`` simulated events: the validation AUC of each, their difference and
the wall time of each training step. Reported, not tuned to this machine (its cores are shared by the ranks).

    .venv/bin/python bench/scale.py --training                       # 1M events, N = 1 and 2
    .venv/bin/python bench/scale.py --training --train-events 200000 --machines 2,3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, verdict

CHUNK = 2_000_000
GOAL_RSS_BYTES = 1.5e9

CHILD = """
import json, resource, sys, time, uuid
sys.path.insert(0, {root!r})
from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.step import StepContext
from caravan.storage import open_store
import jobs.prepare_dataset as step

# The in-memory path may not take the machine down with it: past this it fails (MemoryError).
resource.setrlimit(resource.RLIMIT_AS, ({cap}, {cap}))
artifact = Artifact(open_store("file://{out}"), Address("PrepareDataset", {{"n": uuid.uuid4().hex}}))
writer = artifact.writer()
params = {{"sources": ["{uri}"], "split": "{split}", "valid_fraction": 0.1, "test_fraction": 0.1, "seed": 1,
          "label": "clicked", "time_column": "event_time", "key": "user_id"}}
started = time.perf_counter()
try:
    getattr(step, "{function}")(StepContext(job="prepare-dataset", output=artifact, writer=writer, inputs={{}},
                                            params=params, run_id="bench"))
    writer.publish()
    outcome = "ok"
except MemoryError:
    outcome = "MemoryError"
seconds = time.perf_counter() - started
with open("/proc/self/status") as status:  # this process image's own high-water mark, for comparison
    hwm = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
print(json.dumps({{"outcome": outcome, "seconds": seconds, "vm_hwm": hwm}}))
"""


def simulate(folder: Path, events: int) -> str:
    """``events`` simulated events as Parquet files of at most CHUNK events (written by a child); the URI.

    In a child, so that this process stays small: a child's ``ru_maxrss`` starts from its parent's
    resident size (fork, then exec, keeps the high-water mark), which would hide the step's own.
    """
    subprocess.run([sys.executable, __file__, "--simulate", str(folder), str(events)], check=True)
    return f"file://{folder}/"


def _simulate_here(folder: Path, events: int) -> None:
    import pyarrow.parquet as pq

    from caravan.ml.simulate import simulate_click_log

    folder.mkdir(parents=True)
    for index, start in enumerate(range(0, events, CHUNK)):
        table = simulate_click_log(dt.date(2026, 3, 1), min(CHUNK, events - start), seed=index)
        # Row groups as a Spark or Arrow writer of a log would leave them; a reader holds one at a time.
        pq.write_table(table, folder / f"part-{index:03d}.parquet", row_group_size=131_072)
        del table


def measure(function: str, uri: str, out: Path, split: str, cap: int) -> dict[str, float | str]:
    """Run the step function in a child; its outcome, step seconds and peak RSS (bytes)."""
    code = CHILD.format(root=str(ROOT), out=out, uri=uri, function=function, split=split, cap=cap)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    result = json.loads(output.strip().splitlines()[-1]) if child.returncode == 0 else {"outcome": f"exit {status}"}
    return {**result, "peak_rss": usage.ru_maxrss * 1024}


def train_bench(events: int, machines: list[int]) -> int:
    """Prepare one dataset, train it on 1 and on each N of ``machines``; print AUC and wall time side by side."""
    import luigi

    from caravan.artifacts import ArtifactTask
    from caravan.executors.base import reset_executors
    from caravan.step import StepContext
    from pipelines.ranker import TrainRanker

    with tempfile.TemporaryDirectory(prefix="caravan-scale-train-") as folder:
        os.environ.update(CARAVAN_EXECUTOR="local", CARAVAN_ARTIFACT_ROOT=str(Path(folder, "artifacts")),
                          CARAVAN_JOBSPEC_DIR=str(ROOT / "nomad"))
        reset_executors()
        began = time.perf_counter()
        uri = simulate(Path(folder, "events"), events)

        class BenchDataset(ArtifactTask):
            """The simulated events prepared by prepare-dataset (hash split, row groups of 131,072 rows)."""

            events = luigi.IntParameter()

            def run(self) -> None:
                from jobs.prepare_dataset import prepare

                params = {"sources": [uri], "split": "hash", "valid_fraction": 0.1, "test_fraction": 0.1, "seed": 1,
                          "label": "clicked", "time_column": "event_time", "key": "user_id"}
                with self.output().writer() as writer:
                    prepare(StepContext(job="prepare-dataset", output=self.output(), writer=writer, inputs={},
                                        params=params, run_id="bench"))

        class BenchRanker(TrainRanker):
            """TrainRanker (its defaults: 300 rounds, 31 leaves, early stopping) on the prepared dataset alone."""

            def requires(self) -> dict[str, ArtifactTask]:  # type: ignore[override]
                return {"dataset": BenchDataset(events=events)}

        BenchDataset(events=events).run()
        print(f"{events:,} events simulated and prepared in {time.perf_counter() - began:.0f} s", flush=True)
        runs = {}
        for n in [1, *machines]:
            task = BenchRanker(date=dt.date(2026, 3, 1), num_machines=n)
            started = time.perf_counter()
            task.run()
            seconds = time.perf_counter() - started
            metrics = task.output().metrics
            runs[n] = {"seconds": seconds, **metrics}
            print(f"N={n}: valid AUC {metrics['valid_auc']:.4f}, {metrics['best_iteration']} rounds, "
                  f"{metrics['rows_train']:,} train rows, {seconds:.1f} s", flush=True)
    print(json.dumps({"events": events, "runs": runs}, sort_keys=True))
    for n in machines:
        print(f"N={n} against N=1: AUC {runs[n]['valid_auc'] - runs[1]['valid_auc']:+.4f}, "
              f"wall time {runs[n]['seconds'] / runs[1]['seconds']:.2f}x")
    problems = [f"N={n} AUC {runs[n]['valid_auc']:.4f} is more than 0.005 from N=1's {runs[1]['valid_auc']:.4f}"
                for n in machines if abs(runs[n]["valid_auc"] - runs[1]["valid_auc"]) > 0.005]
    return verdict("N machines reach N=1's validation AUC within 0.005 (time reported, not judged)", problems)


def main() -> int:
    if sys.argv[1:2] == ["--simulate"]:
        _simulate_here(Path(sys.argv[2]), int(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="2000000,8000000,20000000", help="events per run, comma-separated")
    parser.add_argument("--split", default="time", choices=["time", "hash"])
    parser.add_argument("--cap-gb", type=float, default=12.0, help="address-space cap of each child (GB)")
    parser.add_argument("--training", action="store_true", help="bench distributed training instead (see above)")
    parser.add_argument("--train-events", type=int, default=1_000_000, help="--training: simulated events")
    parser.add_argument("--machines", default="2", help="--training: N values to compare with N=1, comma-separated")
    args = parser.parse_args()
    if args.training:
        return train_bench(args.train_events, [int(n) for n in args.machines.split(",")])
    sizes = [int(s) for s in args.sizes.split(",")]
    cap = int(args.cap_gb * 1e9)
    rows = []
    with tempfile.TemporaryDirectory(prefix="caravan-scale-") as folder:
        for events in sizes:
            began = time.perf_counter()
            uri = simulate(Path(folder, f"in-{events}"), events)
            print(f"{events:>11,} events simulated in {time.perf_counter() - began:.0f} s", flush=True)
            row = {"events": events}
            for function in ("prepare_in_memory", "prepare"):
                row[function] = measure(function, uri, Path(folder, f"out-{events}-{function}"), args.split, cap)
            rows.append(row)
            whole, streamed = row["prepare_in_memory"], row["prepare"]
            print(f"{events:>11,} events  in memory: {whole['peak_rss'] / 1e9:5.2f} GB "
                  f"{whole.get('seconds', 0):6.1f} s ({whole['outcome']})  streamed: "
                  f"{streamed['peak_rss'] / 1e9:5.2f} GB {streamed.get('seconds', 0):6.1f} s ({streamed['outcome']})",
                  flush=True)
    problems = []
    streamed_rss = [r["prepare"]["peak_rss"] for r in rows]
    for r in rows:
        whole, streamed = r["prepare_in_memory"], r["prepare"]
        if streamed["outcome"] != "ok":
            problems.append(f"streaming failed at {r['events']:,} events ({streamed['outcome']})")
        elif whole["outcome"] == "ok" and streamed["seconds"] > 1.3 * whole["seconds"]:
            problems.append(f"streaming took {streamed['seconds'] / whole['seconds']:.2f}x the in-memory time "
                            f"at {r['events']:,} events")
    if max(streamed_rss) > GOAL_RSS_BYTES:
        problems.append(f"streamed peak RSS {max(streamed_rss) / 1e9:.2f} GB > 1.5 GB")
    if max(streamed_rss) > 1.5 * min(streamed_rss):
        problems.append(f"streamed peak RSS not flat: {min(streamed_rss) / 1e9:.2f} GB to "
                        f"{max(streamed_rss) / 1e9:.2f} GB")
    return verdict("streamed peak RSS flat and <= 1.5 GB, time <= 1.3x in memory", problems)


if __name__ == "__main__":
    sys.exit(main())
