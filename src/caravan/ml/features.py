"""Feature matrices from dataset artifacts: the splits plus their shared text features, as training saw them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import Artifact

SPLITS = ("train", "valid", "test")
_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


def numeric_columns(schema: pa.Schema, exclude: Sequence[str]) -> list[str]:
    """Columns usable as numeric features: integers, floats, booleans, minus ``exclude``."""
    return [f.name for f in schema if f.name not in exclude and any(check(f.type) for check in _NUMERIC)]


def load_split(dataset: Artifact, text: Artifact | None, split: str) -> pa.Table:
    """One split of the dataset, with the shared text features appended column-wise (same row order).

    A text feature the split already has is kept, in the text step's type: a day of the event log
    (``--events logged``) carries the features as they were scored, its text column is not logged.
    """
    table = dataset.read_parquet(f"{split}.parquet")
    if text is None:
        return table
    return with_text_features(table, text.read_parquet(f"text_{split}.parquet"), f"text features of {split}")


def with_text_features(table: pa.Table, extra: pa.Table, what: str) -> pa.Table:
    """``table`` with the row-aligned text features ``extra`` appended; one ``table`` already has is kept, in
    ``extra``'s type (see :func:`load_split`). ``what`` names ``extra`` in the error when the rows differ."""
    if extra.num_rows != table.num_rows:
        raise ValueError(f"{what} have {extra.num_rows} rows, the split has {table.num_rows}")
    for name in extra.column_names:
        if name in table.column_names:
            index = table.column_names.index(name)
            table = table.set_column(index, name, table[name].cast(extra.schema.field(name).type))
        else:
            table = table.append_column(name, extra[name])
    return table


def feature_matrix(table: pa.Table, features: Sequence[str]) -> np.ndarray:
    """A float32 matrix of ``features`` (nulls become NaN, which LightGBM treats as missing)."""
    missing = [f for f in features if f not in table.column_names]
    if missing:
        raise ValueError(f"feature columns missing from the data: {missing}")
    columns = [table[f].cast(pa.float32()).to_numpy(zero_copy_only=False) for f in features]
    return np.column_stack(columns).astype(np.float32, copy=False) if columns else np.empty((table.num_rows, 0))


def labels(table: pa.Table, label: str) -> np.ndarray:
    """The label column as 0/1 floats; a clear error when it is missing or has nulls."""
    if label not in table.column_names:
        raise ValueError(f"label column {label!r} is not in the data (columns: {table.column_names})")
    if table[label].null_count:
        raise ValueError(f"label column {label!r} has {table[label].null_count} nulls")
    return np.asarray(table[label].cast(pa.float64()).to_numpy(zero_copy_only=False))


def feature_types(table: pa.Table, features: Sequence[str]) -> list[dict[str, Any]]:
    """Feature names with their Arrow types: the serving schema for requests."""
    return [{"name": f, "type": str(table.schema.field(f).type)} for f in features]
