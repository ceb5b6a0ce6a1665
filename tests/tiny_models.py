"""Tiny datasets and LightGBM models published as artifacts in a second, without running a pipeline.

They have the shape the gate and the server read: a dataset with ``test.parquet`` (the holdout), a model
with ``model.txt``, ``features.json``, ``sample.json`` and its dataset as ``upstream["dataset"]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.ml.features import feature_types
from caravan.storage import open_store

LABEL = "clicked"


def _publish(root: str, family: str, name: str, upstream: Any, files: dict[str, Any],
             metrics: dict[str, Any] | None = None) -> Artifact:
    artifact = Artifact(open_store(root), Address(family=family, params={"name": name}, upstream=upstream))
    with artifact.writer() as writer:
        for file_name, value in files.items():
            if isinstance(value, pa.Table):
                writer.write_parquet(file_name, value)
            elif isinstance(value, str):
                writer.write_text(file_name, value)
            else:
                writer.write_json(file_name, value)
        writer.metrics.update(metrics or {})
    return Artifact(open_store(root), artifact.id)


def make_dataset(root: str, name: str, weights: dict[str, float], *, rows: int = 3000, seed: int = 1,
                 integer: tuple[str, ...] = ()) -> Artifact:
    """A dataset whose label's log-odds are ``sum(weight * column)``: each column adds its weight of signal.

    Columns named in ``integer`` are int64 (small counts), the others float64.
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    logit = np.zeros(rows)
    for column, weight in weights.items():
        values = rng.integers(0, 5, rows).astype(np.int64) if column in integer else rng.normal(size=rows)
        columns[column] = values
        logit += weight * values
    label = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    table = pa.table({**columns, LABEL: label})
    third = rows // 3
    splits = {"train": table.slice(0, third), "valid": table.slice(third, third), "test": table.slice(2 * third)}
    return _publish(root, "PrepareDataset", name, None, {f"{split}.parquet": t for split, t in splits.items()})


def make_model(root: str, dataset: Artifact, features: list[str], *, name: str, iterations: int = 20,
               crash: str | None = None) -> Artifact:
    """A LightGBM model of the dataset's label on ``features``, trained on its train split.

    ``crash``: a :data:`tests.badmodels.CRASHERS` variant, for a model file that kills the process loading it.
    """
    import lightgbm as lgb

    from caravan.ml.features import feature_matrix, labels

    train = dataset.read_parquet("train.parquet")
    valid = dataset.read_parquet("valid.parquet")
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 1, "deterministic": True,
                         "min_data_in_leaf": 20, "num_leaves": 7},
                        lgb.Dataset(feature_matrix(train, features), labels(train, LABEL), feature_name=features),
                        num_boost_round=iterations)
    sample = valid.select(features).slice(0, 32).to_pylist()
    text = booster.model_to_string()
    if crash is not None:
        from .badmodels import crashing_model_text

        text = crashing_model_text(text, crash)
    return _publish(root, "TrainRanker", name, {"dataset": dataset.id},
                    {"model.txt": text,
                     "features.json": {"label": LABEL, "features": feature_types(train, features)},
                     "sample.json": sample},
                    metrics={"n_features": len(features)})


def make_evaluation(root: str, model: Artifact) -> Artifact:
    """An artifact that is not a model (what EvaluateRanker publishes): metrics and a plot."""
    return _publish(root, "EvaluateRanker", "eval", {"model": model.id},
                    {"metrics.json": {"test_auc": 0.7}, "plot.txt": "not a model"}, metrics={"test_auc": 0.7})


def holdout_auc(model: Artifact, dataset: Artifact) -> float:
    """The model's AUC on the dataset's test split (what the gate computes)."""
    import lightgbm as lgb

    from caravan.ml.features import feature_matrix, labels
    from caravan.ml.metrics import roc_auc

    schema = model.read_json("features.json")
    test = dataset.read_parquet("test.parquet")
    booster = lgb.Booster(model_str=model.read_text("model.txt"))
    scores = booster.predict(feature_matrix(test, [f["name"] for f in schema["features"]]))
    return float(roc_auc(labels(test, LABEL), np.asarray(scores)))
