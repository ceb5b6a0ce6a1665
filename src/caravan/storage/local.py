"""The local filesystem store (the default): plain files under a root directory."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from ..errors import ArtifactNotFoundError, ConfigurationError
from ..files import replace_file, temp_beside
from .base import CHUNK_BYTES, Store


def _root_path(root_uri: str) -> Path:
    parsed = urlparse(root_uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigurationError(f"file URI {root_uri!r} names host {parsed.netloc!r}; use file:///abs/path")
        return Path(unquote(parsed.path))
    return Path(root_uri)


class LocalStore(Store):
    """Objects are files; ``write`` and ``create`` go through a temporary file in the same directory."""

    schemes = ("file", "")

    def __init__(self, root_uri: str) -> None:
        self.root = _root_path(root_uri).resolve()
        super().__init__(self.root.as_uri())

    def path(self, key: str) -> Path:
        """The file that holds ``key``."""
        return self.root.joinpath(*key.split("/")) if key else self.root

    def read(self, key: str) -> bytes:
        self._count("read")
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ArtifactNotFoundError("no such object", artifact=key, store=self.root_uri) from exc

    def write(self, key: str, data: bytes) -> None:
        self._count("write")
        target = self.path(key)
        replace_file(target, data)

    def write_file(self, key: str, path: Path) -> None:
        # Copied by the kernel (copyfile uses sendfile) to a temporary file beside the target, fsynced, then
        # renamed: as write(), and never in this process's memory.
        self._count("write")
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.close(fd)
            shutil.copyfile(path, name)
            with open(name, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(name, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)
            raise

    def read_chunks(self, key: str) -> Iterator[bytes]:
        self._count("read")
        try:
            handle = open(self.path(key), "rb")  # closed by the with below, after the last chunk
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ArtifactNotFoundError("no such object", artifact=key, store=self.root_uri) from exc
        with handle:
            yield from iter(lambda: handle.read(CHUNK_BYTES), b"")

    def create(self, key: str, data: bytes) -> bool:
        self._count("create")
        target = self.path(key)
        temp = temp_beside(target, data)
        try:
            # link() fails if the name exists, so the complete file appears at once, or not at all.
            os.link(temp, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
            return False
        finally:
            os.unlink(temp)
        return True

    def exists(self, key: str) -> bool:
        self._count("exists")
        return self.path(key).is_file()

    def list_keys(self, prefix: str) -> Iterator[str]:
        self._count("list")
        base = self.path(prefix.rstrip("/"))
        for dirpath, _dirs, files in os.walk(base):
            rel = Path(dirpath).relative_to(self.root).as_posix()
            for name in files:
                if not name.endswith(".tmp"):
                    yield f"{rel}/{name}" if rel != "." else name

    def children_with(self, prefix: str, marker: str) -> set[str]:
        # One directory scan plus a stat per child: no need to walk the children's files.
        self._count("list")
        base = self.path(prefix.rstrip("/"))
        try:
            entries = list(os.scandir(base))
        except FileNotFoundError:
            return set()
        return {e.name for e in entries if e.is_dir() and os.path.isfile(os.path.join(e.path, marker))}

    def delete(self, key: str) -> None:
        self._count("delete")
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def delete_prefix(self, prefix: str) -> None:
        self._count("delete")
        shutil.rmtree(self.path(prefix.rstrip("/")), ignore_errors=True)
