"""One contract for every Store backend: local files, moto's S3 server, and WebHDFS."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan import ArtifactNotFoundError, ConfigurationError, open_store
from caravan.addressing import Address


@pytest.fixture
def store(store_root):
    return open_store(store_root)


def test_write_then_read_round_trips_and_write_replaces(store):
    store.write("a/b/c.bin", b"one")
    assert store.read("a/b/c.bin") == b"one"
    store.write("a/b/c.bin", b"two, longer")
    assert store.read("a/b/c.bin") == b"two, longer"
    assert store.exists("a/b/c.bin")


def test_reading_a_missing_object_names_it_and_the_store(store):
    with pytest.raises(ArtifactNotFoundError) as info:
        store.read("nothing/here.json")
    assert "nothing/here.json" in str(info.value)
    assert store.root_uri in str(info.value)
    assert not store.exists("nothing/here.json")


def test_create_writes_only_when_the_key_is_free(store):
    assert store.create("x/_MANIFEST.json", b"first") is True
    assert store.create("x/_MANIFEST.json", b"second") is False
    assert store.read("x/_MANIFEST.json") == b"first"


def test_concurrent_creates_have_exactly_one_winner(store):
    results: dict[int, bool] = {}

    def attempt(i: int) -> None:
        results[i] = store.create("race/_MANIFEST.json", f"writer {i}".encode())

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, won in results.items() if won]
    assert len(winners) == 1
    assert store.read("race/_MANIFEST.json") == f"writer {winners[0]}".encode()


def test_listing_is_recursive_and_respects_the_prefix_boundary(store):
    for key in ("p/a/1", "p/a/sub/2", "p/b/_M", "pq/c/_M"):
        store.write(key, b"x")
    assert sorted(store.list_keys("p/")) == ["p/a/1", "p/a/sub/2", "p/b/_M"]
    assert list(store.list_keys("missing/")) == []


def test_children_with_marker_finds_exactly_the_marked_children(store):
    store.write("fam/date=1/a--1/_M", b"x")
    store.write("fam/date=1/b--2/file", b"x")
    store.write("fam/date=1/c--3/deeper/_M", b"x")
    store.write("fam/date=1/d--4/_M", b"x")
    assert store.children_with("fam/date=1/", "_M") == {"a--1", "d--4"}
    assert store.children_with("fam/date=2/", "_M") == set()


def test_delete_prefix_removes_only_that_prefix(store):
    store.write("d/one/x", b"1")
    store.write("d/one/y/z", b"2")
    store.write("d/onex/keep", b"3")
    store.delete_prefix("d/one/")
    assert list(store.list_keys("d/one/")) == []
    assert store.read("d/onex/keep") == b"3"
    store.delete_prefix("d/never-there/")


def test_delete_removes_one_object_only(store):
    for key in ("del/a", "del/ab", "del/a2/x"):
        store.write(key, b"x")
    store.delete("del/a")
    assert not store.exists("del/a")
    assert sorted(store.list_keys("del/")) == ["del/a2/x", "del/ab"]
    store.delete("del/never-there")


def test_empty_objects_are_objects(store):
    store.write("e/empty", b"")
    assert store.read("e/empty") == b""
    assert store.exists("e/empty")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.text(max_size=60), max_size=3),
       data=st.binary(max_size=2048))
def test_any_rendered_address_is_a_usable_key(store, params, data):
    key = Address("Family", params).key + "/file.bin"
    store.write(key, data)
    assert store.read(key) == data
    assert key in set(store.list_keys("Family/"))


def test_unknown_scheme_is_a_clear_configuration_error():
    with pytest.raises(ConfigurationError, match=r"unknown scheme 'gs'.*s3://"):
        open_store("gs://bucket/prefix")
