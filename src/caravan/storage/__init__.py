"""Stores, chosen by the artifact root's URI scheme; a backend is imported only when used."""

from __future__ import annotations

import importlib
import os
import threading
from urllib.parse import urlparse

from ..errors import ConfigurationError
from .base import Store

__all__ = ["BACKENDS", "Store", "open_store"]

#: scheme -> "module:Class", imported on first use.
BACKENDS = {
    "": "caravan.storage.local:LocalStore",
    "file": "caravan.storage.local:LocalStore",
    "s3": "caravan.storage.s3:S3Store",
    "hdfs": "caravan.storage.hdfs:HdfsStore",
    "webhdfs": "caravan.storage.hdfs:HdfsStore",
    "swebhdfs": "caravan.storage.hdfs:HdfsStore",
}

_cache: dict[tuple[int, str], Store] = {}
_lock = threading.Lock()


def _scheme(root_uri: str) -> str:
    scheme = urlparse(root_uri).scheme
    # A Windows drive letter ("C:\\...") parses as a one-letter scheme; it is a path.
    return "" if len(scheme) == 1 else scheme


def open_store(root_uri: str) -> Store:
    """The store for ``root_uri``, shared within a process (clients are not fork-safe, so per pid)."""
    scheme = _scheme(root_uri)
    if scheme not in BACKENDS:
        known = ", ".join(sorted(s + "://" for s in BACKENDS if s))
        raise ConfigurationError(f"artifact root {root_uri!r}: unknown scheme {scheme!r}; caravan knows {known} "
                                 "and plain paths")
    if scheme == "":
        root_uri = os.path.abspath(root_uri)
    cache_key = (os.getpid(), root_uri.rstrip("/"))
    with _lock:
        store = _cache.get(cache_key)
        if store is None:
            module_name, _, class_name = BACKENDS[scheme].partition(":")
            store = getattr(importlib.import_module(module_name), class_name)(root_uri)
            _cache[cache_key] = store
    return store


def clear_store_cache() -> None:
    """Forget shared stores (tests change endpoints between cases)."""
    with _lock:
        _cache.clear()
