"""Shards of a split for N ranks: every row exactly once, contiguous, balanced, read from the right row groups."""

from __future__ import annotations

import io
import itertools
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.errors import ArtifactCorruptError
from caravan.ml.distributed import open_parquet, read_rows, shard_layout, shard_rows, without_network
from caravan.storage import open_store
from caravan.storage.local import LocalStore


@given(total=st.integers(0, 10_000), size=st.integers(1, 64))
def test_shards_cover_every_row_once_in_order_and_differ_by_at_most_one(total: int, size: int) -> None:
    bounds = [shard_rows(total, rank, size) for rank in range(size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == total
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))
    sizes = [stop - start for start, stop in bounds]
    assert max(sizes) - min(sizes) <= 1


@given(group_rows=st.lists(st.integers(1, 50), min_size=1, max_size=12), size=st.integers(1, 8))
def test_a_rank_reads_exactly_the_row_groups_that_hold_its_rows(group_rows: list[int], size: int) -> None:
    starts = [sum(group_rows[:i]) for i in range(len(group_rows))]
    for shard in shard_layout(group_rows, size):
        start, stop = shard["rows"]
        holding = {i for i, first in enumerate(starts) for row in range(start, stop)
                   if first <= row < first + group_rows[i]}
        assert set(shard["row_groups"]) == holding


def parquet(rows: int, group_rows: int) -> pq.ParquetFile:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(rows)), "y": [f"r{i}" for i in range(rows)]}), buffer,
                   row_group_size=group_rows)
    return pq.ParquetFile(pa.BufferReader(buffer.getvalue()))


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 300), group_rows=st.integers(1, 64), size=st.integers(1, 7))
def test_the_shards_read_back_are_the_split_cut_in_order(rows: int, group_rows: int, size: int) -> None:
    source = parquet(rows, group_rows)
    parts = [read_rows(source, *shard_rows(rows, rank, size)) for rank in range(size)]
    assert pa.concat_tables(parts).column("x").to_pylist() == list(range(rows))
    assert read_rows(source, 0, 0, columns=["y"]).schema.names == ["y"]


def test_the_saved_model_leaves_out_only_the_lines_that_name_the_run_s_addresses() -> None:
    text = ("tree\nparameters:\n[boosting: gbdt]\n[num_machines: 3]\n[local_listen_port: 41000]\n"
            "[machines: 127.0.0.1:41000,127.0.0.1:41001]\n[time_out: 10]\nend of parameters\n")
    assert without_network(text) == ("tree\nparameters:\n[boosting: gbdt]\n[num_machines: 3]\n[time_out: 10]\n"
                                     "end of parameters\n")


def test_a_split_is_read_in_place_locally_and_from_a_checked_copy_elsewhere(store_root: str) -> None:
    artifact = Artifact(open_store(store_root), Address("Data", {"n": "1"}))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": list(range(100))}), buffer, row_group_size=30)
    with artifact.writer() as writer:
        writer.write_bytes("train.parquet", buffer.getvalue())
    source = open_parquet(artifact, "train.parquet")
    assert source.metadata.num_row_groups == 4
    assert read_rows(source, 25, 65).column("x").to_pylist() == list(range(25, 65))


def test_a_local_split_whose_size_is_not_the_manifest_s_is_refused(tmp_path: Path) -> None:
    artifact = Artifact(LocalStore(str(tmp_path)), Address("Data", {"n": "1"}))
    with artifact.writer() as writer:
        writer.write_bytes("train.parquet", b"PAR1" + b"0" * 20)
    path = artifact.store.path(artifact.store.key_of(artifact.file_uri("train.parquet")))
    path.write_bytes(b"PAR1")
    with pytest.raises(ArtifactCorruptError, match="size"):
        open_parquet(artifact, "train.parquet")
