"""Evaluation metrics accumulated batch by batch: memory for a batch, the answers of :mod:`caravan.ml.metrics`.

:class:`ScoreStream` takes (labels, scores) one batch at a time and answers what :mod:`caravan.ml.metrics`
answers on all the rows at once:

- **ROC AUC and average precision, exactly.** Each batch is reduced to its distinct scores with their
  positive and negative counts and written to a local temporary file as a sorted *run*. At the end the
  runs are merged (k-way, a chunk of each run in memory; when there are more than ``fan_in`` runs they
  are first merged level by level, as an external sort does) and one ascending pass over the distinct
  scores of all rows gives the Mann-Whitney numerator in integers (ties count one half), so the AUC is
  the very float :func:`~caravan.ml.metrics.roc_auc` gives, and average precision, exact up to the order
  of a float sum (~1e-15). No histogram, no error bound to carry: the gate compares exact numbers.
- the quantiles and the share of distinct scores of :func:`~caravan.ml.metrics.score_summary`, exact,
  from the same pass; the ROC curve for the plot, thinned on the way to at most ~4000 points;
- counts, log loss, mean, std and the calibration table from per-batch sums (equal to the whole-array
  answers up to floating-point summation order, ~1e-12 relative).

Memory: one batch, plus ``fan_in`` chunks of ``chunk`` distinct scores (24 bytes each) while merging.
Disk: 24 bytes per distinct score per batch. The integer AUC numerator needs fewer than ~3e9 rows.

:class:`NdcgStream` gives the mean NDCG@k over groups (users) exactly too: rows are routed by a hash of
their group to partition files, so each group lies whole in one partition, and the partitions are
evaluated one at a time (memory: one partition, about ``rows / partitions`` rows).
"""

from __future__ import annotations

import math
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from . import metrics

__all__ = ["NdcgStream", "ScoreStream"]

#: One entry of a run: a distinct score, its positives and its negatives.
_ENTRY = np.dtype([("v", "<f8"), ("p", "<i8"), ("n", "<i8")])
#: ROC points kept for the plot (between this and twice this; the plot draws 2000 at most).
_CURVE_POINTS = 2000


def _combine(entries: np.ndarray) -> np.ndarray:
    """Entries sorted by score with equal scores summed into one (integer sums: exact)."""
    if not len(entries):
        return entries
    order = np.argsort(entries["v"], kind="stable")
    ordered = entries[order]
    starts = np.flatnonzero(np.concatenate([[True], ordered["v"][1:] != ordered["v"][:-1]]))
    out = np.empty(len(starts), dtype=_ENTRY)
    out["v"] = ordered["v"][starts]
    out["p"] = np.add.reduceat(ordered["p"], starts)
    out["n"] = np.add.reduceat(ordered["n"], starts)
    return out


class _RunReader:
    """A run file read a chunk at a time."""

    def __init__(self, path: Path, chunk: int) -> None:
        self.handle = open(path, "rb")  # closed by _merge, which owns the readers
        self.chunk = chunk
        self.buffer = np.empty(0, dtype=_ENTRY)

    def fill(self) -> bool:
        if not len(self.buffer):
            self.buffer = np.fromfile(self.handle, dtype=_ENTRY, count=self.chunk)
        return bool(len(self.buffer))

    def take_through(self, top: float) -> np.ndarray:
        k = int(np.searchsorted(self.buffer["v"], top, side="right"))
        taken, self.buffer = self.buffer[:k], self.buffer[k:]
        return taken


def _merge(paths: list[Path], chunk: int) -> Iterator[np.ndarray]:
    """The runs' entries merged: blocks ascending, each score in exactly one block, once.

    Within a run scores are distinct and ascending, so everything a run has not yet read lies above the
    last score of its buffer. Hence every buffered entry at or below the smallest of those last scores
    (``top``) can be emitted: no run can still hold that score. The run whose last score is ``top``
    empties its buffer, so each step reads at least one new chunk.
    """
    readers = [_RunReader(path, chunk) for path in paths]
    try:
        while True:
            active = [reader for reader in readers if reader.fill()]
            if not active:
                return
            top = min(float(reader.buffer["v"][-1]) for reader in active)
            yield _combine(np.concatenate([reader.take_through(top) for reader in active]))
    finally:
        for reader in readers:
            reader.handle.close()


class _Runs:
    """Sorted runs on disk, merged level by level so that no merge reads more than ``fan_in`` of them."""

    def __init__(self, folder: Path, chunk: int, fan_in: int) -> None:
        self.folder, self.chunk, self.fan_in = folder, chunk, fan_in
        self.levels: list[list[Path]] = []
        self.written = 0

    def add(self, entries: np.ndarray) -> None:
        if len(entries):
            self._push(self._write([entries]), 0)

    def _write(self, blocks: Iterable[np.ndarray]) -> Path:
        path = self.folder / f"run-{self.written:08d}.bin"
        self.written += 1
        with open(path, "wb") as handle:
            for block in blocks:
                block.tofile(handle)
        return path

    def _push(self, path: Path, level: int) -> None:
        while len(self.levels) <= level:
            self.levels.append([])
        self.levels[level].append(path)
        if len(self.levels[level]) >= self.fan_in:
            runs, self.levels[level] = self.levels[level], []
            merged = self._write(_merge(runs, self.chunk))
            for run in runs:
                run.unlink()
            self._push(merged, level + 1)

    def merged(self) -> Iterator[np.ndarray]:
        return _merge([path for level in self.levels for path in level], self.chunk)


class _Spill:
    """A folder for spilled data: the caller's, or a temporary one removed by :meth:`close`."""

    def __init__(self, folder: Path | str | None, prefix: str) -> None:
        self._temp = tempfile.TemporaryDirectory(prefix=prefix) if folder is None else None
        self.path = Path(self._temp.name if self._temp is not None else str(folder))
        self.path.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        if self._temp is not None:
            self._temp.cleanup()


class ScoreStream:
    """Binary-classification metrics of scores given batch by batch (see the module docstring).

    ``add`` each batch, then read :meth:`roc_auc`, :meth:`average_precision`, :meth:`log_loss`,
    :meth:`calibration`, :meth:`score_summary`, :meth:`roc_curve`; :meth:`close` (or ``with``) removes
    the spilled runs. Non-finite scores are counted in ``nonfinite`` and left out; a metric asked of a
    stream that had any raises, as the whole-array functions do.
    """

    def __init__(self, folder: Path | str | None = None, *, bins: int = 10, chunk: int = 16_384,
                 fan_in: int = 32) -> None:
        if bins < 1 or chunk < 1 or fan_in < 2:
            raise ValueError(f"bins and chunk must be >= 1 and fan_in >= 2, not {bins}, {chunk}, {fan_in}")
        self._spill = _Spill(folder, "caravan-scores-")
        self._runs = _Runs(self._spill.path, chunk, fan_in)
        self.rows = 0
        self.positives = 0
        self.nonfinite = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._low, self._high = math.inf, -math.inf
        self._losses: list[float] = []
        self._calibration = [np.zeros(bins) for _ in range(3)]
        self._pass: dict[str, Any] | None = None

    def __enter__(self) -> ScoreStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the spilled runs (of a temporary folder)."""
        self._spill.close()

    def add(self, y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> None:
        """One batch of 0/1 labels and their scores (an empty batch adds nothing)."""
        raw = np.asarray(y_score, dtype=np.float64).reshape(-1)
        if not len(raw) and not np.size(y_true):
            return
        labels = metrics._labels(y_true)
        if len(raw) != len(labels):
            raise ValueError(f"y_score has {len(raw)} values, y_true has {len(labels)}")
        finite = np.isfinite(raw)
        if not finite.all():
            self.nonfinite += int(np.count_nonzero(~finite))
            labels, raw = labels[finite], raw[finite]
            if not len(raw):
                return
        self._pass = None
        n, positives = len(raw), int(np.count_nonzero(labels))
        # Chan et al.'s merge of (count, mean, M2): stable where sum and sum of squares are not.
        mean = float(raw.mean())
        delta = mean - self._mean
        total = self.rows + n
        self._m2 += float(((raw - mean) ** 2).sum()) + delta * delta * self.rows * n / total
        self._mean += delta * n / total
        self.rows, self.positives = total, self.positives + positives
        self._low, self._high = min(self._low, float(raw.min())), max(self._high, float(raw.max()))
        clipped = np.clip(raw, 1e-15, 1.0 - 1e-15)
        self._losses.append(float((labels * np.log(clipped) + (1.0 - labels) * np.log1p(-clipped)).sum()))
        for total_, part in zip(self._calibration, metrics.calibration_sums(labels, raw, len(self._calibration[0])),
                                strict=True):
            total_ += part
        entries = np.empty(n, dtype=_ENTRY)
        entries["v"], entries["p"] = raw, labels.astype(np.int64)
        entries["n"] = 1 - entries["p"]
        self._runs.add(_combine(entries))

    # -- answers -------------------------------------------------------------------------------------

    def _check(self, metric: str, *, both_classes: bool = False) -> None:
        if self.nonfinite:
            raise ValueError(f"y_score contains NaN or infinite values ({self.nonfinite})")
        if not self.rows:
            raise ValueError("y_true is empty")
        if both_classes and self.positives in (0, self.rows):
            only = "0 (no positives)" if self.positives == 0 else "1 (no negatives)"
            raise ValueError(f"{metric} is undefined when y_true has only one class: every label is {only}")

    def _ascending_pass(self) -> dict[str, Any]:
        """One pass over the merged distinct scores, lowest first: everything that needs the order."""
        if self._pass is not None:
            return self._pass
        rows, positives = self.rows, self.positives
        negatives = rows - positives
        # Order statistics np.quantile's linear method interpolates between: ranks floor(h) and floor(h) + 1.
        marks = [(rows - 1) * q for q in metrics.SUMMARY_QUANTILES]
        ranks = sorted({r for h in marks for r in (math.floor(h), min(math.floor(h) + 1, rows - 1))})
        at_rank: dict[int, float] = {}
        auc_twice = 0  # sum over positives of 2 x (negatives below) + (negatives tied): an integer
        ap_terms: list[float] = []
        below_p = below_n = seen = distinct = 0
        curve: list[tuple[float, float]] = []
        stride = 1
        for block in self._runs.merged():
            p, n = block["p"], block["n"]
            neg_below = below_n + np.cumsum(n) - n
            pos_below = below_p + np.cumsum(p) - p
            auc_twice += int(np.sum(p * (2 * neg_below + n)))
            true_pos, false_pos = positives - pos_below, negatives - neg_below  # at thresholds >= each score
            with np.errstate(invalid="ignore", divide="ignore"):
                ap_terms.append(float(np.sum(np.where(p > 0, p * true_pos / (true_pos + false_pos), 0.0))))
            after = seen + np.cumsum(p + n)
            for rank in ranks:
                if seen <= rank < after[-1] and rank not in at_rank:
                    at_rank[rank] = float(block["v"][int(np.searchsorted(after, rank, side="right"))])
            index = distinct + np.arange(len(block))
            keep = index % stride == 0
            curve.extend(zip((false_pos[keep] / max(negatives, 1)).tolist(),
                             (true_pos[keep] / max(positives, 1)).tolist(), strict=True))
            if len(curve) > 2 * _CURVE_POINTS:  # halve the points kept, double the stride: bounded, deterministic
                curve, stride = curve[::2], stride * 2
            below_p, below_n = below_p + int(p.sum()), below_n + int(n.sum())
            seen, distinct = int(after[-1]), distinct + len(block)
        quantiles = []
        for h in marks:
            low = math.floor(h)
            a, b, t = at_rank[low], at_rank[min(low + 1, rows - 1)], h - low
            # numpy's _lerp, so that the quantiles are the floats np.quantile gives
            quantiles.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)
        fpr, tpr = zip(*reversed(curve), strict=True) if curve else ((), ())
        self._pass = {"auc_twice": auc_twice, "ap": math.fsum(ap_terms) / positives if positives else math.nan,
                      "quantiles": quantiles, "distinct": distinct,
                      "curve": (np.array([0.0, *fpr]), np.array([0.0, *tpr]))}
        return self._pass

    def roc_auc(self) -> float:
        """Exactly :func:`caravan.ml.metrics.roc_auc` of all the rows added."""
        self._check("ROC AUC", both_classes=True)
        negatives = self.rows - self.positives
        return float(self._ascending_pass()["auc_twice"] / (2 * self.positives * negatives))

    def average_precision(self) -> float:
        """:func:`caravan.ml.metrics.average_precision` of all the rows added (up to float summation order)."""
        self._check("average precision")
        if not self.positives:
            raise ValueError("average precision is undefined when y_true has no positives")
        return float(self._ascending_pass()["ap"])

    def log_loss(self) -> float:
        """:func:`caravan.ml.metrics.log_loss` of all the rows added (up to float summation order)."""
        self._check("log loss")
        return float(-math.fsum(self._losses) / self.rows)

    def calibration(self) -> list[dict[str, Any]]:
        """:func:`caravan.ml.metrics.calibration` of all the rows added."""
        self._check("calibration")
        return metrics.calibration_table(*self._calibration)

    def score_summary(self) -> dict[str, float]:
        """:func:`caravan.ml.metrics.score_summary` of all the scores added."""
        self._check("score summary")
        found = self._ascending_pass()
        return metrics.score_summary_of(self.rows, self._mean, math.sqrt(self._m2 / self.rows), self._low,
                                        self._high, found["quantiles"], found["distinct"])

    @property
    def std(self) -> float:
        """Population standard deviation of the finite scores added (0 when none)."""
        return math.sqrt(self._m2 / self.rows) if self.rows else 0.0

    def roc_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """False and true positive rates from (0, 0) to (1, 1), thinned to at most ~4000 thresholds."""
        self._check("the ROC curve", both_classes=True)
        fpr, tpr = self._ascending_pass()["curve"]
        return fpr, tpr


def _route_key(value: Any) -> bytes:
    """A group value as bytes that equal values share, whatever their batch made of them (5, 5.0, np.int64(5))."""
    item = value.item() if hasattr(value, "item") else value
    if isinstance(item, (bool, int, float)):
        return repr(float(item)).encode()
    return repr(item).encode()


class NdcgStream:
    """Mean NDCG@k over groups, exactly :func:`caravan.ml.metrics.ndcg_at_k`, from batches (see the module)."""

    def __init__(self, k: int, partitions: int, folder: Path | str | None = None) -> None:
        if k < 1 or partitions < 1:
            raise ValueError(f"k and partitions must be >= 1, not {k} and {partitions}")
        self.k, self.partitions = k, partitions
        self._spill = _Spill(folder, "caravan-ndcg-")
        self._writers: dict[int, Any] = {}
        self._written: set[int] = set()

    def __enter__(self) -> NdcgStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the partition files (of a temporary folder)."""
        self._close_writers()
        self._spill.close()

    def _close_writers(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()

    def add(self, groups: Any, y_true: npt.ArrayLike, y_score: npt.ArrayLike) -> None:
        """One batch: each row's group (an Arrow array or a sequence), gain (0/1 label) and score."""
        import pyarrow as pa

        group_array = groups if isinstance(groups, (pa.Array, pa.ChunkedArray)) else pa.array(groups)
        if isinstance(group_array, pa.ChunkedArray):
            group_array = group_array.combine_chunks()
        if not len(group_array):
            return
        values = np.asarray(group_array.to_numpy(zero_copy_only=False))
        distinct, inverse = np.unique(values, return_inverse=True)
        part_of = np.array([zlib.crc32(_route_key(v)) % self.partitions for v in distinct], dtype=np.int64)
        partition = part_of[inverse.reshape(-1)]
        batch = pa.record_batch({"group": group_array, "gain": pa.array(np.asarray(y_true, dtype=np.float64)),
                                 "score": pa.array(np.asarray(y_score, dtype=np.float64))})
        for index in np.unique(partition).tolist():
            writer = self._writers.get(index)
            if writer is None:
                if index in self._written:
                    raise ValueError("NdcgStream.add after ndcg(): the partitions are closed")
                self._written.add(index)
                writer = self._writers[index] = pa.ipc.new_file(self._spill.path / f"part-{index:04d}.arrow",
                                                                batch.schema)
            writer.write_batch(batch.filter(pa.array(partition == index)))

    def ndcg(self) -> float:
        """The mean NDCG@k over groups with a positive; ValueError when there is none."""
        import pyarrow as pa

        self._close_writers()
        values: list[float] = []
        groups = 0
        for index in sorted(self._written):
            with pa.memory_map(str(self._spill.path / f"part-{index:04d}.arrow")) as source:
                table = pa.ipc.open_file(source).read_all()
            if not table.num_rows:
                continue
            per_group = metrics.ndcg_per_group(table["gain"].to_numpy(), table["score"].to_numpy(),
                                               np.asarray(table["group"].to_numpy()), self.k)
            values.append(math.fsum(per_group.tolist()))
            groups += len(per_group)
        if not groups:
            raise ValueError("NDCG is undefined: no group has a positive label")
        return math.fsum(values) / groups
