"""The HDFS store, over WebHDFS (the ``hdfs`` package).

``hdfs://host:port/path`` and ``webhdfs://host:port/path`` name the namenode's WebHDFS
HTTP address (port 9870 on Hadoop 3); ``swebhdfs://`` uses HTTPS. Files are created with
``overwrite=False``; a manifest is published by renaming a finished temporary file onto
its name, which HDFS refuses when the name is taken, so two publishers cannot both win.
"""

from __future__ import annotations

import logging
import posixpath
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..config import caravan, section, setting
from ..errors import ArtifactNotFoundError, BackendRejected, BackendUnavailable, CaravanError, ConfigurationError
from .base import CHUNK_BYTES, Store, encode_path, root_uri_of

log = logging.getLogger(__name__)

class HdfsStore(Store):
    """Objects are HDFS files under the root directory."""

    schemes = ("hdfs", "webhdfs", "swebhdfs")

    def __init__(self, root_uri: str, token: str | None = None) -> None:
        super().__init__(root_uri)
        scheme, netloc, path = root_uri_of(root_uri)
        if not netloc:
            raise ConfigurationError(f"HDFS root {root_uri!r} names no WebHDFS host:port")
        http = "https" if scheme == "swebhdfs" else "http"
        #: The root directory, decoded (``hdfs://nn/a%20b`` is the directory ``/a b``).
        self.base = "/" + path.strip("/")
        self.root_uri = f"{scheme}://{netloc}{encode_path(self.base.rstrip('/'))}"
        import hdfs  # imported here so that `import caravan` stays cheap without HDFS

        url = f"{http}://{netloc}"
        if token is None:
            from ..secrets import get_secret

            token = get_secret("storage", "webhdfs_token")
        self.client: Any
        if token:
            self.client = hdfs.TokenClient(url, token)
        else:
            user = setting("HADOOP_USER_NAME", section(caravan).webhdfs_user) or None
            self.client = hdfs.InsecureClient(url, user=user)
        self._wrap_session()

    def _wrap_session(self) -> None:
        # Count every HTTP request for the benchmarks. A response hook sees each hop,
        # including the datanode request that follows a namenode's 307 redirect.
        def counted(response: Any, *args: Any, **kwargs: Any) -> Any:
            self._count(response.request.method or "HTTP")
            return response

        self.client._session.hooks["response"].append(counted)

    def _path(self, key: str) -> str:
        return posixpath.join(self.base, key) if key else self.base

    def _error(self, exc: Exception, what: str, key: str) -> Exception:
        import requests
        from hdfs.util import HdfsError

        where = f"{what} {self.uri(key)}"
        if isinstance(exc, requests.RequestException):
            return BackendUnavailable(f"{where}: {exc}", backend="webhdfs")
        if isinstance(exc, HdfsError):
            if exc.exception in ("FileNotFoundException",):
                return ArtifactNotFoundError("no such object", artifact=key, store=self.root_uri)
            if exc.exception in ("RetriableException", "StandbyException", "SafeModeException"):
                return BackendUnavailable(f"{where}: {exc.exception}: {exc.message}", backend="webhdfs")
            return BackendRejected(f"{where}: {exc.exception or ''} {exc.message}".strip(), backend="webhdfs")
        return exc

    def _call(self, what: str, key: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        import requests
        from hdfs.util import HdfsError

        try:
            return fn(*args, **kwargs)
        except (HdfsError, requests.RequestException) as exc:
            raise self._error(exc, what, key) from exc

    def read(self, key: str) -> bytes:
        def fetch() -> bytes:
            with self.client.read(self._path(key)) as reader:
                data: bytes = reader.read()
                return data

        return bytes(self._call("OPEN", key, fetch))

    def _write_temp(self, key: str, data: Any) -> str:
        temp = f"{self._path(key)}.{uuid.uuid4().hex}.tmp"
        self._call("CREATE", key, self.client.write, temp, data=data, overwrite=False)
        return temp

    def write(self, key: str, data: bytes) -> None:
        self._replace_with(key, data)

    def write_file(self, key: str, path: Path) -> None:
        # requests streams an open file as the CREATE body (Content-Length from its size): never whole in memory.
        with open(path, "rb") as handle:
            self._replace_with(key, handle)

    def read_chunks(self, key: str) -> Iterator[bytes]:
        import requests
        from hdfs.util import HdfsError

        try:
            with self.client.read(self._path(key), chunk_size=CHUNK_BYTES) as chunks:
                yield from chunks
        except (HdfsError, requests.RequestException) as exc:
            raise self._error(exc, "OPEN", key) from exc

    def _replace_with(self, key: str, data: Any) -> None:
        # HDFS cannot rename over a file: delete then rename. Readers see the old object,
        # none, or the new one; never a partly written file.
        temp = self._write_temp(key, data)
        try:
            self._call("DELETE", key, self.client.delete, self._path(key))
            self._call("RENAME", key, self.client.rename, temp, self._path(key))
        finally:
            self._discard(temp, key)

    def create(self, key: str, data: bytes) -> bool:
        temp = self._write_temp(key, data)
        try:
            try:
                self._call("RENAME", key, self.client.rename, temp, self._path(key))
            except (BackendRejected, ArtifactNotFoundError):
                if self.exists(key):  # HDFS refuses to rename onto a taken name: someone else published
                    return False
                raise
            return True
        finally:
            self._discard(temp, key)

    def _discard(self, temp: str, key: str) -> None:
        """Remove ``temp`` if it is still there (it is not after a rename).

        Called in ``finally``: a failure here is logged, never raised, so it cannot replace the
        outcome of the write (a published manifest, or the error that stopped it). A leftover
        ``.tmp`` file is invisible to listings.
        """
        try:
            if self._call("GETFILESTATUS", key, self.client.status, temp, strict=False) is not None:
                self._call("DELETE", key, self.client.delete, temp)
        except CaravanError as exc:
            log.warning("could not remove the temporary file %s: %s", temp, exc)

    def exists(self, key: str) -> bool:
        status = self._call("GETFILESTATUS", key, self.client.status, self._path(key), strict=False)
        return status is not None and status.get("type") == "FILE"

    def list_keys(self, prefix: str) -> Iterator[str]:
        import requests
        from hdfs.util import HdfsError

        root = self._path(prefix.rstrip("/"))
        strip = len(self.base.rstrip("/")) + 1
        # walk() raises on a missing root whatever ignore_missing says, so look first.
        if self._call("GETFILESTATUS", prefix, self.client.status, root, strict=False) is None:
            return
        try:
            for dirpath, _dirs, files in self.client.walk(root, ignore_missing=True):
                for name in files:
                    if not name.endswith(".tmp"):
                        yield posixpath.join(dirpath, name)[strip:]
        except (HdfsError, requests.RequestException) as exc:
            raise self._error(exc, "LISTSTATUS", prefix) from exc

    def children_with(self, prefix: str, marker: str) -> set[str]:
        # WebHDFS has no recursive listing: one LISTSTATUS, then one GETFILESTATUS per child.
        root = self._path(prefix.rstrip("/"))
        if self._call("GETFILESTATUS", prefix, self.client.status, root, strict=False) is None:
            return set()
        entries = self._call("LISTSTATUS", prefix, self.client.list, root, status=True)
        return {
            name for name, status in entries
            if status.get("type") == "DIRECTORY" and self.exists(f"{prefix.rstrip('/')}/{name}/{marker}")
        }

    def delete(self, key: str) -> None:
        self._call("DELETE", key, self.client.delete, self._path(key))

    def delete_prefix(self, prefix: str) -> None:
        self._call("DELETE", prefix, self.client.delete, self._path(prefix.rstrip("/")), recursive=True)
