"""load_split on a logged day: text features the split already carries (as scored) are kept, never doubled."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.ml.features import load_split

NAMES = [f"item_title_h{i}" for i in range(6)]


class Tables:
    """Stands in for an artifact: load_split only reads Parquet files of it by name."""

    def __init__(self, **tables: pa.Table) -> None:
        self.tables = tables

    def read_parquet(self, name: str, columns: Any = None) -> pa.Table:
        return self.tables[name.removesuffix(".parquet")]


@settings(max_examples=40, deadline=None)
@given(logged=st.sets(st.sampled_from(NAMES)), rows=st.integers(0, 5), seed=st.integers(0, 2**16))
def test_logged_text_features_are_kept_in_the_text_steps_type(logged: set[str], rows: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    split = pa.table({"user_id": pa.array(np.arange(rows), pa.int64()), "item_title": pa.nulls(rows, pa.string()),
                      **{n: pa.array(rng.random(rows)) for n in sorted(logged)}})
    text = pa.table({n: pa.array(np.zeros(rows, dtype=np.float32)) for n in NAMES})
    table = load_split(Tables(test=split), Tables(text_test=text), "test")  # type: ignore[arg-type]

    assert sorted(table.column_names) == sorted({"user_id", "item_title", *NAMES})  # each once
    for name in NAMES:
        assert table.schema.field(name).type == pa.float32()
        expected = split[name].cast(pa.float32()) if name in logged else text[name]
        assert table[name].to_pylist() == expected.to_pylist()
    assert table.column_names[:len(split.column_names)] == split.column_names  # the split's order first
