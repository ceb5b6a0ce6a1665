"""Any Parquet table with a label column: the ranker's steps, no code to write.

    luigi --module pipelines.tabular EvaluateTabular --dataset s3://bucket/table/ --label target \\
        [--key customer_id] [--text-columns '["description"]'] --local-scheduler

The table is split by a seeded hash of ``--key`` (or of the row number), hashed text features are
added for ``--text-columns``, and every other numeric column is a feature.
"""

from __future__ import annotations

from typing import Any

import luigi

from caravan.dataio import DataURIParameter, ParquetSource
from caravan.tasks import NomadJobTask


class TableParams:
    """What decides the dataset."""

    dataset = DataURIParameter(description="Parquet file, folder or prefix (a path, s3://..., hdfs://...).")
    label = luigi.Parameter(description="The 0/1 label column.")
    key = luigi.Parameter(default="", description="Rows with the same key land in the same split ('' = by row).")
    text_columns = luigi.ListParameter(default=[], description="Text columns to hash-vectorize into features.")
    n_features = luigi.IntParameter(default=32, description="Hashed features per text column.")
    seed = luigi.IntParameter(default=7, description="Seed of the split and of the training.")
    valid_fraction = luigi.FloatParameter(default=0.15, description="Share of rows for validation.")
    test_fraction = luigi.FloatParameter(default=0.2, description="Share of rows for the test.")
    min_rows = luigi.IntParameter(default=20, significant=False,
                                  description="Rows every split needs at least; fewer stops the preparation.")


class PrepareTable(TableParams, NomadJobTask):
    """The table, split train/valid/test by a seeded hash, with its schema and statistics."""

    job = "prepare-dataset"

    def requires(self) -> dict[str, luigi.Task]:
        return {"table": ParquetSource(uri=self.dataset)}

    def hyperparameters(self) -> dict[str, Any]:
        return {"sources": [self.dataset], "split": "hash", "key": self.key, "seed": self.seed,
                "valid_fraction": self.valid_fraction, "test_fraction": self.test_fraction, "label": self.label,
                "min_rows": self.min_rows, "text_columns": list(self.text_columns)}


class ProcessTableText(TableParams, NomadJobTask):
    """Hashed features of the text columns."""

    job = "process-text"

    def requires(self) -> dict[str, PrepareTable]:
        return {"dataset": self.clone(PrepareTable)}

    def hyperparameters(self) -> dict[str, Any]:
        return {"text_columns": list(self.text_columns), "n_features": self.n_features, "seed": self.seed}


class TabularTrainParams(TableParams):
    """LightGBM hyperparameters."""

    learning_rate = luigi.FloatParameter(default=0.05, description="Shrinkage rate.")
    num_leaves = luigi.IntParameter(default=15, description="Maximum leaves per tree.")
    num_iterations = luigi.IntParameter(default=300, description="Boosting rounds.")
    min_data_in_leaf = luigi.IntParameter(default=10, description="Minimum rows per leaf.")
    feature_fraction = luigi.FloatParameter(default=0.9, description="Share of features per tree.")
    early_stopping_rounds = luigi.IntParameter(default=30, description="Early stopping patience.")
    num_threads = luigi.IntParameter(default=1, description="Training threads (see pipelines.ranker).")

    def data_inputs(self) -> dict[str, NomadJobTask]:
        inputs: dict[str, NomadJobTask] = {"dataset": self.clone(PrepareTable)}  # type: ignore[attr-defined]
        if self.text_columns:
            inputs["text"] = self.clone(ProcessTableText)  # type: ignore[attr-defined]
        return inputs


class TrainTabular(TabularTrainParams, NomadJobTask):
    """A LightGBM classifier of the label."""

    job = "train-lightgbm"

    def requires(self) -> dict[str, NomadJobTask]:
        return self.data_inputs()

    def hyperparameters(self) -> dict[str, Any]:
        exclude = [self.label, *([self.key] if self.key else []), *self.text_columns]
        return {"label": self.label, "exclude": exclude, "objective": "binary", "learning_rate": self.learning_rate,
                "num_leaves": self.num_leaves, "num_iterations": self.num_iterations,
                "min_data_in_leaf": self.min_data_in_leaf, "feature_fraction": self.feature_fraction,
                "early_stopping_rounds": self.early_stopping_rounds, "num_threads": self.num_threads,
                "seed": self.seed}


class EvaluateTabular(TabularTrainParams, NomadJobTask):
    """Test-split metrics and a plot."""

    job = "evaluate"

    def requires(self) -> dict[str, NomadJobTask]:
        return {"model": self.clone(TrainTabular), **self.data_inputs()}

    def hyperparameters(self) -> dict[str, Any]:
        return {"group_column": ""}
