"""The prepare step's checks: a table that cannot train a 0/1 classifier fails with one line naming why."""

from __future__ import annotations

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.prepare_dataset import DataCheckFailed, check_label, check_split, id_like_columns, unusable_columns


def one_line(info: pytest.ExceptionInfo[DataCheckFailed]) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(("values", "shown"), [
    ([0, 1, 2, 1], "0, 1, 2"),
    ([0.0, 0.31, 0.97, 1.0], "0.31"),
])
def test_a_label_that_is_not_0_1_is_refused_showing_its_values(values, shown):
    with pytest.raises(DataCheckFailed) as info:
        check_label(pa.table({"y": values}), "y")
    message = one_line(info)
    assert "'y'" in message and shown in message and "0/1" in message


def test_a_label_with_nulls_is_refused_counting_them():
    with pytest.raises(DataCheckFailed) as info:
        check_label(pa.table({"y": [0, None, 1, None]}), "y")
    assert "'y' has 2 nulls" in one_line(info)


def test_a_string_label_is_refused_naming_its_type_and_values():
    with pytest.raises(DataCheckFailed) as info:
        check_label(pa.table({"y": ["yes", "no", "yes"]}), "y")
    message = one_line(info)
    assert "string" in message and "'yes'" in message and "0/1" in message


def test_a_misspelt_label_is_refused_suggesting_the_column():
    with pytest.raises(DataCheckFailed) as info:
        check_label(pa.table({"target": [0, 1], "x": [1.0, 2.0]}), "tagret")
    message = one_line(info)
    assert "'tagret' is not in the table" in message and "did you mean 'target'" in message


@pytest.mark.parametrize("column", [pa.array([True, False]), pa.array([0, 1], pa.int8()), pa.array([1.0, 0.0])])
def test_bool_and_exact_0_1_numbers_are_labels(column):
    check_label(pa.table({"y": column}), "y")


@given(st.lists(st.integers(-3, 3), min_size=1, max_size=20), st.sampled_from(["int64", "float64", "int8"]))
def test_a_numeric_label_passes_exactly_when_it_holds_only_0_and_1(values, kind):
    table = pa.table({"y": pa.array(values).cast(kind)})
    if set(values) <= {0, 1}:
        check_label(table, "y")
    else:
        with pytest.raises(DataCheckFailed):
            check_label(table, "y")


def test_a_split_with_one_class_is_refused_naming_the_split():
    with pytest.raises(DataCheckFailed) as info:
        check_split("valid", pa.table({"y": [0] * 30}), "y", min_rows=20)
    message = one_line(info)
    assert "valid split has only label 0" in message and "both classes" in message


def test_a_split_with_too_few_rows_is_refused_naming_the_split_and_the_minimum():
    with pytest.raises(DataCheckFailed) as info:
        check_split("test", pa.table({"y": [0, 1, 0, 1, 1]}), "y", min_rows=20)
    assert "test split has 5 rows, fewer than --min-rows 20" in one_line(info)
    check_split("test", pa.table({"y": [0, 1, 0, 1, 1]}), "y", min_rows=5)


def test_unusable_feature_columns_are_listed_with_why():
    table = pa.table({"x": [1.0, 2.0], "desc": ["a", "b"], "empty": pa.array([None, None], pa.float64()),
                      "nothing": pa.nulls(2), "when": pa.array([1, 2], pa.timestamp("s")), "title": ["t", "u"],
                      "y": [0, 1]})
    found = unusable_columns(table.schema, table, handled=["y", "title"])
    assert found == ["desc (string; add it to --text-columns to use it)", "empty (all null)", "nothing (all null)",
                     "when (timestamp[s])"]


def test_columns_named_like_ids_are_found_unless_handled():
    schema = pa.schema([("id", pa.int64()), ("customer_id", pa.int32()), ("user_id", pa.int64()),
                        ("idle", pa.float64()), ("paid", pa.float64()), ("order_id", pa.string())])
    assert id_like_columns(schema, handled=["user_id"]) == ["id", "customer_id"]
