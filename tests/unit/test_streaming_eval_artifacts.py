"""Large artifact files stream to and from every store (local, moto's S3, the WebHDFS double), a chunk at a time."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
import uuid

import pytest

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.errors import ArtifactCorruptError, ArtifactNotFoundError
from caravan.storage import open_store
from caravan.storage.base import CHUNK_BYTES


def _artifact(root: str) -> Artifact:
    return Artifact(open_store(root), Address("PrepareDataset", {"n": uuid.uuid4().hex}))


def test_a_file_larger_than_a_chunk_streams_in_and_out_with_memory_for_a_chunk(store_root, tmp_path):
    # Five and a half chunks: a multipart upload of six parts on S3, chunked reads everywhere.
    data = os.urandom(5 * CHUNK_BYTES + CHUNK_BYTES // 2)
    source = tmp_path / "big.parquet"
    source.write_bytes(data)
    artifact = _artifact(store_root)
    with artifact.writer() as writer:
        tracemalloc.start()
        try:
            writer.write_file("train.parquet", source)
            staged_peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    published = Artifact(open_store(store_root), artifact.id)
    assert published.manifest()["files"]["train.parquet"] == {
        "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    tracemalloc.start()
    try:
        with published.local_file("train.parquet") as path:
            read_peak = tracemalloc.get_traced_memory()[1]
            assert path.read_bytes() == data
    finally:
        tracemalloc.stop()
    # The file is 5.5 chunks; staging or fetching it holds a few chunks whatever its size (one locally; on S3
    # botocore keeps copies of the part it sends for its checksum, and the read buffers of the response).
    # The WebHDFS double runs in this process and keeps the body it receives, a copy of the file: not ours.
    # (Sending the file as bytes would add a second copy: 2 x 5.5 chunks.)
    held_by_the_double = len(data) if store_root.startswith("hdfs") else 0
    assert staged_peak - held_by_the_double < 3.2 * CHUNK_BYTES, staged_peak
    assert read_peak < 3.2 * CHUNK_BYTES, read_peak
    assert published.read_bytes("train.parquet") == data, "the whole-bytes path reads what the streamed one wrote"


def test_a_streamed_copy_that_does_not_match_the_manifest_is_refused(store_root, tmp_path):
    source = tmp_path / "part.parquet"
    source.write_bytes(b"the bytes the manifest vouches for")
    artifact = _artifact(store_root)
    with artifact.writer() as writer:
        writer.write_file("test.parquet", source)
    published = Artifact(open_store(store_root), artifact.id)
    store = published.store
    store.write(store.key_of(published.file_uri("test.parquet")), b"the bytes somebody put there later")
    with pytest.raises(ArtifactCorruptError, match=r"'test\.parquet' does not match its manifest"), \
            published.local_file("test.parquet"):
        pass
    with pytest.raises(ArtifactNotFoundError, match=r"no file 'valid\.parquet'"), published.local_file("valid.parquet"):
        pass


def test_a_file_that_cannot_be_staged_publishes_nothing(store_root, tmp_path):
    artifact = _artifact(store_root)
    with pytest.raises(FileNotFoundError), artifact.writer() as writer:
        writer.write_json("schema.json", {"columns": []})
        writer.write_file("train.parquet", tmp_path / "never-written.parquet")
    assert not Artifact(open_store(store_root), artifact.id).exists()
    assert list(artifact.store.list_keys(artifact.key + "/")) == [], "the attempt's staged files are discarded"


def test_a_split_on_any_store_is_read_in_batches_from_a_verified_copy(store_root, tmp_path):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from caravan.ml.split_batches import SplitBatches

    table = pa.table({"x": np.arange(5000, dtype=np.float64), "clicked": np.arange(5000) % 2})
    pq.write_table(table, tmp_path / "test.parquet", row_group_size=700)
    artifact = _artifact(store_root)
    with artifact.writer() as writer:
        writer.write_file("test.parquet", tmp_path / "test.parquet")
    with SplitBatches(Artifact(open_store(store_root), artifact.id), None, "test", ["clicked"], 512) as split:
        parts = list(split)
    assert max(part.num_rows for part in parts) <= 512
    assert pa.concat_tables(parts) == table.select(["clicked"])
