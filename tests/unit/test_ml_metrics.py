"""caravan.ml.metrics agrees with scikit-learn, handles ties, and draws a PNG."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from caravan.ml import metrics

TOLERANCE = 1e-9
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def labelled_scores(draw: st.DrawFn, min_size: int = 2, max_size: int = 120):
    """Labels with both classes and scores with plenty of ties (few distinct values) or none."""
    n = draw(st.integers(min_size, max_size))
    labels = np.array(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)), dtype=np.int64)
    assume(0 < labels.sum() < n)
    if draw(st.booleans()):
        levels = draw(st.integers(1, 6))
        scores = np.array(draw(st.lists(st.integers(0, levels), min_size=n, max_size=n)), dtype=np.float64) / levels
    else:
        scores = np.array(draw(st.lists(st.floats(0, 1, allow_nan=False), min_size=n, max_size=n)))
    return labels, scores


@FAST
@given(labelled_scores())
def test_roc_auc_matches_sklearn_with_ties(data):
    labels, scores = data
    assert metrics.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=TOLERANCE)


@FAST
@given(labelled_scores())
def test_roc_curve_area_is_the_auc_and_ends_at_one(data):
    labels, scores = data
    fpr, tpr = metrics.roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(metrics.roc_auc(labels, scores), abs=TOLERANCE)
    sk_fpr, sk_tpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr, atol=TOLERANCE)
    np.testing.assert_allclose(tpr, sk_tpr, atol=TOLERANCE)


@FAST
@given(labelled_scores())
def test_log_loss_matches_sklearn(data):
    labels, probabilities = data
    expected = skm.log_loss(labels, probabilities, labels=[0, 1])
    assert metrics.log_loss(labels, probabilities, eps=np.finfo(np.float64).eps) == pytest.approx(expected,
                                                                                                 abs=TOLERANCE)


@FAST
@given(labelled_scores())
def test_average_precision_matches_sklearn(data):
    labels, scores = data
    expected = skm.average_precision_score(labels, scores)
    assert metrics.average_precision(labels, scores) == pytest.approx(expected, abs=TOLERANCE)


@FAST
@given(labelled_scores(max_size=80), st.data(), st.integers(1, 12))
def test_ndcg_is_the_mean_of_sklearn_ndcg_over_groups_with_a_positive(data, draw, k):
    labels, scores = data
    groups = np.array(draw.draw(st.lists(st.integers(0, 6), min_size=len(labels), max_size=len(labels))))
    per_group = []
    for group in np.unique(groups):
        mask = groups == group
        if labels[mask].sum() == 0:
            continue
        if mask.sum() == 1:
            per_group.append(1.0)  # a single positive item is ranked perfectly (sklearn refuses one document)
        else:
            per_group.append(skm.ndcg_score([labels[mask]], [scores[mask]], k=k))
    assert metrics.ndcg_at_k(labels, scores, groups, k=k) == pytest.approx(float(np.mean(per_group)), abs=TOLERANCE)


def test_ndcg_accepts_string_groups_and_needs_a_positive():
    labels = np.array([1, 0, 0, 1, 0])
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7])
    groups = np.array(["ann", "ann", "bob", "bob", "bob"], dtype=object)
    expected = (1.0 + skm.ndcg_score([[0, 1, 0]], [[0.1, 0.2, 0.7]], k=10)) / 2
    assert metrics.ndcg_at_k(labels, scores, groups) == pytest.approx(expected, abs=TOLERANCE)
    with pytest.raises(ValueError, match="no group has a positive"):
        metrics.ndcg_at_k([0, 0], [0.1, 0.2], [1, 2])


@pytest.mark.parametrize("function", [metrics.roc_auc, metrics.roc_curve])
@pytest.mark.parametrize("label", [0, 1])
def test_single_class_raises_a_value_error_naming_the_problem(function, label):
    with pytest.raises(ValueError, match="only one class"):
        function([label] * 5, [0.1, 0.2, 0.3, 0.4, 0.5])


def test_bad_inputs_are_refused_clearly():
    with pytest.raises(ValueError, match="0/1 labels"):
        metrics.roc_auc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="has 3 values"):
        metrics.log_loss([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no positives"):
        metrics.average_precision([0, 0], [0.1, 0.2])


@FAST
@given(labelled_scores(min_size=1), st.integers(1, 20))
def test_calibration_counts_sum_to_n_and_means_are_per_bin(data, bins):
    labels, probabilities = data
    table = metrics.calibration(labels, probabilities, bins=bins)
    assert len(table) == bins
    assert sum(row["count"] for row in table) == len(labels)
    assert table[0]["lo"] == 0.0 and table[-1]["hi"] == 1.0
    for row in table:
        if row["count"]:
            assert row["lo"] - 1e-12 <= row["mean_predicted"] <= row["hi"] + 1e-12
            assert 0.0 <= row["observed_rate"] <= 1.0
        else:
            assert row["mean_predicted"] is None and row["observed_rate"] is None


def test_score_summary_has_the_distribution():
    scores = np.linspace(0, 1, 101)
    summary = metrics.score_summary(np.concatenate([scores, scores]))
    assert summary["min"] == 0.0 and summary["max"] == 1.0
    assert summary["p50"] == pytest.approx(0.5) and summary["p10"] == pytest.approx(0.1)
    assert summary["distinct_share"] == pytest.approx(0.5)
    assert set(summary) >= {"mean", "std", "min", "max", "p01", "p10", "p50", "p90", "p99", "distinct_share"}


def test_evaluation_plot_is_a_png_with_or_without_training_curves():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 5000)
    scores = labels * 0.3 + rng.random(5000)
    plain = metrics.evaluation_plot(labels, scores)
    assert plain.startswith(b"\x89PNG\r\n\x1a\n")
    flat = metrics.evaluation_plot(labels, scores, {"train": [0.7, 0.6, 0.55], "valid": [0.72, 0.66, 0.65]})
    lightgbm_layout = {"train": {"auc": [0.6, 0.7], "binary_logloss": [0.5, 0.4]},
                       "valid": {"auc": [0.58, 0.66], "binary_logloss": [0.52, 0.45]}}
    nested = metrics.evaluation_plot(labels, scores, lightgbm_layout)
    assert flat.startswith(b"\x89PNG") and nested.startswith(b"\x89PNG")
    assert metrics.evaluation_plot(labels, scores, lightgbm_layout) == nested  # no timestamps in the image


def test_importing_metrics_does_not_import_matplotlib():
    code = "import sys, caravan.ml.metrics; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
