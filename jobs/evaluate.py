"""Step ``evaluate``: score the test split; metrics, calibration, score distribution and a PNG plot.

The test split is read in record batches (:class:`caravan.ml.split_batches.SplitBatches`: only the
features, the label and the group column), each batch is scored and folded into streaming metrics
(:mod:`caravan.ml.metrics_stream`), so memory holds a batch, not the split, whatever its size. The
numbers are those of the whole-array path: AUC exactly, log loss and the rest up to float summation
order. :func:`evaluate_in_memory` is that former path, kept for the memory test and ``bench/scale.py``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

from caravan.step import StepContext, run_step

from .common import feature_matrix, labels, lightgbm_without_extras, load_split

#: Groups' rows are spread over at most this many partition files for NDCG (one is in memory at a time).
_MAX_NDCG_PARTITIONS = 256


def evaluate(ctx: StepContext) -> None:
    import lightgbm as lgb

    from caravan.ml import metrics
    from caravan.ml.metrics_stream import NdcgStream, ScoreStream
    from caravan.ml.split_batches import DEFAULT_BATCH_ROWS, SplitBatches

    p = ctx.params
    model = ctx.inputs["model"]
    schema = model.read_json("features.json")
    features = [f["name"] for f in schema["features"]]
    label = schema["label"]
    booster = lgb.Booster(model_str=model.read_text("model.txt"))
    group = p.get("group_column") or None
    k = int(p.get("k", 10))
    batch_rows = int(p.get("batch_rows") or DEFAULT_BATCH_ROWS)
    wanted = [*features, label, *([group] if group else [])]
    with contextlib.ExitStack() as stack:
        split = stack.enter_context(SplitBatches(ctx.inputs["dataset"], ctx.inputs.get("text"), "test", wanted,
                                                 batch_rows))
        stream = stack.enter_context(ScoreStream())
        ndcg = None
        if group:
            if group not in split.column_names:
                raise KeyError(f"group column {group!r} is not in the test split (columns: {split.column_names})")
            partitions = min(_MAX_NDCG_PARTITIONS, max(1, math.ceil(split.rows / batch_rows)))
            ndcg = stack.enter_context(NdcgStream(k, partitions))
        for batch in split:
            y = labels(batch, label)
            scores = booster.predict(feature_matrix(batch, features))
            stream.add(y, scores)
            if ndcg is not None:
                ndcg.add(batch[group], y, scores)
        result: dict[str, Any] = {
            "test_auc": stream.roc_auc(),
            "test_logloss": stream.log_loss(),
            "test_average_precision": stream.average_precision(),
            "rows_test": stream.rows,
        }
        if ndcg is not None:
            result[f"test_ndcg@{k}"] = ndcg.ndcg()
        calibration, summary = stream.calibration(), stream.score_summary()
        fpr, tpr = stream.roc_curve()
    ctx.writer.write_json("metrics.json", result)
    ctx.writer.write_json("calibration.json", calibration)
    ctx.writer.write_json("scores.json", summary)
    ctx.writer.write_bytes("evaluation.png", metrics.roc_plot(fpr, tpr, result["test_auc"],
                                                              model.read_json("curve.json")))
    _record(ctx, result, model.id)


def evaluate_in_memory(ctx: StepContext) -> None:
    """The whole-split path: the test split, its feature matrix and its scores in memory at once."""
    import lightgbm as lgb

    from caravan.ml import metrics

    p = ctx.params
    model = ctx.inputs["model"]
    test = load_split(ctx.inputs["dataset"], ctx.inputs.get("text"), "test")
    schema = model.read_json("features.json")
    booster = lgb.Booster(model_str=model.read_text("model.txt"))
    y = labels(test, schema["label"])
    scores = booster.predict(feature_matrix(test, [f["name"] for f in schema["features"]]))
    result: dict[str, Any] = {
        "test_auc": metrics.roc_auc(y, scores),
        "test_logloss": metrics.log_loss(y, scores),
        "test_average_precision": metrics.average_precision(y, scores),
        "rows_test": len(y),
    }
    group = p.get("group_column")
    if group:
        k = int(p.get("k", 10))
        groups = test[group].to_numpy(zero_copy_only=False)
        result[f"test_ndcg@{k}"] = metrics.ndcg_at_k(y, scores, groups, k=k)
    ctx.writer.write_json("metrics.json", result)
    ctx.writer.write_json("calibration.json", metrics.calibration(y, scores))
    ctx.writer.write_json("scores.json", metrics.score_summary(scores))
    ctx.writer.write_bytes("evaluation.png", metrics.evaluation_plot(y, scores, model.read_json("curve.json")))
    _record(ctx, result, model.id)


def _record(ctx: StepContext, result: dict[str, Any], model_id: str) -> None:
    ctx.writer.metrics.update({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()})
    ctx.writer.metrics["model"] = model_id


if __name__ == "__main__":
    lightgbm_without_extras()
    run_step(evaluate, job="evaluate")
