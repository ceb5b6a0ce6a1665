"""Bring-your-own data: read a Parquet file, folder or prefix on any supported store.

A data scientist points a pipeline at ``/data/events/``, ``s3://bucket/events/date=2026-11-22/``
or ``hdfs://nn:9870/warehouse/events.parquet``; the same code reads all three through the
artifact stores, so a pipeline that works on a laptop reads the cluster's data unchanged.

External data is identified by its content, not only its path: :func:`input_fingerprint` lists the
Parquet objects once and hashes what each store says about them (local: size and modification time;
S3: size and ETag, the object's content hash; WebHDFS: length, modification time and file id, from
the LISTSTATUS/GETFILESTATUS answer). That fingerprint enters the digest of every artifact built from
the data, so overwriting a table gives new addresses and a rebuild, and an untouched table costs one
listing. No object is read to fingerprint it.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import luigi

from .errors import ArtifactNotFoundError, BackendRejected, BackendUnavailable, CaravanError
from .storage import Store, open_store

if TYPE_CHECKING:
    import pyarrow

#: How many per-file entries a manifest keeps for one input (a prefix may hold many thousands of files).
MAX_RECORDED_FILES = 1000


class InputChanged(CaravanError):
    """External data changed between the moment its fingerprint was taken and the moment it was read."""


@dataclass(frozen=True)
class ObjectStat:
    """One Parquet object of an input: its key in the store, its size, and the store's version marker."""

    key: str
    size: int
    #: What changes when the content does: ``mtime_ns=…`` (local), ``etag=…`` (S3),
    #: ``mtime_ms=…,file_id=…`` (WebHDFS).
    version: str


def _split(uri: str) -> tuple[Store, str]:
    """The store holding ``uri`` and the key of ``uri`` in it (the store is rooted at the parent)."""
    trimmed = uri.rstrip("/")
    if "://" not in trimmed:  # a plain path, as a user types it: relative to the working directory
        trimmed = os.path.abspath(trimmed)
    parent, _, leaf = trimmed.rpartition("/")
    if not parent or parent.endswith(":/") or parent.endswith(":"):
        raise ValueError(f"data URI {uri!r} names no file or folder inside a store")
    # A URI's path is percent-encoded (RFC 3986/8089), as the parent's is decoded by the store; a plain path is
    # taken literally.
    return open_store(parent), (unquote(leaf) if "://" in trimmed else leaf)


def _is_data(relative: str) -> bool:
    """A Parquet file that is not hidden or a marker (``_SUCCESS``, ``.part``, ``_temporary/…``)."""
    return relative.endswith(".parquet") and not any(part.startswith(("_", ".")) for part in relative.split("/"))


def _local_stats(store: Any, leaf: str, single: bool) -> Iterator[ObjectStat]:
    path = store.path(leaf)
    if single and path.is_file():
        info = path.stat()
        yield ObjectStat(leaf, info.st_size, f"mtime_ns={info.st_mtime_ns}")
        return
    for dirpath, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(("_", "."))]
        for name in files:
            full = os.path.join(dirpath, name)
            relative = os.path.relpath(full, path).replace(os.sep, "/")
            if _is_data(relative):
                info = os.stat(full)
                yield ObjectStat(f"{leaf}/{relative}", info.st_size, f"mtime_ns={info.st_mtime_ns}")


def _s3_stats(store: Any, leaf: str, single: bool) -> Iterator[ObjectStat]:
    from botocore.exceptions import BotoCoreError, ClientError

    base = f"{store.base}/" if store.base else ""
    paginator = store.client.get_paginator("list_objects_v2")
    # One listing answers both questions: is ``leaf`` an object, and what is under ``leaf/``.
    try:
        items = [item for page in paginator.paginate(Bucket=store.bucket, Prefix=base + leaf)
                 for item in page.get("Contents", [])]
    except ClientError as exc:
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        error = BackendUnavailable if status >= 500 or status == 429 else BackendRejected
        raise error(f"LIST s3://{store.bucket}/{base}{leaf}: {exc}", backend="s3") from exc
    except BotoCoreError as exc:
        raise BackendUnavailable(f"LIST s3://{store.bucket}/{base}{leaf}: {exc}", backend="s3") from exc
    stats = {item["Key"][len(base):]: item for item in items}
    if single and leaf in stats:
        item = stats[leaf]
        yield ObjectStat(leaf, int(item["Size"]), f"etag={str(item['ETag']).strip(chr(34))}")
        return
    for key in sorted(stats):
        if key.startswith(leaf + "/") and _is_data(key[len(leaf) + 1:]):
            yield ObjectStat(key, int(stats[key]["Size"]), f"etag={str(stats[key]['ETag']).strip(chr(34))}")


def _hdfs_version(status: dict[str, Any]) -> str:
    # A rewritten file is a new file (new id) even when its length and millisecond mtime match.
    return f"mtime_ms={status.get('modificationTime')},file_id={status.get('fileId')}"


def _hdfs_stats(store: Any, leaf: str, single: bool) -> Iterator[ObjectStat]:
    import requests
    from hdfs.util import HdfsError

    root = posixpath.join(store.base, leaf)
    where = f"LISTSTATUS {store.uri(leaf)}"
    try:
        status = store.client.status(root, strict=False)
        if status is None:
            return
        if status.get("type") == "FILE":
            if single:
                yield ObjectStat(leaf, int(status["length"]), _hdfs_version(status))
            return
        found, folders = [], [""]
        while folders:  # one LISTSTATUS per folder, hidden and marker folders skipped
            folder = folders.pop()
            for name, entry in store.client.list(posixpath.join(root, folder) if folder else root, status=True):
                relative = f"{folder}/{name}" if folder else name
                if entry.get("type") == "DIRECTORY" and not name.startswith(("_", ".")):
                    folders.append(relative)
                elif entry.get("type") == "FILE" and _is_data(relative):
                    found.append(ObjectStat(f"{leaf}/{relative}", int(entry["length"]), _hdfs_version(entry)))
    except requests.RequestException as exc:
        raise BackendUnavailable(f"{where}: {exc}", backend="webhdfs") from exc
    except HdfsError as exc:
        raise BackendRejected(f"{where}: {exc}", backend="webhdfs") from exc
    yield from sorted(found, key=lambda s: s.key)


def _generic_stats(store: Store, leaf: str, single: bool) -> Iterator[ObjectStat]:
    # A store caravan has no listing-with-metadata for: hash the bytes (correct, but reads everything).
    keys = [leaf] if single and store.exists(leaf) else sorted(
        k for k in store.list_keys(leaf + "/") if _is_data(k[len(leaf) + 1:]))
    for key in keys:
        data = store.read(key)
        yield ObjectStat(key, len(data), f"sha256={hashlib.sha256(data).hexdigest()}")


def parquet_stats(uri: str) -> tuple[Store, list[ObjectStat]]:
    """The Parquet objects at ``uri`` with their sizes and versions, from one listing of the store.

    ``uri`` is a ``*.parquet`` object (without a trailing ``/``), or a folder/prefix: then every
    ``*.parquet`` below it, sorted, except hidden and marker paths (``_…``, ``.…``).
    """
    from .storage.hdfs import HdfsStore
    from .storage.local import LocalStore

    store, leaf = _split(uri)
    single = leaf.endswith(".parquet") and not uri.endswith("/")
    if isinstance(store, LocalStore):
        stats = list(_local_stats(store, leaf, single))
    elif isinstance(store, HdfsStore):
        stats = list(_hdfs_stats(store, leaf, single))
    elif type(store).__name__ == "S3Store":  # not imported here: boto3 stays unimported without S3
        stats = list(_s3_stats(store, leaf, single))
    else:
        stats = list(_generic_stats(store, leaf, single))
    return store, sorted(stats, key=lambda s: s.key)


def parquet_keys(uri: str) -> tuple[Store, list[str]]:
    """The Parquet objects at ``uri``: the object itself, or every ``*.parquet`` below it, sorted."""
    store, stats = parquet_stats(uri)
    return store, [s.key for s in stats]


def fingerprint_of(uri: str, stats: Iterable[ObjectStat]) -> dict[str, Any]:
    """The compact identity of an input: URI, file count, bytes, and a hash of every file's size and version."""
    stats = list(stats)
    rows = [[s.key, s.size, s.version] for s in stats]
    digest = hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode("utf-8")).hexdigest()
    return {"uri": uri, "files": len(stats), "bytes": sum(s.size for s in stats), "fingerprint": digest}


def input_fingerprint(uri: str) -> dict[str, Any]:
    """What ``uri`` holds now (see the module docstring); costs one listing, reads no object."""
    return fingerprint_of(uri, parquet_stats(uri)[1])


def recorded_files(stats: Iterable[ObjectStat]) -> list[list[Any]]:
    """Per-file ``[key, size, version]`` rows for a manifest, at most :data:`MAX_RECORDED_FILES` of them."""
    return [[s.key, s.size, s.version] for s in list(stats)[:MAX_RECORDED_FILES]]


def fingerprints_in(upstream: Any) -> dict[str, dict[str, Any]]:
    """Input fingerprints found in an address's ``upstream`` structure, by URI."""
    found: dict[str, dict[str, Any]] = {}
    if isinstance(upstream, dict):
        if "fingerprint" in upstream and "uri" in upstream:
            found[str(upstream["uri"])] = upstream
        else:
            for value in upstream.values():
                found.update(fingerprints_in(value))
    elif isinstance(upstream, list):
        for value in upstream:
            found.update(fingerprints_in(value))
    return found


def read_input(uri: str, expected: dict[str, Any] | None = None,
               columns: list[str] | None = None) -> tuple[pyarrow.Table, dict[str, Any]]:
    """The table at ``uri`` and the fingerprint of what was read, with its per-file rows under ``"file_list"``.

    With ``expected`` (a fingerprint from :func:`input_fingerprint`), the data must still be what
    was fingerprinted once it has been read: otherwise :class:`InputChanged`, so an artifact is never
    published under the address of data it did not read.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, stats = parquet_stats(uri)
    if not stats:
        raise ArtifactNotFoundError("no Parquet data", artifact=uri, store=store.root_uri)
    tables = [pq.read_table(pa.BufferReader(store.read(s.key)), columns=columns) for s in stats]
    if expected is not None:
        stats = parquet_stats(uri)[1]  # after reading: a change while reading shows too
    now = fingerprint_of(uri, stats)
    if expected is not None and now["fingerprint"] != expected.get("fingerprint"):
        raise InputChanged(f"input {uri} changed after this run fingerprinted it ({expected.get('files')} files, "
                           f"{expected.get('bytes')} bytes then; {now['files']} files, {now['bytes']} bytes now); "
                           "run the pipeline again to build from the new data")
    table = pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]
    return table, {**now, "file_list": recorded_files(stats)}


def read_parquet_uri(uri: str, columns: list[str] | None = None) -> pyarrow.Table:
    """One table from every Parquet object at ``uri`` (schemas must agree); a clear error if there is none."""
    return read_input(uri, columns=columns)[0]


#: How long a fingerprint's listing may answer "is there data?" (only "yes": an empty one is listed again).
RECENT_LISTING_S = 60.0
_recent_listings: dict[str, tuple[float, int]] = {}
_recent_lock = threading.Lock()


class ParquetTarget(luigi.Target):
    """A luigi target for external Parquet data at a URI; exists when there is at least one Parquet object.

    Its :meth:`fingerprint` is what downstream artifact addresses record for it (instead of the bare URI).
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def exists(self) -> bool:
        # luigi asks right after the downstream address took the fingerprint: that listing answers,
        # so an unchanged input costs one listing per run, not two.
        with _recent_lock:
            seen = _recent_listings.get(self.uri)
        if seen is not None and time.monotonic() - seen[0] < RECENT_LISTING_S and seen[1]:
            return True
        return bool(parquet_stats(self.uri)[1])

    def fingerprint(self) -> dict[str, Any]:
        """The input's identity by content (see :func:`input_fingerprint`), always from a fresh listing."""
        stats = parquet_stats(self.uri)[1]
        with _recent_lock:
            _recent_listings[self.uri] = (time.monotonic(), len(stats))
        return fingerprint_of(self.uri, stats)


class DataURIParameter(luigi.Parameter):
    """A data URI (``s3://…``, ``hdfs://…``, ``file://…``) or a plain path; a plain path is made absolute when the task
    is created (a trailing ``/`` kept), so the address, the step's meta and the step itself, which runs in a folder of
    its own, all name the same data."""

    def normalize(self, x: Any) -> Any:
        if not isinstance(x, str) or not x or "://" in x:
            return x
        absolute = os.path.abspath(os.path.expanduser(x))
        return absolute + "/" if x.endswith("/") and not absolute.endswith("/") else absolute


class ParquetSource(luigi.ExternalTask):
    """External Parquet data that some other system produces (a file, folder or prefix)."""

    uri = DataURIParameter(description="Parquet file, folder or prefix: a path, s3://..., hdfs://...")

    def output(self) -> Any:
        return ParquetTarget(self.uri)
