"""Step ``prepare-dataset``: read events for a date window, split train/valid/test, record schema and stats.

Splits are by time (the latest ``test_fraction`` of events is the test set, the slice before it the
validation set) or by a seeded hash of a key column (every row of one key lands in one split).

Nothing is published unless the table can train a binary classifier: the label exists, is 0/1 (bool,
or integers/floats exactly 0 and 1) without nulls, and every split has both classes and at least
``min_rows`` rows. Each failure is one :class:`DataCheckFailed` naming the column or split. Columns that
cannot be features, and columns named like identifiers, are listed in one warning each.

The window is streamed in record batches (``pyarrow.dataset``), never held whole: a hash split routes
each batch as it is read (one pass, the same rows as in memory); a time split first sketches the time
column (Apache DataSketches' KLL), takes the cut points from it (each within the sketch's rank error,
:func:`caravan.ml.sketches.rank_error`, of the exact one) and routes rows in a second pass, keeping
their input order. Statistics come from mergeable sketches (:class:`caravan.ml.sketches.TableSketch`).
A part on S3 or HDFS is copied chunk by chunk to a local temporary file each time a pass reads it (removed
after, whatever happens), then scanned as a local part: never whole in memory.
Each split is one Parquet file of row groups of ``row_group_rows`` rows, staged in a local temporary
folder until every check has passed. :func:`prepare_in_memory` is the former whole-table path, kept
for ``bench/scale.py`` to compare against.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from caravan.dataio import fingerprints_in, read_input
from caravan.step import StepContext, run_step

from .common import SPLITS

if TYPE_CHECKING:
    from caravan.ml.sketches import TimeSketch

#: Rows every split needs at least, unless the pipeline says otherwise (``--min-rows``).
DEFAULT_MIN_ROWS = 20
#: Rows per record batch read (``--batch-rows``), and per row group of each split file (``--row-group-rows``).
DEFAULT_BATCH_ROWS = 65_536
DEFAULT_ROW_GROUP_ROWS = 131_072
_DISTINCT_KEPT = 1000
_NO_PREBUFFER = ds.ParquetFragmentScanOptions(pre_buffer=False)
_ID_NAME = re.compile(r"(?i)^(id|.*_id)$")
_NUMERIC = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)


class DataCheckFailed(ValueError):
    """The table cannot make a dataset for a 0/1 classifier; the message names the column or split."""


def hash_fractions(values: np.ndarray, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per value, the same for equal values, whatever the process."""
    unique, inverse = np.unique(values.astype(str), return_inverse=True)
    buckets = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "big")
                        for u in unique], dtype=np.float64)
    return np.asarray((buckets / 2.0**64)[inverse])


def _sample(values: Sequence[Any], limit: int = 5, more: bool = False) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    if more:
        return shown + f", … (over {len(values)} distinct)"
    return shown + (f", … ({len(values)} distinct)" if len(values) > limit else "")


@dataclass
class LabelSummary:
    """What the label checks need of a label column, gathered batch by batch."""

    type: pa.DataType
    rows: int = 0
    nulls: int = 0
    #: Distinct values in order of first appearance, at most :data:`_DISTINCT_KEPT` of them.
    distinct: dict[Any, None] = field(default_factory=dict)
    more: bool = False
    total: float = 0.0

    def update(self, column: pa.Array | pa.ChunkedArray) -> None:
        self.rows += len(column)
        self.nulls += column.null_count
        if any(check(self.type) for check in _NUMERIC):
            self.total += float(pc.sum(column.cast(pa.float64())).as_py() or 0.0)
        if self.nulls or pa.types.is_boolean(self.type):
            return  # refused anyway (nulls), or always 0/1 (bool): no values needed
        for value in pc.unique(column).to_pylist():
            if value not in self.distinct:
                if len(self.distinct) >= _DISTINCT_KEPT:
                    self.more = True
                    break
                self.distinct[value] = None

    @classmethod
    def of(cls, column: pa.Array | pa.ChunkedArray) -> LabelSummary:
        """The summary of a whole column."""
        summary = cls(column.type)
        summary.update(column)
        return summary


def check_label(table: pa.Table, label: str) -> None:
    """The label column exists, has no nulls and holds only 0 and 1 (bool, integers or floats)."""
    check_label_present(table.column_names, label)
    check_label_values(LabelSummary.of(table[label]), label)


def check_label_present(columns: Sequence[str], label: str) -> None:
    """The label column is one of ``columns`` (else a suggestion of the closest name)."""
    if label not in columns:
        close = difflib.get_close_matches(label, columns, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataCheckFailed(f"label column {label!r} is not in the table{hint} (columns: {list(columns)})")


def check_label_values(summary: LabelSummary, label: str) -> None:
    """No nulls and only 0 and 1 in a label column, from its :class:`LabelSummary`."""
    if summary.nulls:
        raise DataCheckFailed(f"label column {label!r} has {summary.nulls} nulls in {summary.rows} rows; "
                              "every row needs a 0/1 label")
    kind = summary.type
    if pa.types.is_boolean(kind):
        return
    distinct = list(summary.distinct)
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise DataCheckFailed(f"label column {label!r} is {kind} ({_sample(distinct, more=summary.more)}); "
                              "it must be 0/1: bool, or integers/floats exactly 0 and 1")
    distinct = sorted(distinct)
    if summary.more or any(v not in (0, 1) for v in distinct):
        raise DataCheckFailed(f"label column {label!r} must be 0/1 but holds {_sample(distinct, more=summary.more)}; "
                              "a binary classifier needs exactly 0 and 1 (map other values first)")


def check_split(split: str, part: pa.Table, label: str | None, min_rows: int) -> None:
    """A split has at least ``min_rows`` rows and, with a label, both classes."""
    present = set(pc.unique(part[label]).to_pylist()) if label else set()
    check_split_counts(split, part.num_rows, present, label, min_rows)


def check_split_counts(split: str, rows: int, present: set[Any], label: str | None, min_rows: int) -> None:
    """:func:`check_split` from a split's row count and the label values it holds."""
    if rows < min_rows:
        raise DataCheckFailed(f"the {split} split has {rows} rows, fewer than --min-rows {min_rows}; "
                              "give more data or adjust the fractions")
    if label:
        classes = sorted({int(v) for v in present})
        if classes != [0, 1]:
            only = classes[0] if classes else "none"
            raise DataCheckFailed(f"the {split} split has only label {only} in column {label!r} ({rows} "
                                  "rows); both classes must appear in every split")


def unusable_columns(schema: pa.Schema, table: pa.Table, handled: Sequence[str]) -> list[str]:
    """Columns that cannot be numeric features, each with why (``handled`` ones are the pipeline's business)."""
    nulls = {name: table[name].null_count for name in table.column_names}
    return unusable_in(schema, table.num_rows, nulls, handled)


def unusable_in(schema: pa.Schema, rows: int, nulls: Mapping[str, int], handled: Sequence[str]) -> list[str]:
    """:func:`unusable_columns` from the row count and each column's null count."""
    found = []
    for field_ in schema:
        if field_.name in handled:
            continue
        if pa.types.is_string(field_.type) or pa.types.is_large_string(field_.type):
            found.append(f"{field_.name} (string; add it to --text-columns to use it)")
        elif pa.types.is_null(field_.type) or (rows and nulls.get(field_.name, 0) == rows):
            found.append(f"{field_.name} (all null)")
        elif not any(check(field_.type) for check in _NUMERIC):
            found.append(f"{field_.name} ({field_.type})")
    return found


def id_like_columns(schema: pa.Schema, handled: Sequence[str]) -> list[str]:
    """Columns named like identifiers (``id``, ``*_id``) that the pipeline does not already treat as such."""
    return [f.name for f in schema if _ID_NAME.match(f.name) and f.name not in handled
            and any(check(f.type) for check in _NUMERIC)]


def _read_sources(ctx: StepContext) -> list[pa.Table]:
    if ctx.inputs:
        return [ctx.inputs[name].read_parquet("events.parquet") for name in sorted(ctx.inputs)]
    upstream = ctx.output.address.upstream if ctx.output.address is not None else None
    expected = fingerprints_in(upstream)
    tables, records = [], {}
    for uri in ctx.params["sources"]:
        table, fingerprint = read_input(uri, expected=expected.get(uri))
        tables.append(table)
        records[uri] = fingerprint
    # What was read, file by file (the address holds only each input's compact fingerprint).
    ctx.writer.extra["input_fingerprints"] = records
    return tables


def prepare_in_memory(ctx: StepContext) -> None:
    """The step as it was before streaming: the whole window in memory (kept for bench/scale.py to compare)."""
    p = ctx.params
    table = pa.concat_tables(_read_sources(ctx), promote_options="default")
    time_column = p.get("time_column") or ""
    if time_column and time_column in table.column_names and p.get("date"):
        end = dt.datetime.fromisoformat(p["date"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        start = end - dt.timedelta(days=int(p.get("window_days", 1)))
        column = table[time_column]
        if column.type.tz is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        mask = pc.and_(pc.greater_equal(column, pa.scalar(start, column.type)),
                       pc.less(column, pa.scalar(end, column.type)))
        table = table.filter(mask)
        if table.num_rows == 0:
            raise DataCheckFailed(f"no events in the window ending {p['date']} ({p.get('window_days', 1)} days)")
    if table.num_rows == 0:
        raise DataCheckFailed(f"the input table has no rows ({', '.join(p.get('sources') or []) or 'inputs'})")
    label = p.get("label") or None
    if label:
        check_label(table, label)
    key = p.get("key") or ""
    handled = [c for c in (label, key, time_column, *(p.get("text_columns") or ()), *(p.get("known_columns") or ()))
               if c]
    unusable = unusable_columns(table.schema, table, handled)
    if unusable:
        ctx.log.warning("columns not used as features: %s", ", ".join(unusable))
    ids = id_like_columns(table.schema, handled)
    if ids:
        ctx.log.warning("columns named like identifiers are used as features: %s; pass --key %s to split by it "
                        "instead, or drop them from the table", ", ".join(ids), ids[0])
    valid_fraction, test_fraction = float(p["valid_fraction"]), float(p["test_fraction"])
    if p["split"] == "time":
        if time_column not in table.column_names:
            raise DataCheckFailed(f"split 'time' needs the time column {time_column!r}; use split 'hash' and a key")
        table = table.sort_by([(time_column, "ascending")])
        position = (np.arange(table.num_rows) + 0.5) / table.num_rows
        where = 1.0 - position  # the latest rows get the smallest values: test first
    elif p["split"] == "hash":
        if key and key not in table.column_names:
            raise DataCheckFailed(f"split 'hash' key {key!r} is not one of the columns {table.column_names}")
        # Without a key, each row is its own key: a seeded random split that is the same on every run.
        values = table[key].to_numpy(zero_copy_only=False) if key else np.arange(table.num_rows)
        where = hash_fractions(values, int(p["seed"]))
    else:
        raise DataCheckFailed(f"split must be 'time' or 'hash', not {p['split']!r}")
    assignment = np.where(where < test_fraction, 2, np.where(where < test_fraction + valid_fraction, 1, 0))
    min_rows = max(1, int(p.get("min_rows", DEFAULT_MIN_ROWS)))
    # Every split is checked before any file is staged: a failure publishes nothing and wastes no writes.
    parts = [table.filter(pa.array(assignment == index)) for index in range(len(SPLITS))]
    for split, part in zip(SPLITS, parts, strict=True):
        check_split(split, part, label, min_rows)
    from caravan.ml.stats import column_stats, table_schema

    for split, part in zip(SPLITS, parts, strict=True):
        ctx.writer.write_parquet(f"{split}.parquet", part)
    ctx.writer.write_json("schema.json", table_schema(table))
    ctx.writer.write_json("stats.json", column_stats(table))
    ctx.writer.metrics.update({f"rows_{split}": part.num_rows for split, part in zip(SPLITS, parts, strict=True)})
    if label:
        ctx.writer.metrics["label_rate"] = round(float(pc.mean(table[label].cast(pa.float64())).as_py()), 6)



# -- streaming: the window batch by batch, bounded memory -------------------------------------------------

@dataclass
class _Part:
    """One Parquet object of the window: a local file read in place, or a streamed temporary copy of it.

    ``copy`` gives that copy (written chunk by chunk, removed on leaving) each time the part is read: the
    bytes of an object on S3 or HDFS are never held in memory, and the disk holds one part at a time.
    """

    name: str
    path: Path | None = None
    copy: Callable[[], contextlib.AbstractContextManager[Path]] | None = None

    @contextlib.contextmanager
    def local(self) -> Iterator[Path]:
        if self.path is not None:
            yield self.path
            return
        assert self.copy is not None
        with self.copy() as path:
            yield path

    def schema(self) -> pa.Schema:
        with self.local() as path:
            return pq.read_schema(path)

    def batches(self, schema: pa.Schema, batch_rows: int,
                columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        # A generator: the copy is removed when the last batch is read, when reading fails, or when the
        # consumer stops early (closing the generator exits the ``with``).
        with self.local() as path:
            # Small read-ahead (the scanner's default keeps dozens of batches in flight) and no pre-buffering
            # (it fetches the column chunks of many row groups at once): memory for a row group or two.
            dataset = ds.dataset(path, schema=schema, format="parquet")
            yield from dataset.to_batches(columns=columns, batch_size=batch_rows, batch_readahead=1,
                                          fragment_readahead=1, fragment_scan_options=_NO_PREBUFFER)


@contextlib.contextmanager
def _copied(store: Any, key: str) -> Iterator[Path]:
    """The object ``key`` of ``store`` as a temporary local file, copied chunk by chunk; removed on leaving."""
    with tempfile.TemporaryDirectory(prefix="caravan-part-") as folder:
        path = Path(folder, "part.parquet")
        with open(path, "wb") as sink:
            for chunk in store.read_chunks(key):
                sink.write(chunk)
        yield path


def _local_path(store: Any, key: str) -> Path | None:
    from caravan.storage.local import LocalStore

    return store.path(key) if isinstance(store, LocalStore) else None


def _verified_path(artifact: Any, name: str) -> _Part:
    """An upstream artifact's file, read in place when local (checked against its manifest's sha256 first)."""
    path = _local_path(artifact.store, artifact.store.key_of(artifact.file_uri(name)))
    if path is None:
        return _Part(f"{artifact.id}/{name}", copy=lambda: artifact.local_file(name))
    entry = artifact.manifest()["files"][name]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    if path.stat().st_size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        from caravan.errors import ArtifactCorruptError

        raise ArtifactCorruptError(f"file {name!r} does not match its manifest (size or sha256)",
                                   artifact=artifact.id, store=artifact.store.root_uri)
    return _Part(f"{artifact.id}/{name}", path=path)


class _Window:
    """The step's input, file by file, with the fingerprint check after the last pass (as ``read_input``)."""

    def __init__(self, ctx: StepContext) -> None:
        from caravan.dataio import parquet_stats
        from caravan.errors import ArtifactNotFoundError

        self.ctx = ctx
        self.parts: list[_Part] = []
        self.listed: dict[str, Any] = {}
        if ctx.inputs:
            self.parts = [_verified_path(ctx.inputs[name], "events.parquet") for name in sorted(ctx.inputs)]
        else:
            for uri in ctx.params["sources"]:
                store, stats = parquet_stats(uri)
                if not stats:
                    raise ArtifactNotFoundError("no Parquet data", artifact=uri, store=store.root_uri)
                self.listed[uri] = stats
                for stat in stats:
                    path = _local_path(store, stat.key)
                    copy = None if path is not None else (lambda s=store, k=stat.key: _copied(s, k))
                    self.parts.append(_Part(f"{uri}:{stat.key}", path=path, copy=copy))
        if not self.parts:
            raise DataCheckFailed("prepare-dataset has no input: neither upstream events nor --sources")
        schemas = [part.schema() for part in self.parts]
        self.schema = pa.unify_schemas(schemas, promote_options="default") if len(schemas) > 1 else schemas[0]

    def batches(self, batch_rows: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for part in self.parts:
            yield from part.batches(self.schema, batch_rows, columns)

    def check_unchanged(self) -> None:
        """Record what was read; :class:`~caravan.dataio.InputChanged` if a source changed since its fingerprint."""
        if not self.listed:
            return
        from caravan.dataio import InputChanged, fingerprint_of, parquet_stats, recorded_files

        upstream = self.ctx.output.address.upstream if self.ctx.output.address is not None else None
        expected = fingerprints_in(upstream)
        records = {}
        for uri, listed in self.listed.items():
            stats = parquet_stats(uri)[1] if uri in expected else listed
            now = fingerprint_of(uri, stats)
            want = expected.get(uri)
            if want is not None and now["fingerprint"] != want.get("fingerprint"):
                raise InputChanged(f"input {uri} changed after this run fingerprinted it ({want.get('files')} files, "
                                   f"{want.get('bytes')} bytes then; {now['files']} files, {now['bytes']} bytes now); "
                                   "run the pipeline again to build from the new data")
            records[uri] = {**now, "file_list": recorded_files(stats)}
        self.ctx.writer.extra["input_fingerprints"] = records


class _SplitWriter:
    """One split as a Parquet file of row groups of exactly ``group_rows`` rows (the last one shorter)."""

    def __init__(self, path: Path, schema: pa.Schema, group_rows: int) -> None:
        self.path, self.schema, self.group_rows = path, schema, group_rows
        self.writer = pq.ParquetWriter(path, schema)
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0
        self.rows = 0
        self.labels: set[Any] = set()

    def add(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows == 0:
            return
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        self.rows += batch.num_rows
        while self.pending_rows >= self.group_rows:
            self._flush(self.group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending, self.schema)
        self.writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self.pending, self.pending_rows = rest.to_batches(), rest.num_rows

    def close(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)
        self.writer.close()


def _ticks(column: pa.Array) -> np.ndarray:
    """A time (or numeric) column as float64 numbers in its own unit; nulls as +inf (they sort last)."""
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        column = column.cast(pa.int64() if not pa.types.is_date32(column.type) else pa.int32())
    values = np.asarray(column.cast(pa.float64()).fill_null(np.inf).to_numpy(zero_copy_only=False), dtype=np.float64)
    return values


def _window_filter(schema: pa.Schema, p: Mapping[str, Any]) -> Callable[[pa.RecordBatch], pa.RecordBatch] | None:
    time_column = p.get("time_column") or ""
    if not (time_column and time_column in schema.names and p.get("date")):
        return None
    end = dt.datetime.fromisoformat(p["date"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
    start = end - dt.timedelta(days=int(p.get("window_days", 1)))
    kind = schema.field(time_column).type
    if kind.tz is None:
        start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    low, high = pa.scalar(start, kind), pa.scalar(end, kind)

    def keep(batch: pa.RecordBatch) -> pa.RecordBatch:
        column = batch.column(time_column)
        return batch.filter(pc.and_(pc.greater_equal(column, low), pc.less(column, high)))

    return keep


def _first_index(rows: int, fraction: float) -> int:
    """The first sorted position the whole-table path puts below ``fraction`` (``1 - (i + 0.5) / n < f``)."""
    guess = max(0, int(rows * (1.0 - fraction)) - 2)
    while guess < rows and not 1.0 - (guess + 0.5) / rows < fraction:
        guess += 1
    return guess


def _time_cuts(sketch: TimeSketch, rows: int, fractions: Sequence[float],
               ticks: Callable[[], Iterator[np.ndarray]]) -> list[float]:
    """The time values where each split begins (rows at or after a cut go to it), exactly as sorting would.

    The whole-table path sorts and cuts at positions; here the KLL sketch of the first pass brackets
    each cut's value (its rank +- 2 sketch errors), one more pass over the time column alone counts the
    values below each bracket and keeps the few inside it, and the exact value at the cut's position is
    picked from those. So the cut is exact and the same on every run although the sketch is randomized;
    memory is the values inside the brackets, about 4 x rank_error() of the time column. A bracket the
    sketch missed (rare) is widened and the pass repeated. Null times sort last (they go to test).
    """
    from caravan.ml.sketches import rank_error

    spread = 2 * rank_error()
    nonnull = sketch.n
    wanted = [_first_index(rows, f) if f > 0 else rows for f in fractions]
    cuts: list[float | None] = [np.inf if i >= nonnull else None for i in wanted]
    bounds = [(sketch.quantile(max(0.0, i / nonnull - spread)), sketch.quantile(min(1.0, (i + 1) / nonnull + spread)))
              if cut is None else (0.0, 0.0) for i, cut in zip(wanted, cuts, strict=True)]
    while any(cut is None for cut in cuts):
        below = [0] * len(wanted)
        inside: list[list[np.ndarray]] = [[] for _ in wanted]
        for values in ticks():
            for k, (low, high) in enumerate(bounds):
                if cuts[k] is None:
                    below[k] += int(np.count_nonzero(values < low))
                    inside[k].append(values[(values >= low) & (values <= high)])
        for k, (low, high) in enumerate(bounds):
            if cuts[k] is not None:
                continue
            kept = np.sort(np.concatenate(inside[k]))
            j = wanted[k] - below[k]
            if 0 <= j < len(kept):
                cuts[k] = float(kept[j])
            else:  # the sketch's bracket missed (beyond its error): widen that side and look again
                bounds[k] = (-np.inf, high) if j < 0 else (low, np.inf)
    return [float(c) for c in cuts if c is not None]


def _integer_key_with_nulls(window: _Window, key: str, time_column: str,
                            keep: Callable[[pa.RecordBatch], pa.RecordBatch] | None, batch_rows: int) -> bool:
    """Whether an integer key has nulls in the window (a pass over the key alone, only for integer keys).

    The whole-table path hashes the text of each key as NumPy gives it: an integer column with a null
    anywhere comes out as floats ("5.0", "nan"), without one as integers ("5"). A batch alone cannot
    tell, so the streamed path asks first, and converts every batch the same way.
    """
    if not key or not pa.types.is_integer(window.schema.field(key).type):
        return False
    columns = [key, time_column] if time_column and time_column != key else [key]
    for batch in window.batches(batch_rows, columns=columns):
        batch = keep(batch) if keep is not None else batch
        if batch.column(key).null_count:
            return True
    return False


def prepare(ctx: StepContext) -> None:
    """Streamed: one pass (hash split) or two (time split: cut points from a KLL sketch, then routing)."""
    from caravan.ml.sketches import TableSketch, TimeSketch
    from caravan.ml.stats import table_schema

    p = ctx.params
    batch_rows = int(p.get("batch_rows") or DEFAULT_BATCH_ROWS)
    group_rows = int(p.get("row_group_rows") or DEFAULT_ROW_GROUP_ROWS)
    window = _Window(ctx)
    schema = window.schema
    keep = _window_filter(schema, p)
    time_column = p.get("time_column") or ""
    label = p.get("label") or None
    key = p.get("key") or ""
    if label:
        check_label_present(schema.names, label)
    if p["split"] == "time":
        if time_column not in schema.names:
            raise DataCheckFailed(f"split 'time' needs the time column {time_column!r}; use split 'hash' and a key")
        kind = schema.field(time_column).type
        if not (pa.types.is_timestamp(kind) or pa.types.is_date(kind) or any(c(kind) for c in _NUMERIC)):
            raise DataCheckFailed(f"split 'time' needs a timestamp, date or number in {time_column!r}, not {kind}")
    elif p["split"] == "hash":
        if key and key not in schema.names:
            raise DataCheckFailed(f"split 'hash' key {key!r} is not one of the columns {schema.names}")
    else:
        raise DataCheckFailed(f"split must be 'time' or 'hash', not {p['split']!r}")
    valid_fraction, test_fraction = float(p["valid_fraction"]), float(p["test_fraction"])
    seed = int(p["seed"])

    def window_batches() -> Iterator[pa.RecordBatch]:
        for batch in window.batches(batch_rows):
            batch = keep(batch) if keep is not None else batch
            if batch.num_rows:
                yield batch

    with tempfile.TemporaryDirectory(prefix="caravan-prepare-") as staging:
        writers = [_SplitWriter(Path(staging, f"{split}.parquet"), schema, group_rows) for split in SPLITS]

        def route(batch: pa.RecordBatch, where: np.ndarray) -> None:
            assignment = np.where(where < test_fraction, 2, np.where(where < test_fraction + valid_fraction, 1, 0))
            for index, writer in enumerate(writers):
                part = batch.filter(pa.array(assignment == index))
                writer.add(part)
                if label and len(writer.labels) < 2 and part.num_rows:
                    writer.labels.update(pc.unique(part.column(label)).to_pylist())

        sketch = TableSketch(schema)
        summary = LabelSummary(schema.field(label).type) if label else None
        times = TimeSketch() if p["split"] == "time" else None
        seen = 0
        as_float = times is None and _integer_key_with_nulls(window, key, time_column if keep else "", keep,
                                                              batch_rows)
        for batch in window_batches():
            sketch.update(batch)
            if summary is not None:
                summary.update(batch.column(label))
            if times is not None:
                ticks = _ticks(batch.column(time_column))
                times.update(ticks[np.isfinite(ticks)])
            else:
                # Without a key, each row is its own key: its position in the window, as in memory.
                if key:
                    column = batch.column(key).cast(pa.float64(), safe=False) if as_float else batch.column(key)
                    values = column.to_numpy(zero_copy_only=False)
                else:
                    values = np.arange(seen, seen + batch.num_rows)
                route(batch, hash_fractions(values, seed))
            seen += batch.num_rows
        if times is not None:
            def time_ticks() -> Iterator[np.ndarray]:
                for batch in window.batches(batch_rows, columns=[time_column]):
                    batch = keep(batch) if keep is not None else batch
                    ticks = _ticks(batch.column(time_column))
                    yield ticks[np.isfinite(ticks)]

            test_cut, valid_cut = _time_cuts(times, seen, [test_fraction, test_fraction + valid_fraction], time_ticks)
            if valid_fraction <= 0:
                valid_cut = test_cut
            for batch in window_batches():
                ticks = _ticks(batch.column(time_column))
                # Position-like values as in memory: test (the latest) lowest, then valid, then train.
                latest = (ticks >= test_cut) & (test_fraction > 0)
                route(batch, np.where(latest, -1.0, np.where(ticks >= valid_cut, test_fraction, 2.0)))
            ctx.writer.metrics.update(time_cut_valid=valid_cut, time_cut_test=test_cut)
        for writer in writers:
            writer.close()
        window.check_unchanged()
        if seen == 0:
            if keep is not None:
                raise DataCheckFailed(f"no events in the window ending {p['date']} ({p.get('window_days', 1)} days)")
            raise DataCheckFailed(f"the input table has no rows ({', '.join(p.get('sources') or []) or 'inputs'})")
        if summary is not None and label:
            check_label_values(summary, label)
        _warn_columns(ctx, schema, seen, sketch.nulls(), p, label, key, time_column)
        min_rows = max(1, int(p.get("min_rows", DEFAULT_MIN_ROWS)))
        # Every split is checked before any file is staged: a failure publishes nothing and wastes no writes.
        for split, writer in zip(SPLITS, writers, strict=True):
            check_split_counts(split, writer.rows, writer.labels, label, min_rows)
        for split, writer in zip(SPLITS, writers, strict=True):
            ctx.writer.write_file(f"{split}.parquet", writer.path)  # streamed: never the whole file in memory
            writer.path.unlink()
    ctx.writer.write_json("schema.json", table_schema(schema.empty_table()))
    ctx.writer.write_json("stats.json", sketch.stats())
    ctx.writer.metrics.update({f"rows_{split}": writer.rows for split, writer in zip(SPLITS, writers, strict=True)})
    if summary is not None:
        ctx.writer.metrics["label_rate"] = round(summary.total / seen, 6)


def _warn_columns(ctx: StepContext, schema: pa.Schema, rows: int, nulls: Mapping[str, int], p: Mapping[str, Any],
                  label: str | None, key: str, time_column: str) -> None:
    handled = [c for c in (label, key, time_column, *(p.get("text_columns") or ()), *(p.get("known_columns") or ()))
               if c]
    unusable = unusable_in(schema, rows, nulls, handled)
    if unusable:
        ctx.log.warning("columns not used as features: %s", ", ".join(unusable))
    ids = id_like_columns(schema, handled)
    if ids:
        ctx.log.warning("columns named like identifiers are used as features: %s; pass --key %s to split by it "
                        "instead, or drop them from the table", ", ".join(ids), ids[0])


if __name__ == "__main__":
    run_step(prepare, job="prepare-dataset")
