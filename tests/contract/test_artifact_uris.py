"""Artifact URIs are RFC 3986 / RFC 8089 URIs: other tools open exactly the folder caravan wrote.

pyarrow decodes ``%XX`` in ``file://`` and ``s3://`` paths (as fsspec and pandas do); caravan's keys
hold no ``%`` (parameters are escaped as ``~XX``) and anything else a URI cannot hold is percent-encoded
by the store, so the URI caravan prints, decoded by pyarrow, is the path the store wrote.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from urllib.parse import quote

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caravan import Address, Artifact, open_store
from caravan.artifacts import check_file_name
from caravan.storage.base import Store

#: Parameter values with what used to go wrong: '%', spaces, '/', unicode, and anything else.
nasty = st.sampled_from(["a%20b%25c", "a b", "x/y/../z", "é €", "%", "~7E", "..", "50%", "a+b;c?d#e"])
values = nasty | st.text(max_size=40)


def _file_name(text: str) -> bool:
    try:
        check_file_name(text)
    except ValueError:
        return False
    return True


file_names = (nasty | st.text(min_size=1, max_size=40)).filter(_file_name)
S3_ROOT = f"s3://caravan-test/{uuid.uuid4().hex[:8]}-r%C3%A9%20x"
FIXTURE_OK = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def address(name: str, other: str = "x") -> Address:
    return Address("Thing", {"date": "2026-11-22", "name": name, "other": other}, partition_key="date")


def publish(store: Store, addr: Address) -> Artifact:
    target = Artifact(store, addr)
    with target.writer(run_id="r1") as writer:
        writer.write_parquet("table.parquet", pa.table({"v": [1, 2, 3]}))
        writer.write_text("notes and more %20.txt", "hello\n")
    return target


@FIXTURE_OK
@given(values, file_names)
def test_uri_to_key_round_trip_is_the_identity(store_root, value, file_name):
    store = open_store(store_root)
    addr = address(value)
    assert "%" not in addr.key
    assert store.uri(addr.key) == f"{store.root_uri}/{addr.key}", "an artifact URI is its root, '/', its id"
    keys = [addr.key, f"{addr.key}/_logs/run/{file_name}", f"{addr.key}/_attempts/a/{file_name}/f %.txt"]
    for key in keys:
        assert store.key_of(store.uri(key)) == key
    assert open_store(store.uri(addr.key).rsplit("/" + addr.key, 1)[0]).root_uri == store.root_uri


@FIXTURE_OK
@given(values)
def test_pyarrow_opens_the_local_folder_from_the_uri(tmp_path_factory, value):
    # The root itself has a space, a '%' and unicode: the file URI percent-encodes them.
    root = tmp_path_factory.mktemp("uris") / "root dir %20 é"
    store = open_store(str(root))
    target = publish(store, address(value))
    filesystem, path = pafs.FileSystem.from_uri(target.uri)
    assert isinstance(filesystem, pafs.LocalFileSystem)
    assert Path(path) == store.path(target.key)
    assert filesystem.get_file_info(path).type == pafs.FileType.Directory
    with filesystem.open_input_stream(f"{path}/_MANIFEST.json") as stream:
        assert stream.read() == store.read(target.manifest_key)
    assert ds.dataset(target.file_uri("table.parquet")).to_table().column("v").to_pylist() == [1, 2, 3]
    filesystem, path = pafs.FileSystem.from_uri(target.file_uri("notes and more %20.txt"))
    with filesystem.open_input_stream(path) as stream:
        assert stream.read() == b"hello\n"


def test_local_uris_are_valid_file_uris(tmp_path):
    store = open_store(str(tmp_path / "a b"))
    target = publish(store, address("a%20b%25c"))
    assert target.uri.startswith("file:///") and " " not in target.uri and "%25" not in target.uri
    assert target.uri.endswith("/Thing/date=2026-11-22/name=a~2520b~2525c,other=x--" + target.address.digest)
    assert (tmp_path / "a b" / target.key).is_dir()


def s3_filesystem(uri: str, endpoint: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's reading of an ``s3://`` URI, pointed at moto (the query only adds connection options)."""
    scheme, _, host = endpoint.partition("://")
    return pafs.FileSystem.from_uri(f"{uri}?endpoint_override={quote(host)}&scheme={scheme}&region=us-east-1")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values)
@example("a%20b%25c").via("the issue's folder")
@example("a b/c").via("space and slash")
@example("é €").via("unicode")
def test_pyarrow_opens_the_s3_folder_from_the_uri(s3_endpoint, value):
    # The root's prefix is written percent-encoded ("r%C3%A9 x" is "ré x"), as RFC 3986 says.
    store = open_store(S3_ROOT)  # one root (and client) for every example: the same value is the same artifact
    assert store.base.endswith("-ré x")
    target = publish(store, address(value))
    filesystem, path = s3_filesystem(target.uri, s3_endpoint)
    assert path == f"caravan-test/{store.base}/{target.key}"
    assert filesystem.get_file_info(path).type == pafs.FileType.Directory
    with filesystem.open_input_stream(f"{path}/_MANIFEST.json") as stream:
        assert stream.read() == store.read(target.manifest_key)
    filesystem, path = s3_filesystem(target.file_uri("table.parquet"), s3_endpoint)
    assert ds.dataset(path, filesystem=filesystem).to_table().column("v").to_pylist() == [1, 2, 3]


def test_a_uri_outside_the_store_is_refused(local_root):
    store = open_store(local_root)
    with pytest.raises(ValueError, match="not inside the store"):
        store.key_of("file:///elsewhere/x")


def test_an_artifact_published_before_ids_were_uri_safe_is_still_opened_from_its_uri(local_root):
    from caravan.step import artifact_at

    store = open_store(local_root)
    legacy_id = "Thing/date=2026-11-22/name=a%20b%25c--0123456789abcdef"  # the old %XX escaping
    store.write(f"{legacy_id}/_MANIFEST.json", json.dumps({"artifact_id": legacy_id, "files": {}}).encode())
    legacy = Artifact(store, legacy_id)
    assert legacy.uri.endswith("/name=a%2520b%2525c--0123456789abcdef"), "a valid URI of the folder on disk"
    filesystem, path = pafs.FileSystem.from_uri(legacy.uri)
    assert Path(path) == store.path(legacy_id) and filesystem.get_file_info(path).type == pafs.FileType.Directory
    assert artifact_at(legacy.uri, legacy_id).exists()
    assert artifact_at(f"{store.root_uri}/{legacy_id}", legacy_id).exists(), "as pointers recorded it"
