"""The promotion gate: a candidate replaces the current model only if it is sound and not worse.

The candidate must load, score the holdout (the test split of the dataset it was trained on,
found through its manifest), not be degenerate (NaN scores, or nearly constant predictions),
and its metric on that holdout must not be worse than the current model's on the same rows by
more than ``tolerance``. The verdict says why, in words an operator can act on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..artifacts import Artifact

#: Below this standard deviation of scores, a model says the same thing about everyone.
MIN_SCORE_STD = 1e-4


def _score(model: Artifact, dataset: Artifact, text: Artifact | None) -> tuple[np.ndarray, np.ndarray]:
    import lightgbm as lgb

    from ..ml.features import feature_matrix, labels, load_split

    schema = model.read_json("features.json")
    booster = lgb.Booster(model_str=model.read_text("model.txt"))
    test = load_split(dataset, text, "test")
    scores = booster.predict(feature_matrix(test, [f["name"] for f in schema["features"]]))
    return labels(test, schema["label"]), np.asarray(scores, dtype=np.float64)


def holdout_of(model: Artifact) -> tuple[Artifact, Artifact | None]:
    """The dataset (and text features) a model artifact was trained on, from its manifest."""
    upstream = model.manifest().get("upstream") or {}
    if not isinstance(upstream, dict) or "dataset" not in upstream:
        raise ValueError(f"{model.id} records no 'dataset' upstream; cannot find its holdout")
    text = upstream.get("text")
    return Artifact(model.store, upstream["dataset"]), (Artifact(model.store, text) if text else None)


def judge(candidate: Artifact, current: Artifact | None, *, tolerance: float = 0.01,
          metric: str = "auc") -> dict[str, Any]:
    """The verdict on ``candidate`` against ``current``: ``{"decision": "promote"|"reject", "reasons": [...]}``."""
    from ..ml import metrics

    score_fn = {"auc": metrics.roc_auc, "average_precision": metrics.average_precision}[metric]
    verdict: dict[str, Any] = {"candidate": candidate.id, "current": current.id if current else None,
                               "metric": metric, "tolerance": tolerance, "reasons": []}
    reasons: list[str] = verdict["reasons"]
    try:
        dataset, text = holdout_of(candidate)
        y, scores = _score(candidate, dataset, text)
    except Exception as exc:  # anything that stops the candidate from loading or scoring rejects it
        reasons.append(f"candidate does not load or score the holdout: {type(exc).__name__}: {exc}")
        verdict["decision"] = "reject"
        return verdict
    verdict["holdout"] = {"dataset": dataset.id, "rows": len(y)}
    if not np.all(np.isfinite(scores)):
        reasons.append(f"candidate gives {int(np.sum(~np.isfinite(scores)))} NaN/infinite scores")
    std = float(np.std(scores)) if len(scores) else 0.0
    verdict["score_std"] = std
    if std < MIN_SCORE_STD:
        reasons.append(f"candidate is degenerate: near-constant predictions (std {std:.2g} < {MIN_SCORE_STD:g})")
    if reasons:
        verdict["decision"] = "reject"
        return verdict
    verdict["candidate_score"] = score_fn(y, scores)
    if current is not None:
        try:
            _, current_scores = _score(current, dataset, text)
            verdict["current_score"] = score_fn(y, current_scores)
        except Exception as exc:
            # The current model cannot score the new holdout (e.g. its features changed): compare
            # the metric each recorded on its own test split instead, and say so.
            verdict["current_score"] = _recorded(current, metric)
            verdict["note"] = (f"current model could not score this holdout ({type(exc).__name__}: {exc}); "
                               + ("compared with its recorded metric" if verdict["current_score"] is not None
                                  else "it has no readable metric, so only the candidate's soundness was judged"))
        if verdict["current_score"] is not None and \
                verdict["candidate_score"] < verdict["current_score"] - tolerance:
            reasons.append(f"candidate {metric} {verdict['candidate_score']:.4f} is worse than the current model's "
                           f"{verdict['current_score']:.4f} by more than the tolerance {tolerance:g}")
    verdict["decision"] = "reject" if reasons else "promote"
    if not reasons:
        current_score = verdict.get("current_score")
        versus = (" (no current model)" if current is None else " (current model has no comparable metric)"
                  if current_score is None else f" vs current {current_score:.4f}")
        reasons.append(f"candidate {metric} {verdict['candidate_score']:.4f}{versus}")
    return verdict


def _recorded(model: Artifact, metric: str) -> float | None:
    try:
        recorded = model.metrics
    except Exception:  # the current model's artifact is gone or corrupt: nothing to compare with
        return None
    for key in (f"test_{metric}", f"valid_{metric}"):
        value = recorded.get(key)
        if isinstance(value, (int, float)):
            return float(value)
    return None
