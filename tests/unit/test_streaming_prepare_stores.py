"""prepare-dataset reads window parts on S3 (moto) and HDFS (the WebHDFS double) streamed (issue 14).

Each remote part is copied chunk by chunk to a local temporary file while it is read, then scanned as a
local part: the splits are those of the same data read locally, Python holds a few chunks of a part, never
the part, and the copy is gone after the read, whether it ended, failed, or was abandoned.
"""

from __future__ import annotations

import io
import tempfile
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.errors import ArtifactNotFoundError
from caravan.step import StepContext
from caravan.storage import open_store
from jobs.prepare_dataset import _Window, prepare
from tests.unit.test_streaming_prepare import events, run, splits, write_sources

REMOTE = ["s3", "hdfs"]
SMALL_CHUNK = 256 * 2**10


def parquet_bytes(table: pa.Table, row_group: int) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group)
    return buffer.getvalue()


def put_sources(root: str, table: pa.Table, files: int, row_group: int) -> str:
    """``table`` as ``files`` Parquet objects under a fresh prefix of the store at ``root``; the prefix's URI."""
    store = open_store(root)
    prefix = f"in-{uuid.uuid4().hex[:8]}/"
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        store.write(f"{prefix}part-{i}.parquet",
                    parquet_bytes(table.slice(bounds[i], bounds[i + 1] - bounds[i]), row_group))
    return store.uri(prefix)


def window_of(uri: str) -> _Window:
    artifact = Artifact(open_store(f"file://{tempfile.gettempdir()}/unused"), Address("PrepareDataset", {"n": "w"}))
    return _Window(StepContext(job="prepare-dataset", output=artifact, writer=artifact.writer(), inputs={},
                               params={"sources": [uri]}, run_id="t"))


@pytest.fixture
def temp_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder temporary files go to in this test (tempfile's own setting), empty."""
    folder = tmp_path / "temp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.mark.parametrize("split", ["hash", "time"])
def test_parts_on_a_remote_store_give_the_splits_of_the_same_parts_read_locally(store_root, tmp_path, temp_folder,
                                                                               split):
    table = events(600, 11)
    remote = put_sources(store_root, table, 3, 40)
    local = write_sources(tmp_path / "in", table, 3, 40)
    ours, theirs = run(prepare, tmp_path / "a", remote, split=split), run(prepare, tmp_path / "b", local, split=split)
    for name, part in splits(ours).items():
        other = splits(theirs)[name]
        assert part.schema == other.schema and repr(part.to_pylist()) == repr(other.to_pylist()), name
    # (stats.json is not compared: KLL's compactions are randomised, run to run.)
    assert ours.read_json("schema.json") == theirs.read_json("schema.json")
    assert ours.metrics == theirs.metrics
    assert list(temp_folder.iterdir()) == [], "every part's copy is removed"


@pytest.mark.parametrize("backend", REMOTE)
def test_an_upstream_events_artifact_on_a_remote_store_streams_too(request, backend, tmp_path, temp_folder):
    from tests.conftest import root_for

    root = root_for(backend, request, tmp_path)
    table = events(300, 4)
    upstream = Artifact(open_store(root), Address("JoinEvents", {"n": uuid.uuid4().hex}))
    source = tmp_path / "events.parquet"
    pq.write_table(table, source, row_group_size=64)
    with upstream.writer() as writer:
        writer.write_file("events.parquet", source)
    expected = run(prepare, tmp_path / "b", write_sources(tmp_path / "in", table, 1, 64))
    artifact = Artifact(open_store(f"file://{tmp_path / 'a'}"), Address("PrepareDataset", {"n": uuid.uuid4().hex}))
    writer = artifact.writer()
    params = {"sources": [], "split": "hash", "valid_fraction": 0.2,
              "test_fraction": 0.2, "seed": 7, "label": "clicked", "time_column": "event_time", "min_rows": 1,
              "batch_rows": 37, "row_group_rows": 50}
    prepare(StepContext(job="prepare-dataset", output=artifact, writer=writer,
                        inputs={"events": Artifact(open_store(root), upstream.id)}, params=params, run_id="t"))
    writer.publish()
    for name, part in splits(artifact).items():
        assert repr(part.to_pylist()) == repr(splits(expected)[name].to_pylist()), name
    assert list(temp_folder.iterdir()) == []


@pytest.mark.parametrize("backend", REMOTE)
def test_reading_a_remote_part_holds_a_few_chunks_not_the_part(request, backend, tmp_path, monkeypatch):
    import caravan.storage.hdfs
    import caravan.storage.s3
    from tests.conftest import root_for

    # Small chunks, so that a part of a few MB is many chunks (the same code path as 8 MiB chunks of a GB part).
    for module in (caravan.storage.s3, caravan.storage.hdfs):
        monkeypatch.setattr(module, "CHUNK_BYTES", SMALL_CHUNK)
    rng = np.random.default_rng(0)
    table = pa.table({"x": rng.random(400_000), "clicked": rng.integers(0, 2, 400_000)})
    data = parquet_bytes(table, 50_000)
    assert len(data) > 12 * SMALL_CHUNK
    store = open_store(root_for(backend, request, tmp_path))
    store.write("in/part-0.parquet", data)
    del data
    window = window_of(store.uri("in/"))
    tracemalloc.start()
    try:
        rows = sum(batch.num_rows for batch in window.batches(65_536))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rows == table.num_rows
    # The chunk being written, the client's read buffer, and small change; the part itself is > 12 chunks.
    assert peak < 4 * SMALL_CHUNK, peak


@pytest.mark.parametrize("backend", REMOTE)
def test_a_part_copy_is_removed_when_reading_fails_or_stops(request, backend, tmp_path, temp_folder):
    from tests.conftest import root_for

    store = open_store(root_for(backend, request, tmp_path))
    store.write("bad/part-0.parquet", b"not parquet at all")
    with pytest.raises(pa.ArrowInvalid):
        window_of(store.uri("bad/"))
    assert list(temp_folder.iterdir()) == [], "a part that is no Parquet file"

    store.write("in/part-0.parquet", parquet_bytes(events(200, 1), 20))
    window = window_of(store.uri("in/"))
    seen: list[list[Path]] = []

    def consume() -> None:
        for _ in window.batches(16):
            seen.append(list(temp_folder.iterdir()))
            raise RuntimeError("the consumer failed")

    with pytest.raises(RuntimeError, match="the consumer failed"):
        consume()
    assert len(seen) == 1 and len(seen[0]) == 1, "the part was read from a temporary copy"
    assert list(temp_folder.iterdir()) == [], "a consumer that failed mid-part"

    store.delete("in/part-0.parquet")  # gone after the listing: the copy fails at the first chunk
    with pytest.raises(ArtifactNotFoundError):
        sum(batch.num_rows for batch in window.batches(16))
    assert list(temp_folder.iterdir()) == [], "a copy that failed"
