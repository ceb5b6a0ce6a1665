"""Data checks: schemas, per-column statistics, schema skew and value drift (PSI).

``table_schema`` and ``column_stats`` describe a dataset in JSON (the prepare step stores both);
``check_schema`` compares new data with a stored schema and raises one error listing every
offending column; ``drift_report`` measures the population stability index of each numeric column
against stored statistics.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "SchemaSkewError",
    "SkewProblem",
    "check_schema",
    "column_stats",
    "drift_report",
    "psi",
    "schema_skew",
    "table_schema",
]

#: Share used in place of an empty bin's share in the PSI (its logarithm must stay finite).
PSI_EPSILON = 1e-4
_KIND_ORDER = {"missing": 0, "unexpected": 1, "type": 2, "nulls": 3}


@dataclass(frozen=True)
class SkewProblem:
    """One schema problem of one column; ``kind`` is missing, unexpected, type or nulls."""

    column: str
    kind: str
    detail: str

    def __str__(self) -> str:
        return f"{self.column}: {self.kind} ({self.detail})"


class SchemaSkewError(ValueError):
    """The data does not match the expected schema; ``problems`` has every offending column."""

    def __init__(self, problems: Sequence[SkewProblem]) -> None:
        self.problems = list(problems)
        columns = sorted({p.column for p in self.problems})
        lines = [f"schema skew in {len(columns)} column(s), {len(self.problems)} problem(s):"]
        lines += [f"  {problem}" for problem in self.problems]
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[type[SchemaSkewError], tuple[list[SkewProblem]]]:
        return (type(self), (self.problems,))


def table_schema(table: pa.Table) -> dict[str, Any]:
    """The table's schema as JSON: ``{"columns": [{"name", "type", "nullable"}]}`` in column order.

    ``type`` is Arrow's type string (``int64``, ``timestamp[us, tz=UTC]``...); ``nullable`` is the
    field's declared nullability, not whether the data has nulls.
    """
    return {"columns": [{"name": field.name, "type": str(field.type), "nullable": bool(field.nullable)}
                        for field in table.schema]}


def _is_numeric(type_: pa.DataType) -> bool:
    return bool(pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_boolean(type_)
                or pa.types.is_decimal(type_))


def _numeric_values(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """The finite non-null values of a numeric column as float64."""
    values = pc.drop_null(column).cast(pa.float64())
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    array = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)
    return array[np.isfinite(array)]


def _bin_edges(values: np.ndarray, bins: int) -> np.ndarray:
    """Quantile edges, deduplicated; for few distinct values, one bin per value (edges at midpoints)."""
    distinct = np.unique(values)
    if len(distinct) <= bins:
        if len(distinct) == 1:
            return np.array([distinct[0], distinct[0]])
        midpoints = (distinct[:-1] + distinct[1:]) / 2
        return np.concatenate([[distinct[0]], midpoints, [distinct[-1]]])
    return np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))


def _bin_shares(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Share of ``values`` in each bin [e_i, e_i+1) (the last bin closed), below edges[0], above edges[-1]."""
    n = len(values)
    n_bins = max(len(edges) - 1, 1)
    below = float(np.count_nonzero(values < edges[0])) / n
    above = float(np.count_nonzero(values > edges[-1])) / n
    inside = values[(values >= edges[0]) & (values <= edges[-1])]
    index = np.clip(np.searchsorted(edges, inside, side="right") - 1, 0, n_bins - 1)
    return np.bincount(index, minlength=n_bins) / n, below, above


def _numeric_stats(column: pa.ChunkedArray, bins: int) -> dict[str, Any]:
    values = _numeric_values(column)
    stats: dict[str, Any] = {"kind": "numeric", "non_finite": len(column) - column.null_count - len(values)}
    if len(values) == 0:
        return {**stats, "min": None, "max": None, "mean": None, "std": None, "edges": [], "fractions": []}
    edges = _bin_edges(values, bins)
    shares, _, _ = _bin_shares(edges, values)
    return {**stats, "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
            "std": float(values.std()), "edges": [float(e) for e in edges], "fractions": [float(f) for f in shares]}


def _string_stats(column: pa.ChunkedArray, top: int = 10) -> dict[str, Any]:
    present = pc.drop_null(column)
    if len(present) == 0:
        return {"kind": "string", "distinct": 0, "top": []}
    counts = pc.value_counts(present)
    frequent = pa.table({"value": counts.field("values"), "count": counts.field("counts")}).sort_by(
        [("count", "descending"), ("value", "ascending")]).slice(0, top)
    lengths = pc.utf8_length(present)
    return {"kind": "string", "distinct": len(counts), "top": frequent.to_pylist(),
            "min_length": int(pc.min(lengths).as_py()), "max_length": int(pc.max(lengths).as_py())}


def _temporal_stats(column: pa.ChunkedArray) -> dict[str, Any]:
    bounds = pc.min_max(column)
    low, high = bounds["min"].as_py(), bounds["max"].as_py()
    return {"kind": "temporal", "min": low.isoformat() if low is not None else None,
            "max": high.isoformat() if high is not None else None}


def column_stats(table: pa.Table, bins: int = 10) -> dict[str, Any]:
    """Per-column statistics as JSON, keyed by column name.

    Every column has ``type``, ``kind``, ``count`` (rows) and ``nulls``. Numeric columns (integers,
    floats, booleans, decimals) add ``min``, ``max``, ``mean``, ``std`` (population) of their finite
    values, ``non_finite`` (NaN/inf count), and ``edges``/``fractions``: quantile bin edges
    (``bins + 1`` before deduplication; one bin per value when there are at most ``bins`` distinct
    values) and the share of values in each bin [e_i, e_i+1) (the last bin closed), summing to 1;
    :func:`psi` compares new data with them. Strings add ``distinct`` and ``top`` (the 10 most
    frequent values with counts). Timestamps and dates add ``min``/``max`` as ISO strings.
    """
    if bins < 1:
        raise ValueError(f"bins must be >= 1, not {bins}")
    result: dict[str, Any] = {}
    for field in table.schema:
        column = table[field.name]
        type_ = field.type
        if pa.types.is_dictionary(type_):
            column = column.cast(type_.value_type)
            type_ = type_.value_type
        stats: dict[str, Any] = {"type": str(field.type), "count": len(column), "nulls": column.null_count}
        if _is_numeric(type_):
            stats.update(_numeric_stats(column, bins))
        elif pa.types.is_string(type_) or pa.types.is_large_string(type_):
            stats.update(_string_stats(column))
        elif pa.types.is_temporal(type_) and not pa.types.is_duration(type_) and not pa.types.is_interval(type_):
            stats.update(_temporal_stats(column))
        else:
            stats["kind"] = "other"
        result[field.name] = stats
    return result


def schema_skew(expected: Mapping[str, Any], table: pa.Table, non_nullable: Sequence[str] = ()) -> list[SkewProblem]:
    """Every difference between ``expected`` (a :func:`table_schema`) and ``table``, sorted by column.

    Finds missing columns, unexpected columns, changed types, and nulls in the ``non_nullable``
    columns. Column order and declared nullability are not compared.
    """
    wanted = {c["name"]: str(c["type"]) for c in expected["columns"]}
    actual = {field.name: str(field.type) for field in table.schema}
    problems = [SkewProblem(name, "missing", f"expected {type_}") for name, type_ in wanted.items()
                if name not in actual]
    problems += [SkewProblem(name, "unexpected", f"not in the expected schema, type {type_}")
                 for name, type_ in actual.items() if name not in wanted]
    problems += [SkewProblem(name, "type", f"expected {wanted[name]}, found {type_}")
                 for name, type_ in actual.items() if name in wanted and wanted[name] != type_]
    for name in dict.fromkeys(non_nullable):
        if name in actual:
            nulls = table[name].null_count
            if nulls:
                problems.append(SkewProblem(name, "nulls", f"{nulls} null(s) in a non-nullable column"))
    return sorted(problems, key=lambda p: (p.column, _KIND_ORDER.get(p.kind, 99), p.detail))


def check_schema(expected: Mapping[str, Any], table: pa.Table, non_nullable: Sequence[str] = ()) -> None:
    """Raise :class:`SchemaSkewError` listing every problem :func:`schema_skew` finds; return if none."""
    problems = schema_skew(expected, table, non_nullable)
    if problems:
        raise SchemaSkewError(problems)


def psi(reference: Mapping[str, Any], values: np.ndarray) -> float:
    """Population stability index of ``values`` against one numeric column's :func:`column_stats`.

    Uses the reference bins (``edges``/``fractions``) plus two open bins below and above the
    reference range (reference share 0). PSI = sum over bins of (a - e) * ln(a / e), shares of
    empty bins replaced by :data:`PSI_EPSILON`. 0 for identical distributions; above ~0.2 is
    usually read as a significant shift. Nulls and non-finite values are ignored.
    """
    edges = np.asarray(reference.get("edges") or [], dtype=np.float64)
    expected = np.asarray(reference.get("fractions") or [], dtype=np.float64)
    if len(edges) < 2 or len(expected) != len(edges) - 1:
        raise ValueError("reference statistics have no bins (edges/fractions); is the column numeric and non-empty?")
    array = np.asarray(values, dtype=np.float64).ravel()
    array = array[np.isfinite(array)]
    if len(array) == 0:
        raise ValueError("no finite values to compare with the reference")
    shares, below, above = _bin_shares(edges, array)
    actual = np.concatenate([[below], shares, [above]])
    reference_shares = np.concatenate([[0.0], expected, [0.0]])
    a = np.maximum(actual, PSI_EPSILON)
    e = np.maximum(reference_shares, PSI_EPSILON)
    value = float(np.sum((a - e) * np.log(a / e)))
    return value if value > 1e-12 else 0.0  # exactly 0 for identical data (no -0.0, no rounding noise)


def drift_report(reference_stats: Mapping[str, Any], table: pa.Table,
                 columns: Sequence[str] | None = None) -> dict[str, float]:
    """PSI per numeric column present in both ``reference_stats`` (a :func:`column_stats`) and ``table``.

    ``columns`` restricts the report (names not in both are skipped). Columns whose reference has
    no bins, or with no finite values in ``table``, are left out. Keys are sorted.
    """
    names = list(columns) if columns is not None else list(reference_stats)
    report: dict[str, float] = {}
    for name in sorted(dict.fromkeys(names)):
        reference = reference_stats.get(name)
        if not isinstance(reference, Mapping) or name not in table.column_names:
            continue
        if reference.get("kind") != "numeric" or len(reference.get("edges") or []) < 2:
            continue
        type_ = table.schema.field(name).type
        if pa.types.is_dictionary(type_) or not _is_numeric(type_):
            continue
        values = _numeric_values(table[name])
        if len(values) == 0:
            continue
        report[name] = psi(reference, values)
    return report
