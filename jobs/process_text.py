"""Step ``process-text``: tokenize and hash-vectorize text columns into numeric features, per split.

Deterministic (a stable hash, not Python's), so one artifact serves every training that uses it.

Streamed (issue 14): each split is read a row group at a time (only its text columns), hashed in record
batches, and written to a local temporary Parquet file of one row group per row group of the split (same
rows), then staged with :meth:`caravan.artifacts.ArtifactWriter.write_file`. Memory holds one row group's
features, never the split. Hashing is row-wise (:func:`caravan.ml.text.text_features`: a row's vector
depends on its own text only), so the file holds exactly what the whole-table path,
:func:`process_in_memory`, wrote. A rank of a distributed training that reads rows ``[start, stop)`` of the
split thus finds them in the same row groups of the text file (:func:`caravan.ml.distributed.read_rows`).
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from caravan.step import StepContext, run_step

from .common import SPLITS

#: Rows hashed at a time within a row group (the features of a row group are then written as one).
BATCH_ROWS = 16_384


def features_of(table: pa.Table, text_columns: Sequence[str], n_features: int, seed: int) -> pa.Table:
    """The hashed features of ``text_columns`` of ``table``, side by side, in the order of the columns."""
    from caravan.ml.text import text_features

    parts = [text_features(table, column, n_features, seed=seed) for column in text_columns]
    out = parts[0]
    for extra in parts[1:]:
        for name in extra.column_names:
            out = out.append_column(name, extra[name])
    return out


def _group_features(parquet: pq.ParquetFile, group: int, columns: list[str], n_features: int, seed: int,
                    batch_rows: int) -> pa.Table:
    """The features of one row group of the split, hashed ``batch_rows`` rows at a time."""
    parts = [features_of(pa.Table.from_batches([batch]), columns, n_features, seed)
             for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns,
                                               use_threads=False)]
    if not parts:  # a row group without rows
        return features_of(parquet.schema_arrow.empty_table().select(columns), columns, n_features, seed)
    return pa.concat_tables(parts)


def stream_features(source: Path, target: Path, text_columns: Sequence[str], n_features: int, seed: int,
                    batch_rows: int = BATCH_ROWS) -> int:
    """Write the features of the split file ``source`` to ``target`` row group by row group; return its rows."""
    columns = list(text_columns)
    with pq.ParquetFile(source, pre_buffer=False) as parquet:
        names = parquet.schema_arrow.names
        missing = [c for c in columns if c not in names]
        if missing:
            raise ValueError(f"text column {missing[0]!r} is not in {source.name} (columns: {names})")
        groups = range(parquet.metadata.num_row_groups)
        tables: Iterator[pa.Table] = (_group_features(parquet, g, columns, n_features, seed, batch_rows)
                                      for g in groups)
        first = next(tables, None)
        if first is None:  # no row group at all: an empty file, as pq.write_table writes one
            first = features_of(parquet.schema_arrow.empty_table().select(columns), columns, n_features, seed)
        rows = 0
        with pq.ParquetWriter(target, first.schema) as writer:
            for table in itertools.chain([first], tables):
                # One row group per row group of the split (a table of 0 rows still writes one, as before).
                writer.write_table(table, row_group_size=max(1, table.num_rows))
                rows += table.num_rows
    return rows


def process(ctx: StepContext) -> None:
    p = ctx.params
    dataset = ctx.inputs["dataset"]
    columns, n_features, seed = list(p["text_columns"]), int(p["n_features"]), int(p["seed"])
    with tempfile.TemporaryDirectory(prefix="caravan-text-") as folder:
        for split in SPLITS:
            target = Path(folder, f"text_{split}.parquet")
            with dataset.local_file(f"{split}.parquet") as source:
                rows = stream_features(source, target, columns, n_features, seed,
                                       int(p.get("batch_rows") or BATCH_ROWS))
            ctx.writer.write_file(f"text_{split}.parquet", target)
            target.unlink()
            ctx.log.info("%s: %d rows, %d text features", split, rows, n_features * len(columns))
    ctx.writer.metrics["n_features"] = n_features * len(columns)


def process_in_memory(ctx: StepContext) -> None:
    """The former whole-table path (each split's text columns read whole, features built whole), for comparison."""
    p = ctx.params
    dataset = ctx.inputs["dataset"]
    for split in SPLITS:
        table = dataset.read_parquet(f"{split}.parquet", columns=list(p["text_columns"]))
        out = features_of(table, p["text_columns"], int(p["n_features"]), int(p["seed"]))
        ctx.writer.write_parquet(f"text_{split}.parquet", out)
        ctx.log.info("%s: %d rows, %d text features", split, out.num_rows, out.num_columns)
    ctx.writer.metrics["n_features"] = int(p["n_features"]) * len(p["text_columns"])


if __name__ == "__main__":
    run_step(process, job="process-text")
