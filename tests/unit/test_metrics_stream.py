"""Metrics accumulated batch by batch equal the whole-array ones (and scikit-learn's) on random data with ties."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, ndcg_score, roc_auc_score

from caravan.ml import metrics
from caravan.ml.metrics_stream import NdcgStream, ScoreStream

_settings = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def scored_batches(draw, min_rows=1, max_rows=200):
    """Labels, scores with many ties (few distinct levels) or none, cut into batches at random places."""
    n = draw(st.integers(min_rows, max_rows))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < draw(st.sampled_from([0.0, 0.05, 0.5, 0.95, 1.0]))).astype(np.int64)
    levels = draw(st.sampled_from([1, 2, 3, 10, None]))  # None: every score distinct
    scores = rng.random(n) if levels is None else rng.integers(0, levels, n) / max(levels - 1, 1)
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=8)))
    edges = [0, *cuts, n]
    return labels, scores, [(labels[a:b], scores[a:b]) for a, b in itertools.pairwise(edges)]


def _stream(batches, tmp_path, **options) -> ScoreStream:
    stream = ScoreStream(tmp_path, **options)
    for y, s in batches:
        stream.add(y, s)
    return stream


@_settings
@given(data=scored_batches(), chunk=st.sampled_from([2, 7, 16_384]), fan_in=st.sampled_from([2, 3, 32]))
def test_auc_and_average_precision_equal_sklearn_on_any_batching(tmp_path_factory, data, chunk, fan_in):
    labels, scores, batches = data
    # Tiny chunks and fan-ins force merges of merges, as a split of a billion rows would.
    stream = _stream(batches, tmp_path_factory.mktemp("runs"), chunk=chunk, fan_in=fan_in)
    both = 0 < labels.sum() < len(labels)
    if both:
        assert stream.roc_auc() == metrics.roc_auc(labels, scores)  # exact: the same float as the whole array
        # scikit-learn integrates the curve with trapezoids: the same number, rounded differently in the last bit
        assert stream.roc_auc() == pytest.approx(roc_auc_score(labels, scores), rel=1e-14)
    else:
        with pytest.raises(ValueError, match="only one class"):
            stream.roc_auc()
    if labels.any():
        assert stream.average_precision() == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    else:
        with pytest.raises(ValueError, match="no positives"):
            stream.average_precision()


@_settings
@given(data=scored_batches(), chunk=st.sampled_from([3, 16_384]))
def test_log_loss_calibration_and_score_summary_equal_the_whole_array(tmp_path_factory, data, chunk):
    labels, scores, batches = data
    stream = _stream(batches, tmp_path_factory.mktemp("runs"), chunk=chunk, fan_in=2)
    assert stream.rows == len(labels) and stream.positives == labels.sum()
    assert stream.log_loss() == pytest.approx(metrics.log_loss(labels, scores), rel=1e-12, abs=1e-12)
    whole = metrics.calibration(labels, scores)
    streamed = stream.calibration()
    assert [row["count"] for row in streamed] == [row["count"] for row in whole]
    for a, b in zip(streamed, whole, strict=True):
        for key in ("mean_predicted", "observed_rate"):
            assert a[key] == (None if b[key] is None else pytest.approx(b[key], rel=1e-12)), key
    summary, expected = stream.score_summary(), metrics.score_summary(scores)
    assert summary.keys() == expected.keys()
    for key in ("count", "min", "max", "p01", "p10", "p50", "p90", "p99", "distinct_share"):
        assert summary[key] == expected[key], key  # order statistics and counts: exact
    assert summary["mean"] == pytest.approx(expected["mean"], rel=1e-12, abs=1e-12)
    assert summary["std"] == pytest.approx(expected["std"], rel=1e-9, abs=1e-12)


@_settings
@given(data=scored_batches(min_rows=2))
def test_the_thinned_roc_curve_lies_on_the_exact_one(tmp_path_factory, data):
    labels, scores, batches = data
    if not 0 < labels.sum() < len(labels):
        return
    stream = _stream(batches, tmp_path_factory.mktemp("runs"))
    fpr, tpr = stream.roc_curve()
    exact = set(zip(*metrics.roc_curve(labels, scores), strict=True))
    points = list(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert points[0] == (0.0, 0.0) and points[-1] == (1.0, 1.0)
    assert set(points) <= {(float(a), float(b)) for a, b in exact}
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)


def test_a_curve_of_many_distinct_scores_is_thinned_and_the_runs_are_merged_in_levels(tmp_path):
    rng = np.random.default_rng(3)
    labels = (rng.random(300_000) < 0.3).astype(np.int64)
    scores = rng.random(300_000) + labels * 0.2
    stream = ScoreStream(tmp_path, chunk=4096, fan_in=4)
    for start in range(0, len(labels), 10_000):
        stream.add(labels[start:start + 10_000], scores[start:start + 10_000])
    # 30 batches, four runs to a merge: at most three runs waiting on each of three levels.
    assert len(list(tmp_path.iterdir())) <= 3 * 3, "runs were merged as they came, not kept one per batch"
    assert stream.roc_auc() == metrics.roc_auc(labels, scores)
    fpr, _ = stream.roc_curve()
    assert 2000 <= len(fpr) <= 4002


def test_non_finite_scores_are_counted_and_refused_as_the_whole_array_does(tmp_path):
    stream = ScoreStream(tmp_path)
    stream.add([0, 1, 1], [0.1, np.nan, 0.7])
    stream.add([0, 1], [np.inf, 0.9])
    assert stream.nonfinite == 2 and stream.rows == 3
    with pytest.raises(ValueError, match="NaN or infinite"):
        stream.roc_auc()
    with pytest.raises(ValueError, match="0/1 labels"):
        stream.add([2], [0.5])
    with pytest.raises(ValueError, match="y_true is empty"):
        ScoreStream(tmp_path / "empty").log_loss()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 200), users=st.integers(1, 30), k=st.integers(1, 6), partitions=st.integers(1, 7),
       seed=st.integers(0, 2**32 - 1), cuts=st.lists(st.integers(0, 200), max_size=5),
       kind=st.sampled_from(["int", "str"]))
def test_ndcg_over_partitions_equals_the_whole_array_and_sklearn(tmp_path_factory, n, users, k, partitions, seed,
                                                                  cuts, kind):
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, users, n)
    groups = codes if kind == "int" else np.array([f"u{c}" for c in codes], dtype=object)
    labels = (rng.random(n) < 0.3).astype(np.float64)
    scores = rng.integers(0, 4, n) / 3.0  # ties inside groups
    stream = NdcgStream(k, partitions, tmp_path_factory.mktemp("ndcg"))
    edges = [0, *sorted(c for c in cuts if c <= n), n]
    for a, b in itertools.pairwise(edges):
        stream.add(groups[a:b].tolist(), labels[a:b], scores[a:b])
    positive_groups = {g for g, y in zip(groups.tolist(), labels, strict=True) if y > 0}
    if not positive_groups:
        with pytest.raises(ValueError, match="no group has a positive label"):
            stream.ndcg()
        return
    streamed = stream.ndcg()
    assert streamed == pytest.approx(metrics.ndcg_at_k(labels, scores, groups, k=k), rel=1e-12)
    per_user = [ndcg_score([labels[groups == g]], [scores[groups == g]], k=k) if (groups == g).sum() > 1 else 1.0
                for g in sorted(positive_groups)]
    assert streamed == pytest.approx(float(np.mean(per_user)), rel=1e-9)
