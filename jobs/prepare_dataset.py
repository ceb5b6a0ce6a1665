"""Step ``prepare-dataset``: read events for a date window, split train/valid/test, record schema and stats.

Splits are by time (the latest ``test_fraction`` of events is the test set, the slice before it the
validation set) or by a seeded hash of a key column (every row of one key lands in one split).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from caravan.dataio import read_parquet_uri
from caravan.step import StepContext, run_step

from .common import SPLITS


def hash_fractions(values: np.ndarray, seed: int) -> np.ndarray:
    """A stable number in [0, 1) per value, the same for equal values, whatever the process."""
    unique, inverse = np.unique(values.astype(str), return_inverse=True)
    buckets = np.array([int.from_bytes(hashlib.blake2b(f"{seed}:{u}".encode(), digest_size=8).digest(), "big")
                        for u in unique], dtype=np.float64)
    return np.asarray((buckets / 2.0**64)[inverse])


def prepare(ctx: StepContext) -> None:
    p = ctx.params
    if ctx.inputs:
        tables = [ctx.inputs[name].read_parquet("events.parquet") for name in sorted(ctx.inputs)]
    else:
        tables = [read_parquet_uri(uri) for uri in p["sources"]]
    table = pa.concat_tables(tables, promote_options="default")
    time_column = p.get("time_column") or ""
    if time_column and time_column in table.column_names:
        end = dt.datetime.fromisoformat(p["date"]).replace(tzinfo=dt.timezone.utc) + dt.timedelta(days=1)
        start = end - dt.timedelta(days=int(p.get("window_days", 1)))
        column = table[time_column]
        if column.type.tz is None:
            start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
        mask = pc.and_(pc.greater_equal(column, pa.scalar(start, column.type)),
                       pc.less(column, pa.scalar(end, column.type)))
        table = table.filter(mask)
    if table.num_rows == 0:
        raise ValueError(f"no events in the window ending {p['date']} ({p.get('window_days', 1)} days)")
    valid_fraction, test_fraction = float(p["valid_fraction"]), float(p["test_fraction"])
    if p["split"] == "time":
        if time_column not in table.column_names:
            raise ValueError(f"split 'time' needs the time column {time_column!r}; use split 'hash' and a key")
        table = table.sort_by([(time_column, "ascending")])
        position = (np.arange(table.num_rows) + 0.5) / table.num_rows
        where = 1.0 - position  # the latest rows get the smallest values: test first
    elif p["split"] == "hash":
        key = p.get("key") or ""
        if key and key not in table.column_names:
            raise ValueError(f"split 'hash' key {key!r} is not one of the columns {table.column_names}")
        # Without a key, each row is its own key: a seeded random split that is the same on every run.
        values = table[key].to_numpy(zero_copy_only=False) if key else np.arange(table.num_rows)
        where = hash_fractions(values, int(p["seed"]))
    else:
        raise ValueError(f"split must be 'time' or 'hash', not {p['split']!r}")
    assignment = np.where(where < test_fraction, 2, np.where(where < test_fraction + valid_fraction, 1, 0))
    from caravan.ml.stats import column_stats, table_schema

    sizes = {}
    for index, split in enumerate(SPLITS):
        part = table.filter(pa.array(assignment == index))
        if part.num_rows == 0:
            raise ValueError(f"the {split} split is empty; adjust the fractions or the window")
        ctx.writer.write_parquet(f"{split}.parquet", part)
        sizes[split] = part.num_rows
    ctx.writer.write_json("schema.json", table_schema(table))
    ctx.writer.write_json("stats.json", column_stats(table))
    label = p.get("label")
    ctx.writer.metrics.update({f"rows_{k}": v for k, v in sizes.items()})
    if label in table.column_names:
        ctx.writer.metrics["label_rate"] = round(float(pc.mean(table[label].cast(pa.float64())).as_py()), 6)


if __name__ == "__main__":
    run_step(prepare, job="prepare-dataset")
