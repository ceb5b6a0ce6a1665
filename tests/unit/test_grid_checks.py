"""A grid search's grid and metric are checked when the task is made, before anything is scheduled or dispatched."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan import ConfigurationError
from pipelines.ranker import GRID_METRICS, GridSearchRanker, RetrainRanker, TrainRanker, check_grid, check_metric

DAY = dt.date(2026, 11, 22)


@pytest.mark.parametrize(("grid", "expected"), [
    ({"num_leaves": ["abc"]}, 'grid: num_leaves takes an integer, not "abc"'),
    ([1, 2], "grid must be a JSON object of lists"),
    ({}, "grid is empty"),
    ({"num_leafs": [7]}, "grid names parameters TrainRanker does not have: num_leafs (allowed: "),
    ({"num_leaves": 15}, "num_leaves must be a non-empty list of values, not 15"),
    ({"num_leaves": []}, "num_leaves must be a non-empty list of values, not []"),
    ({"learning_rate": [0.1, True], "num_leaves": [15.0]},
     "grid: learning_rate takes a number, not true; num_leaves takes an integer, not 15.0"),
    ({"objective": ["binary", 3]}, "objective takes a string, not 3"),
])
def test_a_bad_grid_is_refused_in_one_line_before_anything_runs(local_root, grid, expected):
    for task in (GridSearchRanker, RetrainRanker):
        with pytest.raises(ConfigurationError) as info:
            task(date=DAY, grid=grid)
        assert expected in str(info.value)
        assert "\n" not in str(info.value)


def test_an_unknown_metric_is_refused_listing_the_valid_names(local_root):
    with pytest.raises(ConfigurationError) as info:
        GridSearchRanker(date=DAY, metric="valid_acu")
    message = str(info.value)
    assert "'valid_acu'" in message and all(name in message for name in GRID_METRICS)
    assert check_metric("-valid_logloss") == "-valid_logloss"


def test_a_good_grid_gives_every_configuration(local_root):
    task = GridSearchRanker(date=DAY, grid={"learning_rate": [0.05, 0.1], "num_leaves": [7], "objective": ["binary"]})
    assert task.configurations() == [{"learning_rate": lr, "num_leaves": 7, "objective": "binary"}
                                     for lr in (0.05, 0.1)]


@given(st.lists(st.one_of(st.integers(-5, 500), st.floats(allow_nan=False), st.text(max_size=3), st.booleans(),
                          st.none()), min_size=1, max_size=4))
def test_num_leaves_takes_exactly_integers(values):
    is_int = [isinstance(v, int) and not isinstance(v, bool) for v in values]
    if all(is_int):
        assert len(check_grid({"num_leaves": values}, TrainRanker)) == len(values)
    else:
        with pytest.raises(ConfigurationError, match="num_leaves takes an integer"):
            check_grid({"num_leaves": values}, TrainRanker)
