"""Step ``evaluate``: score the test split; metrics, calibration, score distribution and a PNG plot."""

from __future__ import annotations

from typing import Any

from caravan.step import StepContext, run_step

from .common import feature_matrix, labels, load_split


def evaluate(ctx: StepContext) -> None:
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
    ctx.writer.metrics.update({k: round(v, 6) if isinstance(v, float) else v for k, v in result.items()})
    ctx.writer.metrics["model"] = model.id


if __name__ == "__main__":
    run_step(evaluate, job="evaluate")
