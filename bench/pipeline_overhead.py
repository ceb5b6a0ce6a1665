"""What the pipeline costs on top of the work: a plain script vs the same training through TrainRanker.

Run: ``.venv/bin/python bench/pipeline_overhead.py [--rows-per-day 250000] [--repeat 2]``

Builds the simulated dataset and its text features once (not timed). Then, alternately in one run:
(a) a plain script that reads the same Parquet splits, trains the same LightGBM configuration
    (same parameters, same thread count, early stopping on the validation split) and scores the
    validation split, writing the model to a file;
(b) the same work through ``TrainRanker`` with the local executor, from an artifact root where the
    model does not exist yet (cold), via ``luigi.build``: subprocess, contract, artifact reads with
    sha256 checks, staged writes, manifest.
Prints both wall times and the ratio b/a (goal: <= 1.10 with training taking >= 20 s), and the time
of a no-op re-run of a 4-configuration grid whose artifacts all exist.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import luigi
from common import ROOT

DAY = dt.date(2026, 11, 22)


def plain_script(dataset_dir: Path, text_dir: Path, params: dict) -> float:
    """The hand-written baseline: Parquet in, LightGBM trained and scored, nothing else."""
    import lightgbm as lgb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from caravan.ml.metrics import roc_auc

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
    from jobs.train_lightgbm import booster_params  # the very same LightGBM configuration

    dtrain = lgb.Dataset(x_train, y_train, feature_name=names)
    booster = lgb.train(booster_params(params), dtrain, num_boost_round=params["num_iterations"],
                        valid_sets=[lgb.Dataset(x_valid, y_valid, reference=dtrain)],
                        callbacks=[lgb.early_stopping(params["early_stopping_rounds"], verbose=False)])
    auc = roc_auc(y_valid, booster.predict(x_valid, num_iteration=booster.best_iteration))
    Path(tempfile.mkdtemp(), "model.txt").write_text(booster.model_to_string(num_iteration=booster.best_iteration))
    elapsed = time.perf_counter() - start
    print(f"  plain script: {elapsed:.2f} s (valid AUC {auc:.4f})", flush=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows-per-day", type=int, default=250_000)
    parser.add_argument("--num-iterations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.update(CARAVAN_ARTIFACT_ROOT=f"{tmp}/artifacts", CARAVAN_POINTER_ROOT=f"{tmp}/pointers",
                          CARAVAN_EXECUTOR="local", CARAVAN_JOBSPEC_DIR=str(ROOT / "nomad"))
        from pipelines.ranker import EvaluateRanker, GridSearchRanker, PrepareDataset, ProcessText

        common = {"date": DAY, "rows_per_day": args.rows_per_day, "num_iterations": args.num_iterations,
                  "early_stopping_rounds": 1000}
        evaluate = EvaluateRanker(**common)
        train = evaluate.requires()["model"]
        print(f"preparing the dataset ({3 * args.rows_per_day} simulated events; not timed) ...", flush=True)
        data = [PrepareDataset(date=DAY, rows_per_day=args.rows_per_day),
                ProcessText(date=DAY, rows_per_day=args.rows_per_day)]
        if not luigi.build(data, local_scheduler=True, workers=2, log_level="WARNING"):
            raise SystemExit("dataset preparation failed")
        dataset_dir = Path(data[0].output().store.root_uri.removeprefix("file://")) / data[0].output().key
        text_dir = Path(data[1].output().store.root_uri.removeprefix("file://")) / data[1].output().key
        params = {k: v for k, v in train.hyperparameters().items() if k not in ("label", "exclude")}
        plain, piped = [], []
        for round_ in range(args.repeat):
            print(f"round {round_ + 1}/{args.repeat}", flush=True)
            plain.append(plain_script(dataset_dir, text_dir, params))
            for task in (train,):  # cold: the model does not exist
                shutil.rmtree(Path(task.output().store.root_uri.removeprefix("file://")) / task.output().key,
                              ignore_errors=True)
            from caravan.artifacts import completion_index

            completion_index.forget()
            start = time.perf_counter()
            if not luigi.build([train], local_scheduler=True, workers=1, log_level="WARNING"):
                raise SystemExit("pipeline run failed")
            piped.append(time.perf_counter() - start)
            print(f"  TrainRanker: {piped[-1]:.2f} s (valid AUC {train.output().metrics['valid_auc']:.4f})",
                  flush=True)
        grid = GridSearchRanker(date=DAY, rows_per_day=args.rows_per_day, num_iterations=50)
        luigi.build([grid], local_scheduler=True, workers=2, log_level="WARNING")
        completion_index.forget()
        start = time.perf_counter()
        luigi.build([grid], local_scheduler=True, workers=2, log_level="WARNING")
        noop = time.perf_counter() - start
    a, b = statistics.median(plain), statistics.median(piped)
    print(f"\n{3 * args.rows_per_day} events, {args.num_iterations} boosting rounds, 1 thread; median of "
          f"{args.repeat}\n")
    print(f"{'way':<40} {'wall s':>8}")
    print(f"{'(a) plain script':<40} {a:>8.2f}")
    print(f"{'(b) TrainRanker (local executor)':<40} {b:>8.2f}")
    print(f"{'ratio b/a':<40} {b / a:>8.3f}")
    print(f"{'no-op re-run of a 4-config grid':<40} {noop:>8.2f}")


if __name__ == "__main__":
    main()
