"""caravan.ml.stats: schema skew is always caught and fully reported; statistics and PSI behave."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.ml.stats import (
    SchemaSkewError,
    SkewProblem,
    check_schema,
    column_stats,
    drift_report,
    psi,
    schema_skew,
    table_schema,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
EPOCH = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)

#: Arrow types the generated tables use, with a hypothesis strategy for their (non-null) values.
VALUES = {
    "int64": (pa.int64(), st.integers(-(2**40), 2**40)),
    "int32": (pa.int32(), st.integers(-1000, 1000)),
    "int8": (pa.int8(), st.integers(0, 1)),
    "double": (pa.float64(), st.floats(-1e9, 1e9, allow_nan=False)),
    "string": (pa.string(), st.text(max_size=12)),
    "bool": (pa.bool_(), st.booleans()),
    "timestamp[us, tz=UTC]": (pa.timestamp("us", tz="UTC"),
                              st.integers(0, 10**6).map(lambda s: EPOCH + dt.timedelta(seconds=s))),
    "date32[day]": (pa.date32(), st.dates(dt.date(2000, 1, 1), dt.date(2030, 1, 1))),
}
NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10)


@st.composite
def tables(draw: st.DrawFn) -> pa.Table:
    """A table of 1-6 columns of mixed types and 1-25 rows, without nulls."""
    names = draw(st.lists(NAMES, min_size=1, max_size=6, unique=True))
    rows = draw(st.integers(1, 25))
    columns = {}
    for name in names:
        type_, values = VALUES[draw(st.sampled_from(sorted(VALUES)))]
        columns[name] = pa.array(draw(st.lists(values, min_size=rows, max_size=rows)), type=type_)
    return pa.table(columns)


def changed_type(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """The same values under another type."""
    if pa.types.is_string(column.type):
        return column.cast(pa.large_string())
    if pa.types.is_integer(column.type):
        return column.cast(pa.float64())
    return column.cast(pa.string())


def with_a_null(column: pa.ChunkedArray, row: int) -> pa.Array:
    values = column.to_pylist()
    values[row % len(values)] = None
    return pa.array(values, type=column.type)


def listed_columns(error: SchemaSkewError) -> set[str]:
    """The columns the message lists, one problem per line after the header."""
    header, *lines = str(error).splitlines()
    assert "schema skew" in header
    return {line.strip().split(": ", 1)[0] for line in lines}


@FAST
@given(tables(), st.data())
def test_any_injected_skew_raises_naming_every_offending_column_and_no_other(table, data):
    expected = table_schema(table)
    names = table.column_names
    dropped = set(data.draw(st.sets(st.sampled_from(names)), label="dropped"))
    kept = [n for n in names if n not in dropped]
    retyped = set(data.draw(st.sets(st.sampled_from(kept)), label="retyped")) if kept else set()
    nulled = set(data.draw(st.sets(st.sampled_from(kept)), label="nulled")) if kept else set()
    clean_non_nullable = set(data.draw(st.sets(st.sampled_from(kept)), label="clean")) if kept else set()
    added = set(data.draw(st.sets(NAMES.filter(lambda n: n not in names), max_size=3), label="added"))
    row = data.draw(st.integers(0, 1000), label="null row")

    skewed = table.drop_columns(sorted(dropped))
    for name in sorted(retyped | nulled):
        column = skewed[name]
        if name in nulled:
            column = pa.chunked_array([with_a_null(column, row)])
        if name in retyped:
            column = changed_type(column)
        skewed = skewed.set_column(skewed.schema.get_field_index(name), name, column)
    for name in sorted(added):
        skewed = skewed.append_column(name, pa.array(range(skewed.num_rows), type=pa.int64()))
    non_nullable = sorted(nulled | clean_non_nullable | dropped)

    offending = dropped | retyped | nulled | added
    if not offending:
        check_schema(expected, skewed, non_nullable)
        assert schema_skew(expected, skewed, non_nullable) == []
        return
    with pytest.raises(SchemaSkewError) as info:
        check_schema(expected, skewed, non_nullable)
    error = info.value
    assert isinstance(error, ValueError)
    assert {p.column for p in error.problems} == offending
    assert listed_columns(error) == offending
    kinds = {(p.column, p.kind) for p in error.problems}
    assert kinds == ({(n, "missing") for n in dropped} | {(n, "unexpected") for n in added}
                     | {(n, "type") for n in retyped} | {(n, "nulls") for n in nulled})
    assert [(p.column, p.kind) for p in error.problems] == sorted(
        [(p.column, p.kind) for p in error.problems],
        key=lambda ck: (ck[0], ["missing", "unexpected", "type", "nulls"].index(ck[1])))


@FAST
@given(tables(), st.randoms(use_true_random=False))
def test_unchanged_tables_never_raise_whatever_the_column_order(table, random):
    expected = json.loads(json.dumps(table_schema(table)))  # as stored: a JSON round trip
    names = table.column_names
    check_schema(expected, table, non_nullable=names)
    shuffled = list(names)
    random.shuffle(shuffled)
    check_schema(expected, table.select(shuffled), non_nullable=names)
    # nulls are fine where they are allowed
    nullable = table.set_column(0, names[0], pa.chunked_array([with_a_null(table[names[0]], 0)]))
    check_schema(expected, nullable, non_nullable=names[1:])


def test_schema_json_and_the_error_message():
    table = pa.table({"a": pa.array([1, None], type=pa.int64()), "b": ["x", "y"], "c": [1.0, 2.0]})
    expected = table_schema(table)
    assert expected == {"columns": [{"name": "a", "type": "int64", "nullable": True},
                                    {"name": "b", "type": "string", "nullable": True},
                                    {"name": "c", "type": "double", "nullable": True}]}
    skewed = table.drop_columns(["c"]).append_column("d", pa.array([1, 2])).set_column(
        1, "b", pa.array([1, 2], type=pa.int32()))
    with pytest.raises(SchemaSkewError) as info:
        check_schema(expected, skewed, non_nullable=["a"])
    assert info.value.problems == [
        SkewProblem("a", "nulls", "1 null(s) in a non-nullable column"),
        SkewProblem("b", "type", "expected string, found int32"),
        SkewProblem("c", "missing", "expected double"),
        SkewProblem("d", "unexpected", "not in the expected schema, type int64"),
    ]
    message = str(info.value)
    assert message.splitlines()[1:] == ["  a: nulls (1 null(s) in a non-nullable column)",
                                        "  b: type (expected string, found int32)", "  c: missing (expected double)",
                                        "  d: unexpected (not in the expected schema, type int64)"]
    copy = pickle.loads(pickle.dumps(info.value))  # noqa: S301 (our own bytes: the error crosses processes)
    assert copy.problems == info.value.problems and str(copy) == message


@FAST
@given(tables(), st.integers(1, 20))
def test_column_stats_are_json_and_fractions_sum_to_one(table, bins):
    stats = column_stats(table, bins=bins)
    json.dumps(stats, allow_nan=False)
    assert list(stats) == table.column_names
    for name, column in stats.items():
        assert column["count"] == table.num_rows and column["nulls"] == 0
        if column["kind"] == "numeric":
            edges, fractions = column["edges"], column["fractions"]
            assert 2 <= len(edges) <= bins + 1 or len(set(edges)) == 1
            assert len(fractions) == len(edges) - 1
            assert sum(fractions) == pytest.approx(1.0)
            assert edges == sorted(edges) and column["min"] == edges[0] and column["max"] == edges[-1]
            assert psi(column, table[name].cast(pa.float64()).to_numpy()) == 0.0
        elif column["kind"] == "string":
            assert sum(t["count"] for t in column["top"]) <= table.num_rows
            assert len(column["top"]) == min(10, column["distinct"])


def test_column_stats_by_kind():
    times = [EPOCH + dt.timedelta(hours=h) for h in (5, 1, 3)]
    table = pa.table({"x": pa.array([1.0, None, 3.0]), "s": ["b", "a", "b"],
                      "t": pa.array(times, type=pa.timestamp("us", tz="UTC")), "l": [[1], [2], []]})
    stats = column_stats(table)
    assert stats["x"]["nulls"] == 1 and stats["x"]["mean"] == 2.0 and stats["x"]["edges"] == [1.0, 2.0, 3.0]
    assert stats["x"]["fractions"] == [0.5, 0.5]
    assert stats["s"]["distinct"] == 2 and stats["s"]["top"] == [{"value": "b", "count": 2}, {"value": "a", "count": 1}]
    assert stats["t"]["min"] == "2020-01-01T01:00:00+00:00" and stats["t"]["max"] == "2020-01-01T05:00:00+00:00"
    assert stats["l"]["kind"] == "other"


def test_psi_is_zero_on_identical_data_and_grows_with_the_mean_shift():
    values = np.random.default_rng(42).normal(5.0, 2.0, 20_000)
    reference = column_stats(pa.table({"x": values}))["x"]
    assert psi(reference, values) == 0.0
    shifts = [0.0, 0.25, 0.5, 1.0, 2.0]
    scores = [psi(reference, values + shift * 2.0) for shift in shifts]
    assert scores[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(scores)), scores
    assert scores[1] < 0.2 < scores[3]  # a quarter std is mild, one std is a significant shift
    # a fresh sample from the same distribution is close to 0
    fresh = np.random.default_rng(7).normal(5.0, 2.0, 20_000)
    assert psi(reference, fresh) < 0.01


def test_drift_report_covers_numeric_columns_in_both():
    rng = np.random.default_rng(0)
    reference = pa.table({"a": rng.normal(size=5000), "b": rng.integers(0, 2, 5000), "s": ["x"] * 5000,
                          "gone": rng.normal(size=5000)})
    stats = column_stats(reference)
    new = pa.table({"a": rng.normal(size=5000) + 1.0, "b": (rng.random(5000) < 0.9).astype(np.int64),
                    "s": ["y"] * 5000, "extra": rng.normal(size=5000)})
    report = drift_report(stats, new)
    assert list(report) == ["a", "b"]
    assert report["a"] > 0.2 and report["b"] > 0.2  # a binary column's rate change shows too
    assert list(drift_report(stats, new, columns=["b", "s", "nope"])) == ["b"]
    assert drift_report(stats, reference) == {"a": 0.0, "b": 0.0, "gone": 0.0}
    with pytest.raises(ValueError, match="no bins"):
        psi(stats["s"], np.array([1.0]))
