"""The HDFS store translates every client call, its clean-up in ``finally`` included (WebHDFS double).

Failures are injected with a requests response hook on the store's session (a documented requests
feature): the hook raises ``ConnectionError`` for chosen requests, as a namenode that went away would.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
import requests

from caravan.errors import BackendUnavailable
from caravan.storage.hdfs import HdfsStore


@pytest.fixture
def store(webhdfs_url: str) -> HdfsStore:
    return HdfsStore(f"hdfs://{webhdfs_url.split('://', 1)[1]}/caravan/{uuid.uuid4().hex[:8]}")


def fail_when(store: HdfsStore, broken: Callable[[requests.PreparedRequest], bool]) -> list[str]:
    """From now on, requests for which ``broken(request)`` holds fail to connect; returns what failed."""
    failed: list[str] = []

    def hook(response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        if broken(response.request):
            failed.append(f"{response.request.method} {response.request.url}")
            response.close()
            raise requests.ConnectionError("connection reset by peer (injected)")
        return response

    store.client._session.hooks["response"].insert(0, hook)
    return failed


def op(request: requests.PreparedRequest) -> str:
    return (request.url or "").split("op=", 1)[1].split("&", 1)[0].upper() if "op=" in (request.url or "") else ""


def test_a_namenode_lost_mid_publish_is_backend_unavailable_not_a_client_exception(store: HdfsStore) -> None:
    failed = fail_when(store, lambda r: op(r) in ("RENAME", "GETFILESTATUS", "DELETE"))
    with pytest.raises(BackendUnavailable, match="RENAME"):
        store.create("a/manifest.json", b"{}")
    assert any("RENAME" in f for f in failed) and any("GETFILESTATUS" in f for f in failed), \
        "the clean-up in finally ran and failed too, without replacing the rename's error"


def test_a_failed_clean_up_after_a_publish_does_not_undo_its_success(store: HdfsStore) -> None:
    failed = fail_when(store, lambda r: op(r) == "GETFILESTATUS" and ".tmp" in (r.url or ""))
    assert store.create("b/manifest.json", b"{}") is True
    assert failed, "the clean-up's status call did fail"
    failed_before = len(failed)
    assert store.read("b/manifest.json") == b"{}" and store.create("b/manifest.json", b"{}") is False
    assert len(failed) > failed_before


def test_a_failed_replace_is_backend_unavailable(store: HdfsStore) -> None:
    store.write("c/object", b"old")
    fail_when(store, lambda r: op(r) == "RENAME" or (op(r) == "GETFILESTATUS" and ".tmp" in (r.url or "")))
    with pytest.raises(BackendUnavailable, match="RENAME"):
        store.write("c/object", b"new")
