"""The WebHDFS double, driven only through the real ``hdfs`` client, behaves as WebHDFS documents."""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import hdfs
import pytest
import requests
from hdfs.util import HdfsError
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.doubles.webhdfs import WebHDFSDouble


@pytest.fixture(scope="module")
def double() -> Iterator[WebHDFSDouble]:
    with WebHDFSDouble() as server:
        yield server


@pytest.fixture
def client(double: WebHDFSDouble) -> hdfs.InsecureClient:
    double.clear()
    double.reset_requests()
    return hdfs.InsecureClient(double.url, user="alice")


def read(client: hdfs.Client, path: str, **kwargs: int) -> bytes:
    with client.read(path, **kwargs) as reader:
        data: bytes = reader.read()
        return data


def test_write_then_read_round_trip(client: hdfs.InsecureClient) -> None:
    client.write("/data/part-0", data=b"hello, webhdfs")
    assert read(client, "/data/part-0") == b"hello, webhdfs"
    assert read(client, "/data/part-0", offset=7) == b"webhdfs"
    assert read(client, "/data/part-0", offset=7, length=3) == b"web"


def test_streamed_write_and_append(client: hdfs.InsecureClient) -> None:
    # A writer context streams a generator: the body arrives with chunked transfer encoding.
    with client.write("/stream.txt", encoding="utf-8") as writer:
        writer.write("first line\n")
        writer.write("second ✓\n")
    client.write("/stream.txt", data=b"third\n", append=True)
    assert read(client, "/stream.txt").decode() == "first line\nsecond ✓\nthird\n"


def test_each_write_is_one_create_on_the_namenode_and_one_on_the_datanode(
        double: WebHDFSDouble, client: hdfs.InsecureClient) -> None:
    for i in range(3):
        client.write(f"/counted/{i}", data=b"x")
    assert double.count("CREATE") == 3
    assert double.count("CREATE", datanode=True) == 3
    assert double.requests[:2] == [("PUT", "/webhdfs/v1/counted/0", "CREATE"),
                                   ("PUT", "/datanode/webhdfs/v1/counted/0", "CREATE")]
    double.reset_requests()
    assert double.requests == []


def test_overwrite_false_refuses_an_existing_file(client: hdfs.InsecureClient) -> None:
    client.write("/f", data=b"old")
    with pytest.raises(HdfsError) as caught:
        client.write("/f", data=b"new")
    assert caught.value.exception == "FileAlreadyExistsException"
    assert "/f" in caught.value.message and "already exists" in caught.value.message
    assert read(client, "/f") == b"old"
    client.write("/f", data=b"new", overwrite=True)
    assert read(client, "/f") == b"new"


def test_a_file_cannot_replace_a_directory(client: hdfs.InsecureClient) -> None:
    client.makedirs("/d/e")
    for overwrite in (False, True):
        with pytest.raises(HdfsError) as caught:
            client.write("/d", data=b"x", overwrite=overwrite)
        assert caught.value.exception == "FileAlreadyExistsException"
    client.write("/d/e/f", data=b"x")
    with pytest.raises(HdfsError) as caught:
        client.write("/d/e/f/g", data=b"x")
    assert caught.value.exception == "ParentNotDirectoryException"


def test_status_and_list(double: WebHDFSDouble, client: hdfs.InsecureClient) -> None:
    client.write("/dir/b.bin", data=b"12345")
    client.makedirs("/dir/a")
    status = client.status("/dir/b.bin")
    assert status["type"] == "FILE" and status["length"] == 5 and status["pathSuffix"] == ""
    assert status["owner"] == "alice" and status["permission"] == "644" and status["replication"] == 3
    assert set(status) >= {"accessTime", "blockSize", "childrenNum", "fileId", "group", "modificationTime",
                           "storagePolicy"}
    directory = client.status("/dir")
    assert directory["type"] == "DIRECTORY" and directory["childrenNum"] == 2 and directory["length"] == 0
    assert client.list("/dir") == ["a", "b.bin"]
    assert [(name, st["type"]) for name, st in client.list("/dir", status=True)] == [
        ("a", "DIRECTORY"), ("b.bin", "FILE")]
    listing = client._list_status("/dir/b.bin").json()["FileStatuses"]["FileStatus"]
    assert [(st["pathSuffix"], st["length"]) for st in listing] == [("", 5)]
    with pytest.raises(HdfsError, match="is not a directory"):
        client.list("/dir/b.bin")


def test_relative_paths_resolve_under_the_home_directory(client: hdfs.InsecureClient) -> None:
    client.write("rel/x", data=b"1")
    assert client.list("/user/alice/rel") == ["x"]


def test_makedirs_creates_parents_and_is_idempotent(client: hdfs.InsecureClient) -> None:
    client.makedirs("/a/b/c", permission="700")
    client.makedirs("/a/b/c")
    assert client.status("/a/b/c")["permission"] == "700"
    assert client.list("/a") == ["b"]
    client.write("/a/file", data=b"")
    with pytest.raises(HdfsError) as caught:
        client.makedirs("/a/file")
    assert caught.value.exception == "FileAlreadyExistsException"


def test_rename(client: hdfs.InsecureClient) -> None:
    client.write("/src", data=b"s")
    client.rename("/src", "/moved")
    assert read(client, "/moved") == b"s" and client.status("/src", strict=False) is None


def test_rename_onto_an_existing_file_fails_and_keeps_both(client: hdfs.InsecureClient) -> None:
    client.write("/one", data=b"1")
    client.write("/two", data=b"2")
    with pytest.raises(HdfsError, match="Unable to rename"):
        client.rename("/one", "/two")
    assert read(client, "/one") == b"1" and read(client, "/two") == b"2"


def test_rename_into_an_existing_directory_nests_the_source(client: hdfs.InsecureClient) -> None:
    client.write("/tree/leaf", data=b"l")
    client.makedirs("/target")
    client.rename("/tree", "/target")
    assert client.list("/target") == ["tree"]
    assert read(client, "/target/tree/leaf") == b"l"


def test_concurrent_renames_onto_one_name_have_one_winner(double: WebHDFSDouble,
                                                          client: hdfs.InsecureClient) -> None:
    for i in range(16):
        client.write(f"/tmp/{i}", data=str(i).encode())

    def publish(i: int) -> bool:
        try:
            hdfs.InsecureClient(double.url, user="alice").rename(f"/tmp/{i}", "/published")
            return True
        except HdfsError:
            return False

    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(publish, range(16)))
    assert outcomes.count(True) == 1
    assert read(client, "/published") == str(outcomes.index(True)).encode()


@pytest.mark.parametrize(("src", "dst"), [("/missing", "/x"), ("/f", "/no/parent"), ("/d", "/d/inside")])
def test_rename_refusals(client: hdfs.InsecureClient, src: str, dst: str) -> None:
    client.write("/f", data=b"f")
    client.makedirs("/d")
    with pytest.raises(HdfsError, match="Unable to rename"):
        client.rename(src, dst)


def test_delete(client: hdfs.InsecureClient) -> None:
    client.write("/full/sub/file", data=b"x")
    with pytest.raises(HdfsError) as caught:
        client.delete("/full")
    assert caught.value.exception == "PathIsNotEmptyDirectoryException"
    assert client.delete("/full/sub/file") is True
    assert client.delete("/full/sub/file") is False
    client.write("/full/sub/file", data=b"x")
    assert client.delete("/full", recursive=True) is True
    assert client.status("/full", strict=False) is None
    assert client.delete("/", recursive=True) is False


def test_missing_paths_are_file_not_found(client: hdfs.InsecureClient) -> None:
    calls = (lambda: client.status("/nope"), lambda: client.list("/nope"), lambda: read(client, "/nope"),
             # ignore_missing only forgives nested folders: walk() starts with a strict status.
             lambda: list(client.walk("/nope", ignore_missing=True)))
    for call in calls:
        with pytest.raises(HdfsError) as caught:
            call()
        assert caught.value.exception == "FileNotFoundException"
    assert client.status("/nope", strict=False) is None


def test_unknown_and_misrouted_ops_are_bad_requests(double: WebHDFSDouble,
                                                    client: hdfs.InsecureClient) -> None:
    for method, op in (("GET", "NOSUCHOP"), ("GET", "MKDIRS"), ("PUT", "OPEN"), ("DELETE", "RENAME")):
        response = client._request(method, f"{double.url}/webhdfs/v1/x?op={op}")
        assert response.status_code == 400
        assert response.headers["Content-Type"] == "application/json"
        remote = response.json()["RemoteException"]
        assert remote["exception"] == "IllegalArgumentException"
        assert remote["javaClassName"] == "java.lang.IllegalArgumentException"
        assert f"Op.{op}" in remote["message"]


def test_paths_with_percent_and_equals_round_trip(double: WebHDFSDouble, client: hdfs.InsecureClient) -> None:
    name = "k=a%2Fb--0123abcd"
    client.write(f"/p/{name}", data=b"v")
    assert client.list("/p") == [name]
    assert read(client, f"/p/{name}") == b"v"
    # The client quotes "%" (and keeps "=") on the wire; the server decodes the path once.
    assert ("PUT", f"/webhdfs/v1/p/{name}", "CREATE") in double.requests


def test_token_client() -> None:
    with WebHDFSDouble(token="s3cr3t", default_user="svc") as secured:
        client = hdfs.TokenClient(secured.url, "s3cr3t")
        client.write("relative", data=b"t")
        assert read(client, "/user/svc/relative") == b"t"
        assert client.status("relative")["owner"] == "svc"
        with pytest.raises(HdfsError) as caught:
            hdfs.TokenClient(secured.url, "wrong").status("/")
        assert caught.value.exception == "SecurityException"
        with pytest.raises(HdfsError, match="Authentication failure"):
            hdfs.InsecureClient(secured.url, user="alice").status("/")


def test_stop_closes_the_port_and_kept_alive_connections() -> None:
    server = WebHDFSDouble()
    client = hdfs.InsecureClient(server.start(), user="alice")
    client.makedirs("/x")
    server.stop()
    with pytest.raises(requests.ConnectionError):
        client.status("/x")


segments = st.text(alphabet="abcXYZ019-_.=%+~ é✓", min_size=1, max_size=12).filter(
    lambda s: s not in (".", ".."))  # which the client's normpath would resolve away
encoded = st.builds(lambda key, value, tag: f"{key}={value}--{tag}",
                    st.from_regex(r"[a-z]{1,5}", fullmatch=True),
                    st.text(alphabet="ab%2F=", max_size=8),
                    st.from_regex(r"[0-9a-f]{8}", fullmatch=True))


@settings(max_examples=60, deadline=None)
@given(parents=st.lists(segments, max_size=3), name=segments | encoded, data=st.binary(max_size=2048))
def test_any_relative_path_round_trips(double: WebHDFSDouble, parents: list[str], name: str,
                                       data: bytes) -> None:
    double.clear()
    double.reset_requests()
    client = hdfs.InsecureClient(double.url, user="prop")
    path = posixpath.join(*parents, name)
    client.write(path, data=data)
    assert read(client, path) == data
    assert name in client.list(posixpath.dirname(path) or ".")
    assert double.count("CREATE") == 1
