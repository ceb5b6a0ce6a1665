"""`make demo`: run the example pipeline on the embedded defaults and say what was built."""

from __future__ import annotations

import datetime as dt
import sys
import time

import luigi

from caravan.artifacts import ArtifactTask

from .example import Summarize


def main() -> int:
    day = dt.date(2026, 11, 22)
    tasks = [Summarize(date=day, power=p) for p in (1, 2, 3, 4)]
    everything: list[ArtifactTask] = [*tasks, tasks[0].requires()["numbers"]]
    before = {t: t.complete() for t in everything}
    start = time.monotonic()
    ok = luigi.build(tasks, local_scheduler=True, log_level="WARNING")
    elapsed = time.monotonic() - start
    print(f"\n{'artifact':<90} {'status':<10} metrics")
    for task in everything:
        artifact = task.output()
        status = "reused" if before[task] else "built"
        metrics = artifact.metrics if artifact.exists() else {}
        print(f"{artifact.id:<90} {status:<10} {metrics}")
    built = sum(not done for done in before.values())
    print(f"\nroot: {tasks[0].output().store.root_uri}")
    print(f"built {built}, reused {len(everything) - built} in {elapsed:.2f} s"
          + ("" if built else " — nothing to rebuild"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
