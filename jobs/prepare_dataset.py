"""Step ``prepare-dataset``: read events for a date window, split train/valid/test, record schema and stats.

Splits are by time (the latest ``test_fraction`` of events is the test set, the slice before it the
validation set) or by a seeded hash of a key column (every row of one key lands in one split).

Nothing is published unless the table can train a binary classifier: the label exists, is 0/1 (bool,
or integers/floats exactly 0 and 1) without nulls, and every split has both classes and at least
``min_rows`` rows. Each failure is one :class:`DataCheckFailed` naming the column or split. Columns that
cannot be features, and columns named like identifiers, are listed in one warning each.
"""

from __future__ import annotations

import datetime as dt
import difflib
import hashlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from caravan.dataio import fingerprints_in, read_input
from caravan.step import StepContext, run_step

from .common import SPLITS

#: Rows every split needs at least, unless the pipeline says otherwise (``--min-rows``).
DEFAULT_MIN_ROWS = 20
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


def _sample(values: Sequence[Any], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f", … ({len(values)} distinct)" if len(values) > limit else "")


def check_label(table: pa.Table, label: str) -> None:
    """The label column exists, has no nulls and holds only 0 and 1 (bool, integers or floats)."""
    if label not in table.column_names:
        close = difflib.get_close_matches(label, table.column_names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DataCheckFailed(f"label column {label!r} is not in the table{hint} (columns: {table.column_names})")
    column = table[label]
    if column.null_count:
        raise DataCheckFailed(f"label column {label!r} has {column.null_count} nulls in {table.num_rows} rows; "
                              "every row needs a 0/1 label")
    kind = column.type
    if pa.types.is_boolean(kind):
        return
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        distinct = pc.unique(column).to_pylist()
        raise DataCheckFailed(f"label column {label!r} is {kind} ({_sample(distinct)}); it must be 0/1: "
                              "bool, or integers/floats exactly 0 and 1")
    distinct = sorted(pc.unique(column).to_pylist())
    if any(v not in (0, 1) for v in distinct):
        raise DataCheckFailed(f"label column {label!r} must be 0/1 but holds {_sample(distinct)}; "
                              "a binary classifier needs exactly 0 and 1 (map other values first)")


def check_split(split: str, part: pa.Table, label: str | None, min_rows: int) -> None:
    """A split has at least ``min_rows`` rows and, with a label, both classes."""
    if part.num_rows < min_rows:
        raise DataCheckFailed(f"the {split} split has {part.num_rows} rows, fewer than --min-rows {min_rows}; "
                              "give more data or adjust the fractions")
    if label:
        present = sorted({int(v) for v in pc.unique(part[label]).to_pylist()})
        if present != [0, 1]:
            only = present[0] if present else "none"
            raise DataCheckFailed(f"the {split} split has only label {only} in column {label!r} ({part.num_rows} "
                                  "rows); both classes must appear in every split")


def unusable_columns(schema: pa.Schema, table: pa.Table, handled: Sequence[str]) -> list[str]:
    """Columns that cannot be numeric features, each with why (``handled`` ones are the pipeline's business)."""
    found = []
    for field in schema:
        if field.name in handled:
            continue
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            found.append(f"{field.name} (string; add it to --text-columns to use it)")
        elif pa.types.is_null(field.type) or (table.num_rows and table[field.name].null_count == table.num_rows):
            found.append(f"{field.name} (all null)")
        elif not any(check(field.type) for check in _NUMERIC):
            found.append(f"{field.name} ({field.type})")
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


def prepare(ctx: StepContext) -> None:
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


if __name__ == "__main__":
    run_step(prepare, job="prepare-dataset")
