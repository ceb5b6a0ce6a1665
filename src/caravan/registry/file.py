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

from .base import ModelPointer, PointerState, current_key, history_key, history_prefix


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
