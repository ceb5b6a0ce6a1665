"""The Store interface: the few object operations artifacts need, on any backend.

Keys are ``/``-separated and relative to the store's root. Every backend gives the same
guarantees, held by one contract test suite: ``write`` replaces an object atomically
(readers see the old or the new bytes, never a mix), ``create`` writes only if nothing is
there and says whether it did, and a listing of a prefix costs requests in proportion to
the number of objects under it, not to the number of questions asked about them.
"""

from __future__ import annotations

import abc
import threading
from collections import Counter
from collections.abc import Iterator


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
        """The full URI of ``key``."""
        return f"{self.root_uri}/{key}" if key else self.root_uri

    def _count(self, operation: str, n: int = 1) -> None:
        with self._requests_lock:
            self.requests[operation] += n

    @abc.abstractmethod
    def read(self, key: str) -> bytes:
        """The object's bytes; :class:`~caravan.errors.ArtifactNotFoundError` if there is none."""

    @abc.abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Create or replace the object atomically."""

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
