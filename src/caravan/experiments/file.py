"""The file experiment store (the default): the documents of the Consul store, in the pointer root's folder.

``<root>/caravan/<env>/experiments/M.json`` holds ``{"version": n, "document": {...}}``; each gateway's
counters are ``<root>/caravan/<env>/experiments/M/stats/<gateway-id>.json``. A write holds an exclusive
``flock`` on the model's lock file (concurrent writers on one machine never lose an update) and
replaces the file by atomic rename (readers never see half of one). Watching polls the file.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from ..config import check_environment
from ..config import environment as config_environment
from ..files import replace_file
from .document import (
    Counts,
    Experiment,
    ExperimentConflict,
    ExperimentInvalid,
    ExperimentStore,
    check_name,
    encode_stats,
    experiment_key,
    merge_counts,
    parse_stats,
    stats_prefix,
)

log = logging.getLogger(__name__)


class FileExperimentStore(ExperimentStore):
    """Experiment documents as JSON files under ``root`` (the file pointer backend's root)."""

    name = "file"

    def __init__(self, root: str | os.PathLike[str], poll_s: float = 0.05, environment: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.environment = check_environment(environment) if environment else config_environment()
        self.poll_s = poll_s

    def _path(self, key: str, suffix: str = ".json") -> Path:
        path = self.root.joinpath(*key.split("/"))
        return path.with_name(path.name + suffix)

    @contextmanager
    def _locked(self, model: str) -> Iterator[None]:
        lock = self._path(experiment_key(model, self.environment), ".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self, model: str) -> tuple[Experiment | None, int]:
        path = self._path(experiment_key(model, self.environment))
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None, 0
        try:
            stored = json.loads(raw)
        except ValueError:
            stored = None
        if not isinstance(stored, dict) or not isinstance(stored.get("version"), int) or stored["version"] < 1:
            raise ExperimentInvalid(f"the experiment file {path} is corrupt (not {{'version': n, 'document': ...}})")
        try:
            return Experiment.from_json(stored.get("document") or {}), int(stored["version"])
        except ExperimentInvalid as exc:
            raise ExperimentInvalid(f"the experiment file {path}: {exc}") from None

    def _version(self, model: str) -> int:
        try:
            stored = json.loads(self._path(experiment_key(model, self.environment)).read_bytes())
        except FileNotFoundError:
            return 0
        except ValueError:
            return -1
        return int(stored["version"]) if isinstance(stored, dict) and isinstance(stored.get("version"), int) else -1

    def write(self, exp: Experiment, version: int) -> int:
        with self._locked(exp.model):
            seen = self._version(exp.model)
            if seen != version:
                raise ExperimentConflict(f"model {exp.model!r}: the experiment document is at version {seen}, "
                                         f"not {version}: someone changed it; read it again")
            new = version + 1 if version >= 0 else time.time_ns() // 1000
            replace_file(self._path(experiment_key(exp.model, self.environment)),
                          json.dumps({"version": new, "document": exp.to_dict()}, sort_keys=True).encode())
            return new

    def watch(self, model: str, version: int, wait_s: float) -> tuple[Experiment | None, int]:
        deadline = time.monotonic() + wait_s
        while self._version(model) == version and time.monotonic() < deadline:
            time.sleep(self.poll_s)
        return self.read(model)

    def _stats_folder(self, model: str) -> Path:
        return self.root.joinpath(*stats_prefix(model, self.environment).rstrip("/").split("/"))

    def put_stats(self, model: str, gateway_id: str, counts: Mapping[str, tuple[int, int]], *,
                  salt: str = "") -> None:
        path = self._stats_folder(model) / f"{check_name('gateway id', gateway_id)}.json"
        replace_file(path, encode_stats(counts, salt, str(path)))

    def read_stats(self, model: str, *, salt: str | None = None) -> Counts:
        folder = self._stats_folder(model)
        if not folder.is_dir():
            return {}
        parts = []
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                their_salt, counts = parse_stats(path.read_bytes(), str(path))
            except ExperimentInvalid as exc:  # one broken gateway file must not blind every gateway
                log.warning("experiment stats skipped: %s", exc)
                continue
            if salt is None or their_salt == salt:
                parts.append(counts)
        return merge_counts(parts)

    def clear_stats(self, model: str) -> None:
        folder = self._stats_folder(model)
        if folder.is_dir():
            for path in folder.glob("*.json"):
                path.unlink(missing_ok=True)
