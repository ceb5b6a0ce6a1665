"""External inputs are identified by what is there: one listing, no reads, on every store."""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan import open_store
from caravan.dataio import (
    InputChanged,
    ObjectStat,
    ParquetSource,
    fingerprint_of,
    fingerprints_in,
    input_fingerprint,
    parquet_keys,
    read_input,
)


def parquet_bytes(values: list[int]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"x": values}), buffer)
    return buffer.getvalue()


@pytest.fixture
def store(store_root):
    return open_store(store_root)


def test_an_untouched_folder_keeps_its_fingerprint_and_a_rewritten_file_changes_it(store):
    store.write("table/part-0.parquet", parquet_bytes([1, 2, 3]))
    store.write("table/date=1/part-1.parquet", parquet_bytes([4]))
    uri = store.uri("table/")
    first = input_fingerprint(uri)
    assert first["files"] == 2 and first["bytes"] > 0
    assert input_fingerprint(uri) == first
    store.write("table/part-0.parquet", parquet_bytes([1, 2, 4]))  # same size, other bytes
    changed = input_fingerprint(uri)
    assert changed["fingerprint"] != first["fingerprint"]
    store.write("table/part-2.parquet", parquet_bytes([5]))
    assert input_fingerprint(uri)["files"] == 3


def test_markers_and_hidden_files_do_not_count(store):
    store.write("table/part-0.parquet", parquet_bytes([1]))
    uri = store.uri("table")
    before = input_fingerprint(uri)
    for key in ("table/_SUCCESS", "table/.part-9.parquet", "table/_temporary/0/part-9.parquet", "table/notes.txt"):
        store.write(key, b"x")
    assert input_fingerprint(uri) == before
    assert parquet_keys(uri)[1] == ["table/part-0.parquet"]


def test_a_single_file_is_fingerprinted_alone(store):
    store.write("events.parquet", parquet_bytes([1, 2]))
    store.write("events.parquet.bak", parquet_bytes([1, 2, 3]))
    fingerprint = input_fingerprint(store.uri("events.parquet"))
    assert fingerprint["files"] == 1
    assert fingerprint["bytes"] == len(parquet_bytes([1, 2]))


def test_a_missing_input_has_no_files_and_its_source_is_incomplete(store):
    uri = store.uri("nothing/")
    assert input_fingerprint(uri)["files"] == 0
    assert not ParquetSource(uri=uri).complete()


def test_fingerprinting_reads_no_object(store):
    store.write("table/a.parquet", parquet_bytes([1]))
    store.write("table/b.parquet", parquet_bytes([2]))
    store.requests.clear()
    input_fingerprint(store.uri("table/"))
    scheme = store.root_uri.split("://")[0]
    if scheme == "s3":  # one ListObjectsV2 page
        assert sum(store.requests.values()) == 1
    elif scheme == "hdfs":  # GETFILESTATUS of the folder, one LISTSTATUS of it; never an OPEN (GET + redirect)
        assert sum(store.requests.values()) == 2
    assert store.requests["read"] == 0


def test_an_unchanged_input_costs_one_listing_per_run(store):
    store.write("table/a.parquet", parquet_bytes([1]))
    target = ParquetSource(uri=store.uri("table/")).output()
    store.requests.clear()
    fingerprint = target.fingerprint()  # the downstream address takes it...
    assert target.exists()  # ...and luigi's completeness check right after needs no listing of its own
    if store.root_uri.startswith("s3://"):
        assert sum(store.requests.values()) == 1
    assert target.fingerprint() == fingerprint


def test_reading_data_that_changed_after_its_fingerprint_fails_naming_it(store):
    store.write("table/a.parquet", parquet_bytes([1]))
    uri = store.uri("table/")
    expected = input_fingerprint(uri)
    table, seen = read_input(uri, expected=expected)
    assert table.num_rows == 1 and seen["fingerprint"] == expected["fingerprint"]
    assert seen["file_list"][0][0] == "table/a.parquet"
    store.write("table/a.parquet", parquet_bytes([1, 2]))
    with pytest.raises(InputChanged) as info:
        read_input(uri, expected=expected)
    assert uri in str(info.value) and "run the pipeline again" in str(info.value)


stats = st.lists(st.builds(ObjectStat, key=st.text(min_size=1, max_size=8), size=st.integers(0, 10**9),
                           version=st.text(max_size=12)), max_size=5, unique_by=lambda s: s.key)


@given(stats, st.data())
def test_any_change_to_a_file_changes_the_fingerprint(files, data):
    before = fingerprint_of("s3://b/t/", files)
    assert fingerprint_of("s3://b/t/", list(files)) == before
    if not files:
        return
    index = data.draw(st.integers(0, len(files) - 1))
    old = files[index]
    field = data.draw(st.sampled_from(["size", "version"]))
    new = (ObjectStat(old.key, old.size + 1, old.version) if field == "size"
           else ObjectStat(old.key, old.size, old.version + "x"))
    changed = [*files[:index], new, *files[index + 1:]]
    assert fingerprint_of("s3://b/t/", changed)["fingerprint"] != before["fingerprint"]


def test_fingerprints_are_found_wherever_upstream_holds_them():
    a = {"uri": "s3://b/a/", "files": 1, "bytes": 3, "fingerprint": "f1"}
    b = {"uri": "/data/b.parquet", "files": 1, "bytes": 4, "fingerprint": "f2"}
    upstream = {"events_1": [a], "nested": {"x": [b]}, "dataset": "PrepareTable/abc--0123"}
    assert fingerprints_in(upstream) == {"s3://b/a/": a, "/data/b.parquet": b}
    assert fingerprints_in(None) == {} and fingerprints_in("Family/id") == {}


def test_an_input_uri_names_its_file_percent_encoded_as_the_store_prints_it(store):
    store.write("my events %.parquet", parquet_bytes([1, 2, 3]))
    uri = store.uri("my events %.parquet")
    assert "%20" in uri and "%25" in uri
    fingerprint = input_fingerprint(uri)
    assert fingerprint["files"] == 1
    assert fingerprint["bytes"] == len(parquet_bytes([1, 2, 3]))
    table, _ = read_input(uri)
    assert table.num_rows == 3
