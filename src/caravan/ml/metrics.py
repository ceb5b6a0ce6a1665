"""Evaluation metrics in plain numpy, matching scikit-learn's definitions, and a PNG evaluation plot.

Only numpy is imported here; matplotlib is imported (with the Agg canvas, no display, no pyplot
state) by :func:`evaluation_plot` alone. Labels are 0/1 (or booleans); scores are any finite reals.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "average_precision",
    "calibration",
    "calibration_sums",
    "calibration_table",
    "evaluation_plot",
    "log_loss",
    "ndcg_at_k",
    "ndcg_per_group",
    "roc_auc",
    "roc_curve",
    "roc_plot",
    "score_summary",
    "score_summary_of",
]

FloatArray = npt.NDArray[np.float64]
#: Points drawn of a ROC curve at most (the AUC in the legend is always exact).
_MAX_CURVE_POINTS = 2000


def _scores(y_score: npt.ArrayLike, name: str = "y_score", n: int | None = None) -> FloatArray:
    """A 1-D float64 array of finite values (of length ``n`` when given)."""
    scores = np.asarray(y_score, dtype=np.float64)
    if scores.ndim == 2 and min(scores.shape) == 1:  # a column or row vector
        scores = scores.reshape(-1)
    if scores.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {scores.shape}")
    if n is not None and len(scores) != n:
        raise ValueError(f"{name} has {len(scores)} values, y_true has {n}")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return scores


def _labels(y_true: npt.ArrayLike) -> FloatArray:
    """0/1 labels as float64; a clear error for anything else or for no labels at all."""
    labels = _scores(y_true, "y_true")
    if len(labels) == 0:
        raise ValueError("y_true is empty")
    if not np.all((labels == 0) | (labels == 1)):
        found = np.unique(labels[(labels != 0) & (labels != 1)])[:5]
        raise ValueError(f"y_true must hold 0/1 labels, found {found.tolist()}")
    return labels


def _both_classes(labels: FloatArray, metric: str) -> tuple[int, int]:
    positives = int(np.count_nonzero(labels))
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        only = "0 (no positives)" if positives == 0 else "1 (no negatives)"
        raise ValueError(f"{metric} is undefined when y_true has only one class: every label is {only}")
    return positives, negatives


def _average_ranks(values: FloatArray) -> FloatArray:
    """1-based ranks, ties sharing the average of their ranks (like scipy.stats.rankdata)."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered[1:] != ordered[:-1]]))
    ends = np.concatenate([starts[1:], [len(values)]])
    average = (starts + ends + 1) / 2.0  # mean of the ranks start+1 .. end
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def roc_auc(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties, as scikit-learn).

    Raises ValueError naming the problem when ``y_true`` has only one class.
    """
    labels = _labels(y_true)
    scores = _scores(y_score, n=len(labels))
    positives, negatives = _both_classes(labels, "ROC AUC")
    rank_sum = float(_average_ranks(scores)[labels == 1].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def _descending_counts(labels: FloatArray, scores: FloatArray) -> tuple[FloatArray, FloatArray]:
    """True and false positives at each distinct threshold, from the highest score down."""
    order = np.argsort(-scores, kind="mergesort")
    ordered = scores[order]
    last = np.concatenate([np.flatnonzero(ordered[1:] != ordered[:-1]), [len(scores) - 1]])
    true_positives = np.cumsum(labels[order])[last]
    false_positives = last + 1 - true_positives
    return true_positives, false_positives.astype(np.float64)


def roc_curve(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """False and true positive rates at every distinct threshold, starting at (0, 0), ending at (1, 1)."""
    labels = _labels(y_true)
    scores = _scores(y_score, n=len(labels))
    positives, negatives = _both_classes(labels, "the ROC curve")
    tps, fps = _descending_counts(labels, scores)
    return np.concatenate([[0.0], fps / negatives]), np.concatenate([[0.0], tps / positives])


def log_loss(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, eps: float = 1e-15) -> float:
    """Mean binary cross-entropy of probabilities ``y_prob`` (clipped to [eps, 1 - eps])."""
    labels = _labels(y_true)
    probabilities = np.clip(_scores(y_prob, "y_prob", n=len(labels)), eps, 1.0 - eps)
    losses = labels * np.log(probabilities) + (1.0 - labels) * np.log1p(-probabilities)
    return float(-losses.mean())


def average_precision(y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> float:
    """Average precision, sum over thresholds of (R_n - R_n-1) * P_n, as scikit-learn's ``average_precision_score``.

    Raises ValueError when ``y_true`` has no positives (recall is undefined).
    """
    labels = _labels(y_true)
    scores = _scores(y_score, n=len(labels))
    if not np.any(labels):
        raise ValueError("average precision is undefined when y_true has no positives")
    tps, fps = _descending_counts(labels, scores)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def ndcg_at_k(y_true: npt.ArrayLike, y_score: npt.ArrayLike, groups: npt.ArrayLike, k: int = 10) -> float:
    """Mean NDCG@k over the groups (e.g. users) that have at least one positive.

    Within a group, items are ranked by score; gains are the labels (any non-negative relevance),
    discounts 1 / log2(rank + 1) for the first ``k`` ranks. Tied scores share their average gain,
    exactly as scikit-learn's ``ndcg_score`` (so each group's value equals ``ndcg_score`` of that group).
    """
    values = ndcg_per_group(y_true, y_score, groups, k)
    if not len(values):
        raise ValueError("NDCG is undefined: no group has a positive label")
    return float(np.mean(values))


def ndcg_per_group(y_true: npt.ArrayLike, y_score: npt.ArrayLike, groups: npt.ArrayLike, k: int = 10) -> FloatArray:
    """NDCG@k of each group that has a positive (see :func:`ndcg_at_k`, their mean), in no particular order."""
    if k < 1:
        raise ValueError(f"k must be >= 1, not {k}")
    gains = _scores(y_true, "y_true")
    if np.any(gains < 0):
        raise ValueError("y_true must be non-negative relevance (0/1 labels)")
    scores = _scores(y_score, n=len(gains))
    group_values = np.asarray(groups)
    if group_values.shape != (len(gains),):
        raise ValueError(f"groups must have one value per row ({len(gains)}), got shape {group_values.shape}")
    if len(gains) == 0:
        raise ValueError("y_true is empty")
    codes = np.unique(group_values, return_inverse=True)[1].reshape(-1)
    # Rows by group, best score first; positions inside a group give the discounts.
    order = np.lexsort((-scores, codes))
    grouped, ranked_scores, ranked_gains = codes[order], scores[order], gains[order]
    new_group = np.concatenate([[True], grouped[1:] != grouped[:-1]])
    group_index = np.cumsum(new_group) - 1
    position = np.arange(len(gains)) - np.flatnonzero(new_group)[group_index]
    discount = np.where(position < k, 1.0 / np.log2(np.minimum(position, k) + 2.0), 0.0)
    # Tied scores in a group form a run: each row of the run gets the run's mean gain.
    new_run = new_group | np.concatenate([[True], ranked_scores[1:] != ranked_scores[:-1]])
    run = np.cumsum(new_run) - 1
    run_mean_gain = np.bincount(run, weights=ranked_gains) / np.bincount(run)
    n_groups = int(group_index[-1]) + 1
    dcg = np.bincount(group_index, weights=run_mean_gain[run] * discount, minlength=n_groups)
    # The ideal ranking: gains sorted descending within each group (same group layout).
    ideal_gains = gains[np.lexsort((-gains, codes))]
    idcg = np.bincount(group_index, weights=ideal_gains * discount, minlength=n_groups)
    has_positive = np.bincount(group_index, weights=(ranked_gains > 0).astype(np.float64), minlength=n_groups) > 0
    return np.asarray(dcg[has_positive] / idcg[has_positive], dtype=np.float64)


def calibration(y_true: npt.ArrayLike, y_prob: npt.ArrayLike, bins: int = 10) -> list[dict[str, Any]]:
    """Reliability table over ``bins`` equal-width bins of [0, 1]: lo, hi, count, mean_predicted, observed_rate.

    Bins are [lo, hi) (the last closed); probabilities outside [0, 1] count in the edge bins.
    Empty bins have ``count`` 0 and None for the means. Counts sum to the number of rows.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, not {bins}")
    labels = _labels(y_true)
    probabilities = _scores(y_prob, "y_prob", n=len(labels))
    counts, predicted, observed = calibration_sums(labels, probabilities, bins)
    return calibration_table(counts, predicted, observed)


def calibration_sums(labels: FloatArray, probabilities: FloatArray, bins: int) -> tuple[FloatArray, ...]:
    """Per bin of [0, 1]: rows, summed probabilities, summed labels (what :func:`calibration` tabulates; they add)."""
    index = np.clip(np.floor(probabilities * bins).astype(np.int64), 0, bins - 1)
    return tuple(np.asarray(np.bincount(index, weights=weights, minlength=bins), dtype=np.float64)
                 for weights in (None, probabilities, labels))


def calibration_table(counts: FloatArray, predicted: FloatArray, observed: FloatArray) -> list[dict[str, Any]]:
    """The reliability table of :func:`calibration` from its per-bin sums."""
    bins = len(counts)
    table = []
    for i in range(bins):
        count = int(counts[i])
        table.append({"lo": round(i / bins, 12), "hi": round((i + 1) / bins, 12), "count": count,
                      "mean_predicted": float(predicted[i] / count) if count else None,
                      "observed_rate": float(observed[i] / count) if count else None})
    return table


def score_summary(y_score: npt.ArrayLike) -> dict[str, float]:
    """Distribution of scores: count, mean, std, min, max, quantiles p01 p10 p50 p90 p99, distinct_share."""
    scores = _scores(y_score)
    if len(scores) == 0:
        raise ValueError("y_score is empty")
    quantiles = np.quantile(scores, SUMMARY_QUANTILES).tolist()
    return score_summary_of(len(scores), float(scores.mean()), float(scores.std()), float(scores.min()),
                            float(scores.max()), quantiles, len(np.unique(scores)))


#: The quantiles :func:`score_summary` reports, named p01 ... p99.
SUMMARY_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)


def score_summary_of(count: int, mean: float, std: float, low: float, high: float, quantiles: Sequence[float],
                     distinct: int) -> dict[str, float]:
    """The :func:`score_summary` document from its parts (quantiles at :data:`SUMMARY_QUANTILES`)."""
    summary = {"count": float(count), "mean": mean, "std": std, "min": low, "max": high}
    summary.update({f"p{round(q * 100):02d}": float(v) for q, v in zip(SUMMARY_QUANTILES, quantiles, strict=True)})
    summary["distinct_share"] = float(distinct / count)
    return summary


def _curve_panels(curve: Mapping[str, Any]) -> dict[str, dict[str, list[float]]]:
    """Training curves grouped into panels: {metric: {dataset: values}}.

    Accepts ``{dataset: [values]}`` (one panel) and LightGBM's ``record_evaluation`` layout
    ``{dataset: {metric: [values]}}`` (one panel per metric).
    """
    panels: dict[str, dict[str, list[float]]] = {}
    for dataset, values in curve.items():
        if isinstance(values, Mapping):
            for metric, series in values.items():
                panels.setdefault(str(metric), {})[str(dataset)] = [float(v) for v in series]
        else:
            panels.setdefault("", {})[str(dataset)] = [float(v) for v in values]
    return panels


def evaluation_plot(y_true: npt.ArrayLike, y_score: npt.ArrayLike,
                    training_curve: Mapping[str, Sequence[float] | Mapping[str, Sequence[float]]] | None = None,
                    ) -> bytes:
    """A PNG: the ROC curve (AUC in the legend) and, side by side, the training curve(s) if given.

    ``training_curve`` is ``{dataset: [metric per iteration]}`` (one line per dataset) or LightGBM's
    ``record_evaluation`` dict ``{dataset: {metric: [...]}}`` (one panel per metric). The image has
    no timestamp or version metadata: the same inputs give the same bytes.
    """
    fpr, tpr = roc_curve(y_true, y_score)
    auc = roc_auc(y_true, y_score)
    if len(fpr) > _MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(fpr) - 1, _MAX_CURVE_POINTS).astype(np.int64))
        fpr, tpr = fpr[keep], tpr[keep]
    return roc_plot(fpr, tpr, auc, training_curve)


def roc_plot(fpr: npt.ArrayLike, tpr: npt.ArrayLike, auc: float,
             training_curve: Mapping[str, Sequence[float] | Mapping[str, Sequence[float]]] | None = None) -> bytes:
    """The PNG of :func:`evaluation_plot` from a computed (possibly thinned) ROC curve and its exact AUC."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = _curve_panels(training_curve) if training_curve else {}
    figure = Figure(figsize=(5.0 * (1 + len(panels)), 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 1 + len(panels), squeeze=False)[0]
    roc = axes[0]
    roc.plot(fpr, tpr, label=f"ROC (AUC = {auc:.4f})", color="tab:blue")
    roc.plot([0, 1], [0, 1], linestyle="--", color="grey", label="chance (AUC = 0.5)")
    roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title="ROC curve")
    roc.legend(loc="lower right")
    for ax, (metric, lines) in zip(axes[1:], panels.items(), strict=True):
        for dataset, values in lines.items():
            ax.plot(np.arange(1, len(values) + 1), values, label=dataset)
        ax.set(xlabel="iteration", ylabel=metric or "metric",
               title=f"training curve: {metric}" if metric else "training curve")
        ax.legend(loc="best")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()
