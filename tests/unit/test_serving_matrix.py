"""The request-to-matrix fast path agrees with the exact per-value check on any rows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan.serving.model import Feature, LoadedModel, RequestInvalid

FEATURES = [Feature("price", "float64"), Feature("position", "int64"), Feature("popular", "bool")]
values = st.none() | st.booleans() | st.integers(-(10**400), 10**400) | st.floats() | st.text(max_size=3)
rows = st.lists(st.fixed_dictionaries({f.name: values for f in FEATURES}), min_size=1, max_size=6)


def reference(rows: list[dict]) -> np.ndarray:
    return np.array([[f.value(row[f.name], i) for f in FEATURES] for i, row in enumerate(rows)],
                    dtype=np.float64).reshape(len(rows), len(FEATURES))


@given(rows)
def test_fast_matrix_equals_the_exact_check(batch: list[dict]) -> None:
    model = LoadedModel("a", "file:///a", None, list(FEATURES))
    try:
        expected = reference(batch)
    except RequestInvalid:
        with pytest.raises(RequestInvalid) as caught:
            model.matrix(batch)
        assert caught.value.field_name in {f.name for f in FEATURES}
        return
    assert np.array_equal(model.matrix(batch), expected, equal_nan=True)
    assert np.array_equal(model.matrix(batch), expected, equal_nan=True)  # again, from known signatures


def test_a_known_signature_still_refuses_a_non_finite_number() -> None:
    model = LoadedModel("a", "file:///a", None, list(FEATURES))
    model.matrix([{"price": 1.5, "position": 2, "popular": True}])
    with pytest.raises(RequestInvalid, match="price"):
        model.matrix([{"price": float("inf"), "position": 2, "popular": True}])
    with pytest.raises(RequestInvalid, match="price"):
        model.matrix([{"price": float("nan"), "position": 2, "popular": True}])
    assert np.isnan(model.matrix([{"price": None, "position": 2, "popular": True}])[0, 0])
