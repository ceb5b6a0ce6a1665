"""The recommendation ranker: click log -> dataset -> validation -> text features -> LightGBM grid -> evaluation.

Every heavy step is a Nomad job (``nomad/<job>.nomad.hcl``) run by the configured executor::

    luigi --module pipelines.ranker TrainRanker --date 2026-11-22 --learning-rate 0.05 --local-scheduler
    luigi --module pipelines.ranker GridSearchRanker --date 2026-11-22 --local-scheduler
    luigi --module pipelines.ranker RetrainRanker --date 2026-11-22 --local-scheduler

``--events simulated`` (the default) uses a SIMULATED click log; point ``--events`` at real data
with a Parquet URI template such as ``s3://bucket/clicks/date={date}/``; ``--events logged`` trains on what
was served: each closed day of ``--events-model``'s event log, predictions joined with their feedback
(``--attribution-window``, :mod:`caravan.events.join`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
from collections.abc import Mapping
from typing import Any

import luigi

from caravan.addressing import Address
from caravan.artifacts import ArtifactTask
from caravan.dataio import ParquetSource
from caravan.errors import ConfigurationError
from caravan.events.tasks import JoinLoggedEvents
from caravan.promotion import PromoteModel
from caravan.tasks import NomadJobTask, plain

log = logging.getLogger("pipelines.ranker")

LABEL = "clicked"
#: Never features: identifiers and the event time (they would leak or not generalise).
EXCLUDE = ["event_id", "event_time", LABEL]
NON_NULLABLE = ["event_id", "event_time", "user_id", "item_id", LABEL]
#: Columns the ranker handles knowingly (ids as features, the text column): no warnings about them.
KNOWN_COLUMNS = ["event_id", "event_time", "user_id", "item_id", "item_title"]


class SimulatedEvents(NomadJobTask):
    """One day of a SIMULATED click log with a learnable signal (the embedded demo's data)."""

    job = "simulate-events"
    date = luigi.DateParameter(description="The simulated day.")
    rows = luigi.IntParameter(default=20_000, description="Events in the day.")
    seed = luigi.IntParameter(default=7, description="Random seed of the simulation.")


class DatasetParams:
    """Parameters that decide the dataset, shared by every task downstream of it."""

    date = luigi.DateParameter(description="Last day of the training window.")
    window_days = luigi.IntParameter(default=3, description="Days of events in the dataset, ending at --date.")
    events = luigi.Parameter(default="simulated",
                             description="'simulated'; 'logged' (the closed days of --events-model's event log, "
                             "joined with feedback); or a Parquet URI template with {date}: a file, folder or "
                             "prefix, local, s3:// or hdfs://.")
    # Insignificant here: with --events logged they reach every address through the joined days' artifact ids.
    events_model = luigi.Parameter(default="ranker", significant=False,
                                   description="Model whose event log --events logged reads.")
    attribution_window = luigi.TimeDeltaParameter(default=dt.timedelta(minutes=30), significant=False,
                                                  description="--events logged: how long after a prediction a "
                                                  "positive reward labels it clicked (e.g. '30 minutes').")
    rows_per_day = luigi.IntParameter(default=20_000, description="Events per simulated day (simulated only).")
    split = luigi.ChoiceParameter(default="time", choices=["time", "hash"],
                                  description="Split by event time, or by a seeded hash of user_id.")
    seed = luigi.IntParameter(default=7, description="Seed of the simulation, the hash split and the training.")


class TextParams:
    """Parameters of the shared text features."""

    text_columns = luigi.ListParameter(default=["item_title"], description="Text columns to hash-vectorize.")
    n_features = luigi.IntParameter(default=32, description="Hashed features per text column.")


class PrepareDataset(DatasetParams, NomadJobTask):
    """Events of the window, split train/valid/test, with schema and column statistics."""

    job = "prepare-dataset"
    path_params = ("window_days", "events", "split", "rows_per_day", "seed")
    valid_fraction = luigi.FloatParameter(default=0.15, description="Share of rows in the validation split.")
    test_fraction = luigi.FloatParameter(default=0.15, description="Share of rows in the test split.")
    min_rows = luigi.IntParameter(default=20, significant=False,
                                  description="Rows every split needs at least; fewer stops the preparation.")

    def days(self) -> list[dt.date]:
        return [self.date - dt.timedelta(days=i) for i in reversed(range(self.window_days))]

    def requires(self) -> dict[str, luigi.Task]:
        if self.events == "simulated":
            return {f"events_{d}": SimulatedEvents(date=d, rows=self.rows_per_day, seed=self.seed) for d in self.days()}
        if self.events == "logged":
            window_s = self.attribution_window.total_seconds()
            return {f"events_{d}": JoinLoggedEvents(model=self.events_model, date=d, attribution_window_s=window_s)
                    for d in self.days()}
        return {f"events_{d}": ParquetSource(uri=str(self.events).format(date=d)) for d in self.days()}

    def hyperparameters(self) -> dict[str, Any]:
        params = {"date": self.date.isoformat(), "window_days": self.window_days, "split": self.split,
                  "key": "user_id", "seed": self.seed, "valid_fraction": self.valid_fraction,
                  "test_fraction": self.test_fraction, "label": LABEL, "time_column": "event_time",
                  "known_columns": KNOWN_COLUMNS, "min_rows": self.min_rows}
        if self.events not in ("simulated", "logged"):
            params["sources"] = [str(self.events).format(date=d) for d in self.days()]
        return params


class ValidateData(DatasetParams, NomadJobTask):
    """Schema skew stops the run; value drift against the production model's data is measured."""

    job = "validate-data"
    path_params = ("window_days", "events", "reference", "fail_on_drift")
    reference = luigi.Parameter(default="", description="Artifact id of a PrepareDataset to measure drift against "
                                "('' = no drift check). RetrainRanker passes the current model's training data, "
                                "resolved before this task's address is computed.")
    drift_threshold = luigi.FloatParameter(default=0.2, description="PSI above which a column counts as drifted.")
    fail_on_drift = luigi.BoolParameter(default=False, description="Stop the run when any column drifted.")

    def requires(self) -> dict[str, PrepareDataset]:
        return {"dataset": self.clone(PrepareDataset)}

    def hyperparameters(self) -> dict[str, Any]:
        from caravan.ml.simulate import SIMULATED_SCHEMA
        from caravan.ml.stats import table_schema

        return {"expected_schema": table_schema(SIMULATED_SCHEMA.empty_table()), "non_nullable": NON_NULLABLE,
                "reference": self.reference, "drift_threshold": self.drift_threshold,
                "fail_on_drift": self.fail_on_drift}


class ProcessText(DatasetParams, TextParams, NomadJobTask):
    """Hashed text features, one artifact shared by every training on the same dataset."""

    job = "process-text"
    path_params = ("text_columns", "n_features")

    def requires(self) -> dict[str, PrepareDataset]:
        return {"dataset": self.clone(PrepareDataset)}

    def hyperparameters(self) -> dict[str, Any]:
        return {"text_columns": list(self.text_columns), "n_features": self.n_features, "seed": self.seed}


class TrainParams(DatasetParams, TextParams):
    """LightGBM hyperparameters."""

    objective = luigi.Parameter(default="binary", description="LightGBM objective.")
    learning_rate = luigi.FloatParameter(default=0.05, description="Shrinkage rate.")
    num_leaves = luigi.IntParameter(default=31, description="Maximum leaves per tree.")
    num_iterations = luigi.IntParameter(default=300, description="Boosting rounds (early stopping may stop sooner).")
    min_data_in_leaf = luigi.IntParameter(default=50, description="Minimum rows per leaf.")
    feature_fraction = luigi.FloatParameter(default=0.9, description="Share of features sampled per tree.")
    early_stopping_rounds = luigi.IntParameter(default=30, description="Stop when valid AUC has not improved "
                                               "for this many rounds.")
    num_threads = luigi.IntParameter(default=1, description="Training threads (part of the identity: results "
                                     "are bit-identical only for the same thread count). Keep threads x parallel "
                                     "steps <= cores: OpenMP threads that share a core slow training ~10x.")
    # Insignificant as a luigi parameter so that N = 1 keeps the address it always had; TrainRanker.address() adds
    # N > 1 to the digest itself (a model trained on N machines is another model).
    num_machines = luigi.IntParameter(default=1, significant=False,
                                      description="Machines (Nomad allocations, or local processes) of one training "
                                      "with LightGBM's data-parallel learner; 1 = one process, as always.")
    rendezvous_timeout_s = luigi.FloatParameter(default=300.0, significant=False,
                                                description="--num-machines > 1: how long the ranks wait for each "
                                                "other (all N placed and their shards read) before the training fails, "
                                                "naming the ranks that never came.")


#: What a model's path shows; the dataset's parameters are in its upstream id (and the digest).
HYPERPARAMETERS = ("learning_rate", "num_leaves", "num_iterations", "min_data_in_leaf", "feature_fraction",
                   "objective")


class TrainRanker(TrainParams, NomadJobTask):
    """One LightGBM ranker trained with the given hyperparameters (on ``--num-machines`` machines)."""

    job = "train-lightgbm"
    #: The job of a training on N > 1 machines: N ranks of one gang (caravan.executors.gang).
    distributed_job = "train-lightgbm-distributed"
    path_params = HYPERPARAMETERS

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.num_machines < 1:
            raise ConfigurationError(f"num_machines must be at least 1, not {self.num_machines}")

    def requires(self) -> dict[str, NomadJobTask]:
        return {"dataset": self.clone(PrepareDataset), "text": self.clone(ProcessText)}

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        # A local gang is N processes on this machine: it takes N of the local step slots (at most all of them,
        # so that it can ever be scheduled).
        claimed = dict(super().resources)
        if self.num_machines > 1 and "caravan_local_steps" in claimed:
            slots = luigi.configuration.get_config().getint("resources", "caravan_local_steps", None)
            claimed["caravan_local_steps"] = min(self.num_machines, slots) if slots else self.num_machines
        return claimed

    def address(self) -> Address:
        """The address of :class:`ArtifactTask`, with ``num_machines`` in the digest when it is above 1."""
        address = super().address()
        if self.num_machines == 1:
            return address
        cached: Address | None = self.__dict__.get("_caravan_gang_address")
        if cached is None:
            cached = Address(family=address.family, params={**address.params, "num_machines": str(self.num_machines)},
                             upstream=address.upstream, code_version=address.code_version,
                             partition_key=address.partition_key, readable_keys=address.readable_keys)
            self.__dict__["_caravan_gang_address"] = cached
        return cached

    def run(self) -> None:
        if self.num_machines == 1:
            super().run()
            return
        from caravan.executors.gang import run_task

        run_task(self, self.distributed_job, self.num_machines, rendezvous_timeout_s=self.rendezvous_timeout_s)

    def hyperparameters(self) -> dict[str, Any]:
        return {"label": LABEL, "exclude": [*EXCLUDE, *self.text_columns], "objective": self.objective,
                "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "num_iterations": self.num_iterations,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "early_stopping_rounds": self.early_stopping_rounds, "num_threads": self.num_threads,
                "seed": self.seed}


class EvaluateRanker(TrainParams, NomadJobTask):
    """Test-split metrics (AUC, log loss, average precision, NDCG@k per user) and a plot."""

    job = "evaluate"
    path_params = HYPERPARAMETERS
    k = luigi.IntParameter(default=10, description="Cut-off of NDCG@k.")

    def requires(self) -> dict[str, NomadJobTask]:
        return {"model": self.clone(TrainRanker), "dataset": self.clone(PrepareDataset),
                "text": self.clone(ProcessText)}

    def hyperparameters(self) -> dict[str, Any]:
        return {"group_column": "user_id", "k": self.k}


DEFAULT_GRID = {"learning_rate": [0.05, 0.1], "num_leaves": [15, 63]}
#: Metrics a grid winner can be picked by (recorded by every training and evaluation); '-' = lower is better.
GRID_METRICS = ("valid_auc", "valid_logloss", "test_auc", "test_logloss", "test_average_precision", "test_ndcg@10")


def expand_grid(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in a stable order."""
    names = sorted(grid)
    for name in names:
        if not isinstance(grid[name], (list, tuple)) or not grid[name]:
            raise ValueError(f"grid entry {name!r} must be a non-empty list of values")
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(grid[n] for n in names))]


def _expected_type(param: luigi.Parameter) -> tuple[str, Any]:
    """What a grid value for ``param`` must be, in words, and a check of one value."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if isinstance(param, luigi.BoolParameter):
        return "a boolean (true or false)", lambda v: isinstance(v, bool)
    if isinstance(param, luigi.IntParameter):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(param, luigi.FloatParameter):
        return "a number", number
    if isinstance(param, luigi.ChoiceParameter):
        return f"one of {sorted(param._choices)}", lambda v: v in param._choices
    if type(param) is luigi.Parameter:
        return "a string", lambda v: isinstance(v, str)

    def parses(v: Any) -> bool:
        try:
            param.normalize(param.parse(v) if isinstance(v, str) else v)
        except (TypeError, ValueError):
            return False
        return True

    return f"a value {type(param).__name__} accepts", parses


def _json(value: Any) -> str:
    """``value`` as the user wrote it, in JSON (luigi hands frozen dicts and tuples)."""
    try:
        return json.dumps(plain(value))
    except (TypeError, ValueError):
        return repr(value)


def check_grid(grid: Any, trained: type[luigi.Task]) -> list[dict[str, Any]]:
    """The grid's configurations, once ``grid`` is known to be a non-empty JSON object of lists whose keys
    are parameters of ``trained`` and whose values have those parameters' types; else one line saying what is wrong."""
    params = {name: param for name, param in trained.get_params() if param.significant}
    allowed = ", ".join(sorted(params))
    if not isinstance(grid, Mapping):
        raise ConfigurationError(f'grid must be a JSON object of lists, like {{"learning_rate": [0.05, 0.1]}}, '
                                 f"not {_json(grid)}")
    grid = {str(name): list(values) if isinstance(values, (list, tuple)) else values for name, values in grid.items()}
    if not grid:
        raise ConfigurationError(f"grid is empty: name at least one parameter of {trained.__name__} with a list of "
                                 f"values (allowed: {allowed})")
    unknown = sorted(set(grid) - set(params))
    if unknown:
        raise ConfigurationError(f"grid names parameters {trained.__name__} does not have: {', '.join(unknown)} "
                                 f"(allowed: {allowed})")
    problems = []
    for name in sorted(grid):
        values = grid[name]
        if not isinstance(values, list) or not values:
            problems.append(f"{name} must be a non-empty list of values, not {_json(values)}")
            continue
        expected, fits = _expected_type(params[name])
        wrong = [v for v in values if not fits(v)]
        if wrong:
            problems.append(f"{name} takes {expected}, not {', '.join(_json(v) for v in wrong)}")
    if problems:
        raise ConfigurationError("grid: " + "; ".join(problems))
    return expand_grid(grid)


def check_metric(metric: str) -> str:
    """``metric`` when it is one a grid can be judged by (optionally '-'-prefixed); else the names allowed."""
    if str(metric).removeprefix("-") not in GRID_METRICS:
        raise ConfigurationError(f"metric {metric!r} is not recorded by the grid's trainings and evaluations; "
                                 f"use one of {', '.join(GRID_METRICS)} (prefix '-' for lower-is-better)")
    return str(metric)


class GridSearchRanker(TrainParams, ArtifactTask):
    """Train and evaluate every grid configuration (sharing one dataset and one text step); pick the best."""

    path_params = ("grid", "metric", "window_days", "events")
    grid = luigi.DictParameter(default=DEFAULT_GRID, description="Hyperparameter name -> list of values.")
    metric = luigi.Parameter(default="valid_auc", description="Validation metric that picks the winner (higher "
                             "is better; prefix with '-' for lower-is-better, e.g. -valid_logloss).")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Before anything is scheduled or dispatched: a bad grid or metric is one line, not a failed training.
        check_grid(self.grid, TrainRanker)
        check_metric(self.metric)

    def configurations(self) -> list[dict[str, Any]]:
        return check_grid(self.grid, TrainRanker)

    def requires(self) -> list[EvaluateRanker]:
        return [self.clone(EvaluateRanker, **config) for config in self.configurations()]

    def run(self) -> None:
        descending = not str(self.metric).startswith("-")
        metric = str(self.metric).lstrip("-")
        rows = []
        for config, evaluation in zip(self.configurations(), self.requires(), strict=True):
            model = evaluation.requires()["model"].output()
            rows.append({"config": config, "model": model.id, "evaluation": evaluation.output().id,
                         **model.metrics, **{k: v for k, v in evaluation.output().metrics.items() if k != "model"}})
        missing = [r["model"] for r in rows if metric not in r]
        if missing:
            raise ValueError(f"metric {metric!r} is not recorded for {missing}")
        best = max(rows, key=lambda r: r[metric] if descending else -r[metric])
        with self.output().writer() as writer:
            writer.write_json("summary.json", {"metric": self.metric, "winner": best, "configurations": rows})
            writer.metrics.update({"winner_model": best["model"], "winner_config": best["config"],
                                   metric: best[metric], "test_auc": best.get("test_auc")})
        log.info("grid winner %s with %s = %s", best["config"], metric, best[metric])

    def summary_lines(self) -> list[str]:
        """The grid as a table, the winner marked (caravan's run summary and `make demo` print it)."""
        summary = self.output().read_json("summary.json")
        metric = summary["metric"].lstrip("-")
        lines = [f"{'configuration':<44} {metric:>10} {'test_auc':>9} {'ndcg@10':>8} {'iters':>6}"]
        for row in summary["configurations"]:
            mark = "  <- winner" if row["model"] == summary["winner"]["model"] else ""
            lines.append(f"{row['config']!s:<44} {row[metric]:>10.4f} {row.get('test_auc', float('nan')):>9.4f} "
                         f"{row.get('test_ndcg@10', float('nan')):>8.4f} {row.get('best_iteration', ''):>6}{mark}")
        lines.append(f"winner: {summary['winner']['model']}")
        return lines


class RetrainRanker(DatasetParams, TextParams, ArtifactTask):
    """The periodic entry point: validate the new data, grid-search, and promote the winner through the gate."""

    path_params = ("model", "window_days", "events")
    grid = luigi.DictParameter(default=DEFAULT_GRID, description="Hyperparameter name -> list of values.")
    model = luigi.Parameter(default="ranker", description="Model name whose pointer the winner may replace.")
    tolerance = luigi.FloatParameter(default=0.01, description="How much worse (holdout AUC) than the current "
                                     "model the winner may be and still be promoted.")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_grid(self.grid, TrainRanker)  # now, not after validation has run

    def reference(self) -> str:
        """The current model's training data (drift reference): read once per task, before its address exists."""
        if "_reference" not in self.__dict__:
            from caravan.promotion import reference_dataset

            self.__dict__["_reference"] = reference_dataset(self.model)
        return str(self.__dict__["_reference"])

    def requires(self) -> dict[str, ValidateData]:
        return {"validation": self.clone(ValidateData, reference=self.reference())}

    def grid_search(self) -> GridSearchRanker:
        return self.clone(GridSearchRanker)

    def promotion(self, candidate: str) -> PromoteModel:
        return PromoteModel(model=self.model, candidate=candidate, tolerance=self.tolerance)

    def run(self):  # type: ignore[no-untyped-def]
        grid = self.grid_search()
        yield grid  # after validation: a dynamic dependency, so no training starts on data that fails it
        summary = grid.output().read_json("summary.json")
        promotion = self.promotion(summary["winner"]["model"])
        yield promotion
        verdict = promotion.output().read_json("verdict.json")
        with self.output().writer() as writer:
            writer.write_json("run.json", {"validation": self.input()["validation"].id, "grid": grid.output().id,
                                           "winner": summary["winner"], "promotion": verdict})
            writer.metrics.update(grid.output().metrics)
            writer.metrics["promotion"] = verdict["decision"]

    def summary_lines(self) -> list[str]:
        """The grid's table and the promotion verdict with its reasons (caravan's run summary and `make demo`)."""
        promotion = self.output().read_json("run.json")["promotion"]
        grid = self.grid_search()
        table = grid.summary_lines() if grid.output().exists() else []
        return [*table, f"promotion of {self.model!r}: {promotion['decision']}: {'; '.join(promotion['reasons'])}"]
