"""`make demo`: RetrainRanker for one day on the embedded defaults, then a summary of what was built.

Embedded defaults: local executor, local artifact store under ./.caravan, luigi's local scheduler,
and a SIMULATED click log. A second run rebuilds nothing and says so.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import time

import luigi

from caravan.artifacts import ArtifactTask

from .ranker import RetrainRanker

DAY = dt.date(2026, 11, 22)


def graph(roots: list[luigi.Task]) -> list[ArtifactTask]:
    """Every artifact task the roots need, upstream first, each once."""
    seen: dict[str, ArtifactTask] = {}

    def visit(task: luigi.Task) -> None:
        if task.task_id in seen:
            return
        for dep in luigi.task.flatten(task.requires()):
            visit(dep)
        if isinstance(task, ArtifactTask):
            seen[task.task_id] = task

    for root in roots:
        visit(root)
    return list(seen.values())


def readable(artifact_id: str) -> str:
    family, *rest = artifact_id.split("/")
    return f"{family}/{'/'.join(rest).rsplit('--', 1)[0]}"


def main() -> int:
    # Steps' own log lines already carry a timestamp and the step's name.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("caravan.step", "pipelines"):  # step progress, live
        logging.getLogger(name).setLevel(logging.INFO)
    retrain = RetrainRanker(date=DAY)
    tasks = graph([retrain, retrain.grid_search()])
    before = {t.task_id: t.complete() for t in tasks}
    if all(before.values()):
        print("everything is already built: nothing to rebuild")
    print(f"RetrainRanker --date {DAY}: {len(tasks)} artifacts, {sum(not v for v in before.values())} to build\n")
    start = time.monotonic()
    ok = luigi.build([retrain], local_scheduler=True, workers=2, log_level="WARNING")
    elapsed = time.monotonic() - start

    print(f"\n{'artifact (path shows its parameters)':<100} {'':<7} {'secs':>6}")
    for task in tasks:
        artifact = task.output()
        if not artifact.exists():
            print(f"{readable(artifact.id):<100} FAILED")
            continue
        status = "reused" if before[task.task_id] else "built"
        print(f"{readable(artifact.id):<100} {status:<7} {artifact.manifest().get('duration_s', 0):>6.1f}")
    if retrain.output().exists():
        print()
        print("\n".join(retrain.summary_lines()))  # the grid with its winner, then the promotion verdict
    built = sum(not v for v in before.values())
    print(f"root: {retrain.output().store.root_uri}")
    print(f"built {built}, reused {len(tasks) - built} in {elapsed:.1f} s" + ("" if built else ": nothing rebuilt"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
