"""Bring-your-own data: read a Parquet file, folder or prefix on any supported store.

A data scientist points a pipeline at ``/data/events/``, ``s3://bucket/events/date=2026-11-22/``
or ``hdfs://nn:9870/warehouse/events.parquet``; the same code reads all three through the
artifact stores, so a pipeline that works on a laptop reads the cluster's data unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import luigi

from .errors import ArtifactNotFoundError
from .storage import Store, open_store

if TYPE_CHECKING:
    import pyarrow


def _split(uri: str) -> tuple[Store, str]:
    """The store holding ``uri`` and the key of ``uri`` in it (the store is rooted at the parent)."""
    trimmed = uri.rstrip("/")
    parent, _, leaf = trimmed.rpartition("/")
    if not parent or parent.endswith(":/") or parent.endswith(":"):
        raise ValueError(f"data URI {uri!r} names no file or folder inside a store")
    return open_store(parent), leaf


def parquet_keys(uri: str) -> tuple[Store, list[str]]:
    """The Parquet objects at ``uri``: the object itself, or every ``*.parquet`` below it, sorted."""
    store, leaf = _split(uri)
    if leaf.endswith(".parquet") and not uri.endswith("/") and store.exists(leaf):
        return store, [leaf]
    keys = sorted(k for k in store.list_keys(leaf + "/") if k.endswith(".parquet")
                  and not any(part.startswith(("_", ".")) for part in k.split("/")))
    return store, keys


def read_parquet_uri(uri: str, columns: list[str] | None = None) -> pyarrow.Table:
    """One table from every Parquet object at ``uri`` (schemas must agree); a clear error if there is none."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    store, keys = parquet_keys(uri)
    if not keys:
        raise ArtifactNotFoundError("no Parquet data", artifact=uri, store=store.root_uri)
    tables = [pq.read_table(pa.BufferReader(store.read(key)), columns=columns) for key in keys]
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


class ParquetTarget(luigi.Target):
    """A luigi target for external Parquet data at a URI; exists when there is at least one Parquet object."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    def exists(self) -> bool:
        return bool(parquet_keys(self.uri)[1])


class ParquetSource(luigi.ExternalTask):
    """External Parquet data that some other system produces (a file, folder or prefix)."""

    uri = luigi.Parameter(description="Parquet file, folder or prefix: a path, s3://..., hdfs://...")

    def output(self) -> Any:
        return ParquetTarget(self.uri)
