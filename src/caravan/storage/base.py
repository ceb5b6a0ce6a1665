"""The Store interface: the few object operations artifacts need, on any backend.

Keys are ``/``-separated and relative to the store's root. Every backend gives the same
guarantees, held by one contract test suite: ``write`` replaces an object atomically
(readers see the old or the new bytes, never a mix), ``create`` writes only if nothing is
there and says whether it did, and a listing of a prefix costs requests in proportion to
the number of objects under it, not to the number of questions asked about them.

URIs follow RFC 3986 (and RFC 8089 for ``file:``): :meth:`Store.uri` percent-encodes a key's
characters that a URI path cannot hold as they are, and :meth:`Store.key_of` decodes them, so the
URI caravan prints opens the same object in pyarrow, fsspec or pandas. Artifact keys never need
encoding (see :mod:`caravan.addressing`), so an artifact's URI is its root URI, ``/`` and its id.
"""

from __future__ import annotations

import abc
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ..errors import ConfigurationError

#: What a URI path may hold unencoded besides unreserved characters (RFC 3986 ``pchar``), minus ``;``
#: which some tools still read as a path-parameter separator.
PATH_SAFE = "/=,:@!$&'()*+"
#: Bytes held at once when a file streams to or from a store (a read chunk, an S3 multipart part).
CHUNK_BYTES = 8 * 2**20


def encode_path(path: str) -> str:
    """``path`` as a URI path: UTF-8, percent-encoded where RFC 3986 requires it."""
    return quote(path, safe=PATH_SAFE)


def root_uri_of(root_uri: str) -> tuple[str, str, str]:
    """``scheme://authority/path`` split into scheme, authority and the decoded path (no trailing ``/``).

    The path is percent-decoded, as RFC 3986 says; a root written with a raw space or
    unicode character is taken as it reads.
    """
    parts = urlsplit(root_uri)
    if parts.query or parts.fragment:
        raise ConfigurationError(f"root URI {root_uri!r} has a query or fragment; a root is scheme://authority/path")
    return parts.scheme, parts.netloc, unquote(parts.path).rstrip("/")


class Store(abc.ABC):
    """An object store rooted at ``root_uri``."""

    #: URI schemes this backend serves, e.g. ``("s3",)``.
    schemes: tuple[str, ...] = ()

    def __init__(self, root_uri: str) -> None:
        self.root_uri = root_uri.rstrip("/")
        #: Requests (or filesystem calls) sent, by operation; read by the benchmarks.
        self.requests: Counter[str] = Counter()
        self._requests_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root_uri!r})"

    def uri(self, key: str) -> str:
        """The full URI of ``key`` (percent-encoded where a URI needs it; :meth:`key_of` is its inverse)."""
        return f"{self.root_uri}/{encode_path(key)}" if key else self.root_uri

    def key_of(self, uri: str) -> str:
        """The key that ``uri`` names in this store; a URI outside the store's root is a ValueError."""
        if uri.rstrip("/") == self.root_uri:
            return ""
        if not uri.startswith(self.root_uri + "/"):
            raise ValueError(f"{uri!r} is not inside the store {self.root_uri!r}")
        return unquote(uri[len(self.root_uri) + 1:]).rstrip("/")

    def _count(self, operation: str, n: int = 1) -> None:
        with self._requests_lock:
            self.requests[operation] += n

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; :class:`~caravan.errors.ArtifactNotFoundError` if there is none."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""

    def write_file(self, key: str, path: Path) -> None:
        """Create or replace the object with the local file ``path``, atomically as :meth:`write`.

        Backends override this to stream the file (a chunk in memory at a time); this fallback reads it whole.
        """
        self.write(key, Path(path).read_bytes())

    def read_chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in chunks of at most about :data:`CHUNK_BYTES` (the whole object in this fallback).

        :class:`~caravan.errors.ArtifactNotFoundError` if there is none, raised before the first chunk.
        """
        yield self.read(key)

    @abc.abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Write the object only if the key is free; return False, writing nothing, if it is taken."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at ``key``."""

    @abc.abstractmethod
    def list_keys(self, prefix: str) -> Iterator[str]:
        """Every object key under ``prefix`` (which ends with ``/``), at any depth."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove one object; a missing one is not an error."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> None:
        """Remove every object under ``prefix``; a missing prefix is not an error."""

    def children_with(self, prefix: str, marker: str) -> set[str]:
        """Names of the immediate children of ``prefix`` that hold an object called ``marker``.

        One listing of the prefix answers for all its children, which is what makes
        checking thousands of artifacts cheap. Backends whose listing is not recursive
        override this.
        """
        found = set()
        for key in self.list_keys(prefix):
            rest = key[len(prefix):]
            child, _, leaf = rest.partition("/")
            if leaf == marker:
                found.add(child)
        return found
