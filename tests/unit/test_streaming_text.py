"""Streamed ``process-text`` (issue 14) against the former whole-table path, on every store and under a memory limit.

The text features must be the same file content (columns, types, values, row order) whatever the split's row
groups and the hashing batches, with one row group per row group of the split, so that a distributed rank
reading rows of the split finds them in the same row groups of the text features.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.ml.distributed import group_rows_of, load_shard, shard_layout, shard_rows
from caravan.step import StepContext
from caravan.storage import open_store
from jobs.common import SPLITS
from jobs.process_text import process, process_in_memory
from tests.streaming import publish, run_limited

WORDS = ["Red", "shoes", "für", "Kinder", "42", "été", "x_y", "", " ", "!!", "ünïcode"]


def texts(rng: np.random.Generator, n: int, null_share: float) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < null_share:
            out.append(None)
        else:
            out.append(" ".join(rng.choice(WORDS, rng.integers(0, 6))))
    return out


def run(function: Any, root: str, dataset: Artifact, params: dict[str, Any]) -> Artifact:
    artifact = Artifact(open_store(root), Address("ProcessText", {"n": uuid.uuid4().hex},
                                                  upstream={"dataset": dataset.id}))
    writer = artifact.writer()
    function(StepContext(job="process-text", output=artifact, writer=writer, inputs={"dataset": dataset},
                         params=params, run_id="t"))
    writer.publish()
    return Artifact(open_store(root), artifact.id)


def parquet_of(artifact: Artifact, name: str) -> pq.ParquetFile:
    with artifact.local_file(name) as path:
        return pq.ParquetFile(path)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.tuples(*(st.integers(0, 300) for _ in SPLITS)), groups=st.tuples(*(st.integers(1, 120) for _ in SPLITS)),
       batch_rows=st.integers(1, 200), n_features=st.integers(1, 9), seed=st.integers(0, 2**16),
       query_type=st.sampled_from([pa.string(), pa.large_string(), pa.dictionary(pa.int32(), pa.string()),
                                   pa.int64()]),
       null_share=st.sampled_from([0.0, 0.2, 1.0]))
def test_streamed_text_features_are_the_whole_table_file_content(local_root, tmp_path_factory, rows, groups,
                                                                  batch_rows, n_features, seed, query_type, null_share):
    tmp = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(seed)
    files = {}
    for split, n, group in zip(SPLITS, rows, groups, strict=True):
        query = (pa.array(rng.integers(-5, 5, n)) if pa.types.is_integer(query_type)
                 else pa.array(texts(rng, n, null_share)).cast(query_type))
        table = pa.table({"title": pa.array(texts(rng, n, null_share), pa.string()), "f1": rng.random(n),
                          "query": query})
        files[f"{split}.parquet"] = (table, group)
    dataset = publish(local_root, "PrepareDataset", files, tmp)
    params = {"text_columns": ["title", "query"], "n_features": n_features, "seed": seed, "batch_rows": batch_rows}
    streamed = run(process, local_root, dataset, params)
    whole = run(process_in_memory, local_root, dataset, params)
    assert streamed.metrics == whole.metrics == {"n_features": 2 * n_features}
    for split in SPLITS:
        name = f"text_{split}.parquet"
        ours, theirs = streamed.read_parquet(name), whole.read_parquet(name)
        assert ours.schema == theirs.schema, split
        assert ours.equals(theirs), split
        split_groups = group_rows_of(parquet_of(dataset, f"{split}.parquet"))
        assert group_rows_of(parquet_of(streamed, name)) == split_groups, "one row group per row group of the split"


def test_a_rank_reads_the_same_row_groups_of_the_split_and_its_text_features(local_root, tmp_path):
    n = 1000
    rng = np.random.default_rng(3)
    table = pa.table({"title": texts(rng, n, 0.1), "clicked": rng.integers(0, 2, n)})
    dataset = publish(local_root, "PrepareDataset", {f"{s}.parquet": (table, 128) for s in SPLITS}, tmp_path)
    text = run(process, local_root, dataset, {"text_columns": ["title"], "n_features": 4, "seed": 0,
                                              "batch_rows": 50})
    split_groups = group_rows_of(parquet_of(dataset, "train.parquet"))
    text_groups = group_rows_of(parquet_of(text, "text_train.parquet"))
    assert text_groups == split_groups
    for size in (2, 3):
        assert shard_layout(text_groups, size) == shard_layout(split_groups, size)
        for rank in range(size):
            start, stop = shard_rows(n, rank, size)
            shard = load_shard(dataset, text, "train", start, stop)
            expected = text.read_parquet("text_train.parquet").slice(start, stop - start)
            assert shard.select(expected.column_names).equals(expected)
            assert shard["title"].to_pylist() == table["title"].to_pylist()[start:stop]


def test_process_text_streams_from_and_to_every_store(store_root, tmp_path):
    rng = np.random.default_rng(5)
    table = pa.table({"title": texts(rng, 500, 0.1)})
    dataset = publish(store_root, "PrepareDataset", {f"{s}.parquet": (table, 100) for s in SPLITS}, tmp_path)
    params = {"text_columns": ["title"], "n_features": 6, "seed": 2}
    streamed, whole = run(process, store_root, dataset, params), run(process_in_memory, store_root, dataset, params)
    for split in SPLITS:
        assert streamed.read_parquet(f"text_{split}.parquet").equals(whole.read_parquet(f"text_{split}.parquet"))


def test_a_text_column_the_split_lacks_is_named(local_root, tmp_path):
    table = pa.table({"title": ["a b", "c"]})
    dataset = publish(local_root, "PrepareDataset", {f"{s}.parquet": (table, 10) for s in SPLITS}, tmp_path)
    with pytest.raises(ValueError, match=r"text column 'query' is not in train\.parquet"):
        run(process, local_root, dataset, {"text_columns": ["title", "query"], "n_features": 2, "seed": 0})


# -- a split larger than the memory the step may use ---------------------------------------------------

LIMITED = """
    import uuid
    from caravan.addressing import Address
    from caravan.artifacts import Artifact
    from caravan.step import StepContext
    from caravan.storage import open_store
    import caravan.ml.text, jobs.process_text as step

    store = open_store("file://{store}")
    dataset = Artifact(store, "{dataset}")
    limit_address_space({headroom_mb})
    artifact = Artifact(store, Address("ProcessText", {{"n": uuid.uuid4().hex}}))
    writer = artifact.writer()
    try:
        getattr(step, "{function}")(StepContext(
            job="process-text", output=artifact, writer=writer, inputs={{"dataset": dataset}},
            params={{"text_columns": ["title"], "n_features": 32, "seed": 0}}, run_id="t"))
        writer.publish()
    except MemoryError as exc:
        print("MemoryError", exc)
        sys.exit(3)
    print("features", artifact.metrics["n_features"])
"""


def test_a_split_larger_than_the_memory_limit_streams_and_fails_whole(local_root, tmp_path):
    n = 400_000
    rng = np.random.default_rng(0)
    # Distinct titles (an id in each): the whole-table path builds several (rows x 32) matrices at once.
    words = np.array(WORDS[:7])
    titles = [f"item{i} {a} {b}" for i, a, b in zip(range(n), rng.choice(words, n), rng.choice(words, n), strict=True)]
    small = pa.table({"title": titles[:100]})
    dataset = publish(local_root, "PrepareDataset", {"train.parquet": (pa.table({"title": titles}), 32_768),
                                                     "valid.parquet": (small, 100), "test.parquet": (small, 100)},
                      tmp_path)
    del titles
    store = Path(open_store(local_root).root).as_posix()  # type: ignore[attr-defined]
    streamed = run_limited(LIMITED.format(store=store, dataset=dataset.id, function="process", headroom_mb=120))
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    assert "features 32" in streamed.stdout
    whole = run_limited(LIMITED.format(store=store, dataset=dataset.id, function="process_in_memory",
                                       headroom_mb=120))
    assert whole.returncode == 3, whole.stdout + whole.stderr
