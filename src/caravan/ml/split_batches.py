"""A dataset split read in record batches, its text features beside it: memory for a batch, never the split.

:class:`SplitBatches` is the streaming twin of :func:`caravan.ml.features.load_split`: the same rows in
the same order with the same columns, as a sequence of tables of at most ``batch_rows`` rows. Each file
is read a row group at a time (only the columns asked for, no pre-buffering, no read-ahead), from the
artifact's own file on the local store or a verified streamed copy elsewhere
(:meth:`caravan.artifacts.Artifact.local_file`). The text features, a second file with the same rows,
are read in lockstep and cut to the split's batch boundaries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..artifacts import Artifact

__all__ = ["DEFAULT_BATCH_ROWS", "SplitBatches"]

#: Rows per batch unless a step says otherwise (a few MB per batch for tens of float features).
DEFAULT_BATCH_ROWS = 65_536


def _scan(path: Path, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    # ParquetFile.iter_batches reads one row group at a time, synchronously: memory stays flat. The
    # pyarrow.dataset scanner (pyarrow 26) keeps reading ahead while a slow consumer scores, whatever
    # batch_readahead says: its RSS grew with the split here (+112 MB at 1M rows, +250 MB at 3M).
    with pq.ParquetFile(path, pre_buffer=False) as parquet:
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            if batch.num_rows:
                yield batch


def _lockstep(left: Iterator[pa.RecordBatch], right: Iterator[pa.RecordBatch]) -> Iterator[tuple[Any, Any]]:
    """Pairs of equally long slices of two batch streams over the same rows (their batches may be cut apart)."""
    a = b = None
    while True:
        if a is None or not a.num_rows:
            a = next(left, None)
        if b is None or not b.num_rows:
            b = next(right, None)
        if a is None or b is None:
            return
        n = min(a.num_rows, b.num_rows)
        yield a.slice(0, n), b.slice(0, n)
        a, b = a.slice(n), b.slice(n)


class SplitBatches:
    """One split (``train``, ``valid``, ``test``) of a dataset artifact as batches; a context manager.

    ``columns``: the columns wanted (None: all), from the split or its text features; a wanted column
    that neither has is left out, so that the caller's own check names it (as with the whole table).
    ``rows`` and ``column_names`` are known on entering, from the Parquet footers.
    """

    def __init__(self, dataset: Artifact, text: Artifact | None, split: str, columns: Sequence[str] | None = None,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> None:
        if batch_rows < 1:
            raise ValueError(f"batch_rows must be >= 1, not {batch_rows}")
        self.dataset, self.text, self.split = dataset, text, split
        self.wanted = list(dict.fromkeys(columns)) if columns is not None else None
        self.batch_rows = batch_rows
        self._stack = contextlib.ExitStack()
        self.rows = 0
        self.column_names: list[str] = []

    def __enter__(self) -> SplitBatches:
        try:
            self._main = self._stack.enter_context(self.dataset.local_file(f"{self.split}.parquet"))
            main_meta = pq.read_metadata(self._main)
            main_schema = main_meta.schema.to_arrow_schema()
            self.rows = main_meta.num_rows
            self._text: Path | None = None
            text_schema = pa.schema([])
            if self.text is not None:
                self._text = self._stack.enter_context(self.text.local_file(f"text_{self.split}.parquet"))
                text_meta = pq.read_metadata(self._text)
                if text_meta.num_rows != self.rows:
                    raise ValueError(f"text features of {self.split} have {text_meta.num_rows} rows, "
                                     f"the split has {self.rows}")
                text_schema = text_meta.schema.to_arrow_schema()
        except BaseException:
            self._stack.close()
            raise
        names = [*main_schema.names, *(n for n in text_schema.names if n not in main_schema.names)]
        self.column_names = names
        wanted = names if self.wanted is None else [c for c in self.wanted if c in names]
        # A text feature the split already has keeps the split's values, in the text step's type (load_split).
        self._retyped = {n: text_schema.field(n).type for n in text_schema.names
                         if n in main_schema.names and n in wanted}
        self._from_main = [c for c in wanted if c in main_schema.names]
        self._from_text = [c for c in wanted if c not in main_schema.names]
        self._order = wanted
        return self

    def __exit__(self, *_: object) -> None:
        self._stack.close()

    def __iter__(self) -> Iterator[pa.Table]:
        """Tables of at most ``batch_rows`` rows, in the split's order, with the wanted columns in their order."""
        main = _scan(self._main, self._from_main, self.batch_rows)
        if not self._from_text or self._text is None:
            for batch in main:
                yield self._shape(pa.Table.from_batches([batch]), None)
            return
        text = _scan(self._text, self._from_text, self.batch_rows)
        for left, right in _lockstep(main, text):
            yield self._shape(pa.Table.from_batches([left]), pa.Table.from_batches([right]))

    def _shape(self, main: pa.Table, text: pa.Table | None) -> pa.Table:
        columns = []
        for name in self._order:
            column = main[name] if name in self._from_main else text[name]  # type: ignore[index]
            if name in self._retyped:
                column = column.cast(self._retyped[name])
            columns.append(column)
        return pa.table(columns, names=self._order)
