"""What the pipeline costs on top of the work: a plain script vs the same training through TrainRanker.

Run: ``.venv/bin/python bench/pipeline_overhead.py [--rows-per-day 250000] [--repeat 2]``

Builds the simulated dataset and its text features once (not timed). Then, alternately in one run:
(a) a plain script that reads the same Parquet splits and trains the same LightGBM configuration
    (same parameters, same thread count, early stopping on the validation split, whose AUC LightGBM
    computes every round), writing the model to a file;
(b) the same work through ``TrainRanker`` with the local executor, from an artifact root where the
    model does not exist yet (cold), via luigi: subprocess, contract, artifact reads with sha256
    checks, staged writes, manifest.
Both arms score the validation split the same way (LightGBM's per-round evaluation, read at the best
round), and must reach the same AUC, or the bench stops: they would not be doing the same work.
Every luigi run is checked through luigi's detailed summary (``luigi.build`` alone returns True when
tasks fail). Then a 4-configuration grid is built, and re-run: the re-run must run nothing (no
object in the artifact root changes) and its time is printed.

Goal: ratio b/a <= 1.10, with (a) taking >= 20 s (below that, fixed costs such as starting a Python
process dominate and the ratio says nothing about a real training). Exits 1 when the goal is missed
or could not be measured (a smaller --rows-per-day, as a quick check, runs everything but cannot
meet it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import ROOT, build, verdict

DAY = dt.date(2026, 11, 22)
GOAL_RATIO = 1.10
GOAL_MIN_TRAINING_S = 20.0


def plain_script(dataset_dir: Path, text_dir: Path, params: dict[str, Any], out_dir: Path) -> tuple[float, float]:
    """The hand-written baseline: Parquet in, LightGBM trained, model written. (seconds, valid AUC)."""
    import lightgbm as lgb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.train_lightgbm import booster_params  # the very same LightGBM configuration

    def load(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
        table = pq.read_table(next(dataset_dir.glob(f"_attempts/*/{split}.parquet")))
        text = pq.read_table(next(text_dir.glob(f"_attempts/*/text_{split}.parquet")))
        names = [f.name for f in table.schema if f.name not in ("event_id", "event_time", "clicked")
                 and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))] + text.column_names
        columns = [table[n] if n in table.column_names else text[n] for n in names]
        x = np.column_stack([c.cast(pa.float32()).to_numpy(zero_copy_only=False) for c in columns])
        return x, table["clicked"].cast(pa.float64()).to_numpy(), names

    start = time.perf_counter()
    x_train, y_train, names = load("train")
    x_valid, y_valid, _ = load("valid")
    curve: dict[str, Any] = {}
    dtrain = lgb.Dataset(x_train, y_train, feature_name=names)
    booster = lgb.train(booster_params(params), dtrain, num_boost_round=params["num_iterations"],
                        valid_sets=[lgb.Dataset(x_valid, y_valid, reference=dtrain)], valid_names=["valid"],
                        callbacks=[lgb.early_stopping(params["early_stopping_rounds"], verbose=False),
                                   lgb.record_evaluation(curve)])
    best = booster.best_iteration or params["num_iterations"]
    auc = float(curve["valid"]["auc"][best - 1])  # scored as the step scores it: LightGBM's own evaluation
    (out_dir / "model.txt").write_text(booster.model_to_string(num_iteration=best))
    elapsed = time.perf_counter() - start
    print(f"  plain script: {elapsed:.2f} s (valid AUC {auc:.6f})", flush=True)
    return elapsed, auc


def folder(artifact: Any) -> Path:
    """The local folder of an artifact on the (local) store."""
    return Path(artifact.store.root_uri.removeprefix("file://")) / artifact.key


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time: what a run that did something changes."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=250_000)
    parser.add_argument("--num-iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        artifacts = Path(tmp) / "artifacts"
        os.environ.update(CARAVAN_ARTIFACT_ROOT=str(artifacts), CARAVAN_POINTER_ROOT=f"{tmp}/pointers",
                          CARAVAN_EXECUTOR="local", CARAVAN_JOBSPEC_DIR=str(ROOT / "nomad"))
        from caravan.artifacts import completion_index
        from pipelines.ranker import EvaluateRanker, GridSearchRanker, PrepareDataset, ProcessText

        common = {"date": DAY, "rows_per_day": args.rows_per_day, "num_iterations": args.num_iterations,
                  "early_stopping_rounds": 1000}
        train = EvaluateRanker(**common).requires()["model"]
        print(f"preparing the dataset ({3 * args.rows_per_day} simulated events; not timed) ...", flush=True)
        data = [PrepareDataset(date=DAY, rows_per_day=args.rows_per_day),
                ProcessText(date=DAY, rows_per_day=args.rows_per_day)]
        build(data, workers=2)
        dataset_dir, text_dir = (folder(task.output()) for task in data)
        params = {k: v for k, v in train.hyperparameters().items() if k not in ("label", "exclude")}
        plain: list[float] = []
        piped: list[float] = []
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}", flush=True)
            out_dir = Path(tempfile.mkdtemp(dir=tmp))
            seconds, plain_auc = plain_script(dataset_dir, text_dir, params, out_dir)
            plain.append(seconds)
            shutil.rmtree(folder(train.output()), ignore_errors=True)  # cold: the model does not exist
            completion_index.forget()
            start = time.perf_counter()
            build([train])
            piped.append(time.perf_counter() - start)
            piped_auc = float(train.output().metrics["valid_auc"])
            print(f"  TrainRanker: {piped[-1]:.2f} s (valid AUC {piped_auc:.6f})", flush=True)
            if abs(piped_auc - plain_auc) > 1e-6:  # the step rounds to 6 places
                raise SystemExit(f"the arms differ: valid AUC {plain_auc:.6f} (plain) vs {piped_auc:.6f} "
                                 "(TrainRanker); they are not training the same model")
        grid = GridSearchRanker(date=DAY, rows_per_day=args.rows_per_day, num_iterations=50)
        build([grid], workers=2)
        before = snapshot(artifacts)
        completion_index.forget()
        start = time.perf_counter()
        build([grid], workers=2)
        noop = time.perf_counter() - start
        changed = sorted(set(before.items()) ^ set(snapshot(artifacts).items()))
        if changed:
            raise SystemExit(f"the no-op re-run changed {len(changed)} files (e.g. {changed[0][0]}): it ran something")
    a, b = statistics.median(plain), statistics.median(piped)
    print(f"\n{3 * args.rows_per_day} events, {args.num_iterations} boosting rounds, 1 thread; median of "
          f"{args.repeat}\n")
    print(f"{'way':<40} {'wall s':>8}")
    print(f"{'(a) plain script':<40} {a:>8.2f}")
    print(f"{'(b) TrainRanker (local executor)':<40} {b:>8.2f}")
    print(f"{'ratio b/a':<40} {b / a:>8.3f}")
    print(f"{'no-op re-run of a 4-config grid':<40} {noop:>8.2f}  (ran nothing: no file changed)")
    problems = []
    if b / a > GOAL_RATIO:
        problems.append(f"ratio b/a {b / a:.3f} > {GOAL_RATIO:.2f}")
    if a < GOAL_MIN_TRAINING_S:
        problems.append(f"the plain training took {a:.1f} s < {GOAL_MIN_TRAINING_S:g} s, too short to measure the "
                        "goal (use the default --rows-per-day)")
    return verdict(f"ratio b/a <= {GOAL_RATIO:.2f} with training >= {GOAL_MIN_TRAINING_S:g} s", problems)


if __name__ == "__main__":
    sys.exit(main())
