"""PSI from binned counts (caravan.monitoring.compute.psi): its properties, and agreement with caravan.ml.stats.psi."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan.ml import stats
from caravan.ml.stats import PSI_EPSILON
from caravan.monitoring.compute import bin_counts, psi, reference_bins

_counts = st.lists(st.integers(0, 10_000), min_size=1, max_size=20).filter(lambda c: sum(c) > 0)


@st.composite
def _pairs(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    first = draw(_counts)
    second = draw(st.lists(st.integers(0, 10_000), min_size=len(first), max_size=len(first)).filter(
        lambda c: sum(c) > 0))
    return first, second


@given(_counts, st.integers(1, 1000))
def test_identical_distributions_give_zero(counts, scale) -> None:
    shares = np.asarray(counts, dtype=np.float64) / sum(counts)
    assert psi(shares, [c * scale for c in counts]) == 0.0
    assert psi(counts, counts) == 0.0


@given(_pairs())
def test_non_negative_and_finite(pair) -> None:
    expected, actual = pair
    value = psi(expected, actual)
    assert value >= 0.0 and math.isfinite(value)


@given(_pairs())
def test_symmetric(pair) -> None:
    # (a - e) ln(a / e) does not change when a and e swap, and the epsilon floor applies to both sides alike.
    expected, actual = pair
    assert psi(expected, actual) == pytest.approx(psi(actual, expected), rel=1e-12, abs=1e-12)


@given(st.integers(2, 12), st.integers(0, 11))
def test_an_empty_bin_counts_as_epsilon(bins, empty) -> None:
    empty %= bins
    expected = [1.0] * bins
    actual = [1.0] * bins
    actual[empty] = 0.0
    e = np.full(bins, 1 / bins)
    a = np.full(bins, 1 / (bins - 1))
    a[empty] = PSI_EPSILON
    assert psi(expected, actual) == pytest.approx(float(np.sum((a - e) * np.log(a / e))))


def test_refuses_what_is_not_two_distributions() -> None:
    for expected, actual in (([1.0], [1.0, 2.0]), ([], []), ([0.0, 0.0], [1.0, 1.0]), ([1.0, 1.0], [0, 0]),
                             ([1.0, -1.0], [1.0, 1.0]), ([1.0, math.nan], [1.0, 1.0])):
        with pytest.raises(ValueError, match="PSI needs"):
            psi(expected, actual)


@given(st.integers(0, 2**32 - 1), st.floats(-3, 3), st.floats(0.2, 3), st.integers(1, 12))
def test_binned_counts_agree_with_the_training_statistics_psi(seed, loc, scale, n_bins) -> None:
    """Counting hour by hour and summing gives the PSI that caravan.ml.stats.psi gives on all values at once."""
    rng = np.random.default_rng(seed)
    reference = stats.column_stats(pa.table({"x": rng.normal(size=500)}), bins=n_bins)["x"]
    served = np.concatenate([rng.normal(loc, scale, 300), [np.nan, np.inf, reference["max"], reference["min"]]])
    bins = reference_bins(reference)
    assert bins is not None
    edges, expected = bins
    counts = bin_counts(edges, served[:150]) + bin_counts(edges, served[150:])
    assert counts.sum() == np.isfinite(served).sum()
    assert psi(expected, counts) == pytest.approx(stats.psi(reference, served), rel=1e-9, abs=1e-12)


def test_columns_without_bins_have_no_reference() -> None:
    assert reference_bins({"kind": "string", "top": []}) is None
    assert reference_bins({"kind": "numeric", "edges": [], "fractions": []}) is None
    assert reference_bins({"kind": "numeric", "edges": [1.0, 1.0], "fractions": [1.0]}) is not None
