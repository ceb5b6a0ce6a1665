"""The file pointer backend (the default): the same documents as Consul, under ``./.caravan/pointers``.

A check-and-set holds an exclusive ``flock`` on the model's lock file, so concurrent writers on
one machine never lose an update; documents are replaced by atomic rename, so readers never see
a partial one. Watching is a cheap ``stat`` of the pointer file.

A pointer file damaged by hand or by another tool (truncated, the wrong shape) reads as
:class:`PointerCorrupt`; when its version is unreadable too, a repair names ``UNKNOWN_VERSION`` and
the new version is taken from the clock, so it differs from any version a watcher has seen.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..config import check_environment
from ..config import environment as config_environment
from ..errors import PromotionLocked
from ..files import replace_file
from .base import (
    UNKNOWN_VERSION,
    ModelPointer,
    PointerCorrupt,
    PointerState,
    check_document,
    current_key,
    excerpt,
    history_key,
    history_prefix,
    lock_key,
)

log = logging.getLogger(__name__)


class FilePointer(ModelPointer):
    """Model pointers as JSON files under ``root``."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str], poll_s: float = 0.05, environment: str | None = None) -> None:
        """Pointers of ``environment`` (default: the one in effect) under ``root``/caravan/<env>/models/."""
        self.root = Path(root).resolve()
        self.environment = check_environment(environment) if environment else config_environment()
        self.poll_s = poll_s

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        lock = self._path(current_key(model, self.environment)).with_name(".lock")
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
        path = self._path(lock_key(model, self.environment))
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

    def read(self, model: str) -> PointerState:
        path = self._path(current_key(model, self.environment))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return PointerState(None, 0, 0)
        version = UNKNOWN_VERSION

        def corrupt(why: str) -> PointerCorrupt:
            return PointerCorrupt(f"model {model!r}: the pointer file {path} is corrupt ({why}); "
                                  f"'caravan models promote {model} <artifact URI> --force' replaces it",
                                  version=version, index=version)

        try:
            stored = json.loads(raw)
        except ValueError as exc:
            raise corrupt(f"not JSON: {str(exc).splitlines()[0]}; starts with {excerpt(raw)}") from None
        if isinstance(stored, dict) and isinstance(stored.get("version"), int) and stored["version"] > 0:
            version = int(stored["version"])
        else:
            raise corrupt("no version")
        document = check_document(stored.get("document"), corrupt)
        return PointerState(document, version, version)

    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        with self._locked(model):
            seen, _ = self.read_for_repair(model)
            if seen.version != expected_version:
                return None
            # A repair of an unreadable version: a clock-based version, larger than any counter before it.
            version = time.time_ns() // 1000 if expected_version == UNKNOWN_VERSION else expected_version + 1
            replace_file(self._path(current_key(model, self.environment)),
                          json.dumps({"version": version, "document": document}, sort_keys=True).encode())
            return version

    def record(self, model: str, document: dict[str, Any]) -> None:
        path = self._path(history_key(model, str(document["change_id"]), self.environment))
        if not path.exists():
            replace_file(path, json.dumps(document, sort_keys=True).encode())

    def history(self, model: str) -> list[dict[str, Any]]:
        folder = self._path(history_prefix(model, self.environment).rstrip("/"))
        if not folder.is_dir():
            return []
        entries = []
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            try:
                entry = json.loads(path.read_bytes())
            except ValueError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                log.warning("model %s: history entry %s is unreadable; skipped", model, path)
        return entries

    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        deadline = time.monotonic() + timeout_s
        while True:
            current = self.read(model)
            if current.version != state.version or time.monotonic() >= deadline:
                return current
            time.sleep(self.poll_s)
