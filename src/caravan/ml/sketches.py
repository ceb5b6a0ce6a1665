"""Column statistics from mergeable sketches, one record batch at a time (Apache DataSketches).

:class:`TableSketch` gives the same JSON as :func:`caravan.ml.stats.column_stats` without holding the
table: feed it record batches (``update``), combine sketches built apart (``merge``), read ``stats()``.

What is exact and what is within a stated error:

- exact: ``type``, ``kind``, ``count``, ``nulls``, ``non_finite``, ``min``, ``max``, temporal
  ``min``/``max``, string ``min_length``/``max_length``; ``mean`` and ``std`` up to float rounding
  (moments merged with Chan et al.'s pairwise update).
- numeric ``edges``/``fractions``: exact while a column has at most ``bins`` distinct values (one bin
  per value, as in memory). Otherwise the edges are quantiles of a KLL sketch (k = :data:`KLL_K`) and
  each edge's rank is within :func:`rank_error` of the exact quantile's; each bin's share is within
  twice that (two edges); the shares still sum to 1.
- string ``distinct``: an HLL estimate (lg_k = :data:`HLL_LG_K`, about 1.6% relative standard error;
  exact in practice for small counts). ``top``: the frequent-items sketch's heaviest values with their
  estimated counts, exact while the column has fewer distinct values than the sketch's map holds
  (:data:`FREQUENT_LG_MAP`); otherwise counts may be under-estimated by at most the sketch's
  ``get_epsilon() * rows``.

The KLL sketch compacts with random bits, so two runs over the same large data may give edges that
differ within the error (small data, under k values, is exact and the same every time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import datasketches
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .stats import _is_numeric

__all__ = ["KLL_K", "TableSketch", "TimeSketch", "rank_error"]

#: KLL accuracy parameter: k = 200 gives about 1.3% normalized rank error (99% confidence, one quantile).
KLL_K = 200
#: HLL accuracy: 2^12 buckets, about 1.6% relative standard error on the distinct count.
HLL_LG_K = 12
#: Frequent items: a map of 2^11 slots (exact while a column has fewer than ~1500 distinct values).
FREQUENT_LG_MAP = 11
_TOP = 10


def rank_error() -> float:
    """The KLL sketch's normalized rank error for one quantile at :data:`KLL_K` (99% confidence)."""
    return float(datasketches.kll_doubles_sketch.get_normalized_rank_error(KLL_K, False))


def _float_values(array: pa.Array) -> np.ndarray:
    values = pc.drop_null(array).cast(pa.float64())
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass
class _Numeric:
    """Moments, bounds, a few exact distinct values and a KLL sketch of one numeric column."""

    bins: int
    count: int = 0
    nulls: int = 0
    non_finite: int = 0
    n: int = 0
    mean: float = 0.0
    m2: float = 0.0
    low: float = np.inf
    high: float = -np.inf
    #: Exact value -> count while there are at most ``bins`` distinct values; None once there are more.
    distinct: dict[float, int] | None = field(default_factory=dict)
    kll: Any = field(default_factory=lambda: datasketches.kll_doubles_sketch(KLL_K))

    def update(self, array: pa.Array) -> None:
        self.count += len(array)
        self.nulls += array.null_count
        values = _float_values(array)
        finite = values[np.isfinite(values)]
        self.non_finite += len(values) - len(finite)
        if len(finite) == 0:
            return
        mean = float(finite.mean())
        self._combine(len(finite), mean, float(np.sum((finite - mean) ** 2)),
                      float(finite.min()), float(finite.max()))
        if self.distinct is not None:
            unique, counts = np.unique(finite, return_counts=True)
            for value, n in zip(unique.tolist(), counts.tolist(), strict=True):
                self.distinct[value] = self.distinct.get(value, 0) + n
            if len(self.distinct) > self.bins:
                self.distinct = None
        self.kll.update(finite)

    def _combine(self, n: int, mean: float, m2: float, low: float, high: float) -> None:
        # Chan, Golub and LeVeque's pairwise update: exact merging of counts, means and squared deviations.
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total
        self.low, self.high = min(self.low, low), max(self.high, high)

    def merge(self, other: _Numeric) -> None:
        self.count += other.count
        self.nulls += other.nulls
        self.non_finite += other.non_finite
        if other.n:
            self._combine(other.n, other.mean, other.m2, other.low, other.high)
        if self.distinct is not None and other.distinct is not None:
            for value, n in other.distinct.items():
                self.distinct[value] = self.distinct.get(value, 0) + n
            if len(self.distinct) > self.bins:
                self.distinct = None
        else:
            self.distinct = None
        self.kll.merge(other.kll)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {"kind": "numeric", "non_finite": self.non_finite}
        if self.n == 0:
            return {**stats, "min": None, "max": None, "mean": None, "std": None, "edges": [], "fractions": []}
        if self.distinct is not None:
            values = np.array(sorted(self.distinct))
            counts = np.array([self.distinct[v] for v in values.tolist()], dtype=np.float64)
            if len(values) == 1:
                edges, shares = np.array([values[0], values[0]]), np.array([1.0])
            else:
                edges = np.concatenate([[values[0]], (values[:-1] + values[1:]) / 2, [values[-1]]])
                shares = counts / counts.sum()
        else:
            inner = self.kll.get_quantiles(np.linspace(0.0, 1.0, self.bins + 1)[1:-1].tolist())
            edges = np.unique(np.concatenate([[self.low], np.asarray(inner, dtype=np.float64), [self.high]]))
            if len(edges) < 2:
                shares = np.array([1.0])
                edges = np.array([edges[0], edges[0]])
            else:
                # Bins [e_i, e_i+1): the pmf's first and last cells (below e_1, from e_-2 up) hold the ends.
                shares = np.asarray(self.kll.get_pmf(edges[1:-1].tolist(), False), dtype=np.float64)
        return {**stats, "min": self.low, "max": self.high, "mean": self.mean,
                "std": float(np.sqrt(max(self.m2, 0.0) / self.n)),
                "edges": [float(e) for e in edges], "fractions": [float(f) for f in shares]}


@dataclass
class _String:
    """Distinct count (HLL), heavy hitters (frequent items) and length bounds of one string column."""

    count: int = 0
    nulls: int = 0
    present: int = 0
    min_length: int | None = None
    max_length: int | None = None
    hll: Any = field(default_factory=lambda: datasketches.hll_sketch(HLL_LG_K))
    frequent: Any = field(default_factory=lambda: datasketches.frequent_strings_sketch(FREQUENT_LG_MAP))

    def update(self, array: pa.Array) -> None:
        self.count += len(array)
        self.nulls += array.null_count
        present = pc.drop_null(array)
        if len(present) == 0:
            return
        self.present += len(present)
        lengths = pc.min_max(pc.utf8_length(present))
        low, high = lengths["min"].as_py(), lengths["max"].as_py()
        self.min_length = low if self.min_length is None else min(self.min_length, low)
        self.max_length = high if self.max_length is None else max(self.max_length, high)
        # One sketch update per distinct value of the batch (Arrow counts them), not per row.
        counts = pc.value_counts(present)
        for value, n in zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True):
            self.hll.update(value)
            self.frequent.update(value, n)

    def merge(self, other: _String) -> None:
        self.count += other.count
        self.nulls += other.nulls
        self.present += other.present
        for name, pick in (("min_length", min), ("max_length", max)):
            mine, theirs = getattr(self, name), getattr(other, name)
            setattr(self, name, theirs if mine is None else mine if theirs is None else pick(mine, theirs))
        union = datasketches.hll_union(HLL_LG_K)
        union.update(self.hll)
        union.update(other.hll)
        self.hll = union.get_result()
        self.frequent.merge(other.frequent)

    def stats(self) -> dict[str, Any]:
        if self.present == 0:
            return {"kind": "string", "distinct": 0, "top": []}
        items = self.frequent.get_frequent_items(datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES)
        ranked = sorted(((int(estimate), value) for value, estimate, _, _ in items), key=lambda c: (-c[0], c[1]))
        return {"kind": "string", "distinct": round(self.hll.get_estimate()),
                "top": [{"value": value, "count": n} for n, value in ranked[:_TOP]],
                "min_length": self.min_length, "max_length": self.max_length}


@dataclass
class _Temporal:
    count: int = 0
    nulls: int = 0
    low: Any = None
    high: Any = None

    def update(self, array: pa.Array) -> None:
        self.count += len(array)
        self.nulls += array.null_count
        bounds = pc.min_max(array)
        self._bounds(bounds["min"].as_py(), bounds["max"].as_py())

    def _bounds(self, low: Any, high: Any) -> None:
        if low is not None:
            self.low = low if self.low is None else min(self.low, low)
            self.high = high if self.high is None else max(self.high, high)

    def merge(self, other: _Temporal) -> None:
        self.count += other.count
        self.nulls += other.nulls
        self._bounds(other.low, other.high)

    def stats(self) -> dict[str, Any]:
        return {"kind": "temporal", "min": self.low.isoformat() if self.low is not None else None,
                "max": self.high.isoformat() if self.high is not None else None}


@dataclass
class _Other:
    count: int = 0
    nulls: int = 0

    def update(self, array: pa.Array) -> None:
        self.count += len(array)
        self.nulls += array.null_count

    def merge(self, other: _Other) -> None:
        self.count += other.count
        self.nulls += other.nulls

    def stats(self) -> dict[str, Any]:
        return {"kind": "other"}


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _sketch_for(type_: pa.DataType, bins: int) -> Any:
    value = _value_type(type_)
    if _is_numeric(value):
        return _Numeric(bins)
    if pa.types.is_string(value) or pa.types.is_large_string(value):
        return _String()
    if pa.types.is_temporal(value) and not pa.types.is_duration(value) and not pa.types.is_interval(value):
        return _Temporal()
    return _Other()


class TableSketch:
    """Per-column sketches of a table with a fixed schema, fed batch by batch (see the module docstring)."""

    def __init__(self, schema: pa.Schema, bins: int = 10) -> None:
        if bins < 1:
            raise ValueError(f"bins must be >= 1, not {bins}")
        self.schema = schema
        self.bins = bins
        self.columns = {f.name: _sketch_for(f.type, bins) for f in schema}

    @property
    def rows(self) -> int:
        """Rows seen so far."""
        return next((s.count for s in self.columns.values()), 0)

    def nulls(self) -> dict[str, int]:
        """Null count per column."""
        return {name: sketch.nulls for name, sketch in self.columns.items()}

    def update(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Add the rows of ``batch`` (its columns must be the schema's)."""
        for field_ in self.schema:
            column = batch.column(field_.name)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks()
            if pa.types.is_dictionary(column.type):
                column = column.cast(column.type.value_type)
            self.columns[field_.name].update(column)

    def merge(self, other: TableSketch) -> None:
        """Add everything ``other`` (built over the same schema and bins) has seen."""
        if other.schema != self.schema or other.bins != self.bins:
            raise ValueError("can only merge sketches of the same schema and bins")
        for name, sketch in self.columns.items():
            sketch.merge(other.columns[name])

    def stats(self) -> dict[str, Any]:
        """The statistics as :func:`caravan.ml.stats.column_stats` gives them (within the stated errors)."""
        return {f.name: {"type": str(f.type), "count": self.columns[f.name].count,
                         "nulls": self.columns[f.name].nulls, **self.columns[f.name].stats()}
                for f in self.schema}


class TimeSketch:
    """A KLL sketch of a time (or numeric) column's values as numbers, for the cut points of a time split."""

    def __init__(self) -> None:
        self.kll = datasketches.kll_doubles_sketch(KLL_K)

    def update(self, values: np.ndarray) -> None:
        """Add values (already numbers: a timestamp's integer ticks)."""
        if len(values):
            self.kll.update(np.asarray(values, dtype=np.float64))

    def quantile(self, rank: float) -> float:
        """The value below which about ``rank`` of the values lie (within :func:`rank_error`)."""
        return float(self.kll.get_quantile(rank, False))

    @property
    def n(self) -> int:
        """Values seen."""
        return int(self.kll.n)
