"""The file pointer backend (the default): the same documents as Consul, under ``./.caravan/pointers``.

A check-and-set holds an exclusive ``flock`` on the model's lock file, so concurrent writers on
one machine never lose an update; documents are replaced by atomic rename, so readers never see
a partial one. Watching is a cheap ``stat`` of the pointer file.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import PromotionLocked
from .base import ModelPointer, PointerState, current_key, history_key, history_prefix, lock_key


class FilePointer(ModelPointer):
    """Model pointers as JSON files under ``root``."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str], poll_s: float = 0.05) -> None:
        self.root = Path(root).resolve()
        self.poll_s = poll_s

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        lock = self._path(current_key(model)).with_name(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def lock(self, model: str, holder: str, timeout_s: float) -> Iterator[None]:
        """flock on ``<model>/lock`` (the same name as the Consul key); the kernel drops it if we die."""
        path = self._path(lock_key(model))
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        with open(path, "a+b") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise PromotionLocked(f"model {model!r}: the promotion lock {path} is still held after "
                                              f"{timeout_s:g} s") from None
                    time.sleep(min(self.poll_s * 2, 0.2))
            try:
                handle.truncate(0)
                handle.write(holder.encode())
                handle.flush()
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _replace(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)

    def read(self, model: str) -> PointerState:
        try:
            stored = json.loads(self._path(current_key(model)).read_bytes())
        except FileNotFoundError:
            return PointerState(None, 0, 0)
        return PointerState(stored["document"], int(stored["version"]), int(stored["version"]))

    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        with self._locked(model):
            if self.read(model).version != expected_version:
                return None
            version = expected_version + 1
            self._replace(self._path(current_key(model)),
                          json.dumps({"version": version, "document": document}, sort_keys=True).encode())
            return version

    def record(self, model: str, document: dict[str, Any]) -> None:
        path = self._path(history_key(model, str(document["change_id"])))
        if not path.exists():
            self._replace(path, json.dumps(document, sort_keys=True).encode())

    def history(self, model: str) -> list[dict[str, Any]]:
        folder = self._path(history_prefix(model).rstrip("/"))
        if not folder.is_dir():
            return []
        return [json.loads(p.read_bytes()) for p in sorted(folder.iterdir()) if not p.name.startswith(".")]

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.read(model)
            if current.version != state.version or time.monotonic() >= deadline:
                return current
            time.sleep(self.poll_s)
