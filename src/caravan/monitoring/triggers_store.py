"""Where trigger records live: ``caravan/<env>/models/M/triggers/<id>``, beside the model pointer, in its backend.

A record is a JSON object (kind, outcome, reason, ...). The store has three operations, enough for two
monitors racing to fire once:

- :meth:`TriggerStore.create` writes a record only if its id is free (Consul ``PUT ?cas=0``; a file created
  under the folder's ``flock``), so ids that name what they decide (``new-data-<day>``, ``retrain-<n>``) are
  claims: whoever creates one fires, the other finds it taken.
- :meth:`TriggerStore.replace` changes a record only if it is still at the version read (``?cas=<ModifyIndex>``;
  a counter in the file), so a claim's outcome (dispatched, failed) is written by its owner alone.
- :meth:`TriggerStore.records` reads them all, with their versions (one recursive read, one folder listing).

:func:`trigger_store` follows the pointer: the backend choice is the pointer's (``open_pointer``), never made
again here. A Consul pointer lends its client (address, token, timeouts, error translation); a file pointer its
root and environment.
"""

from __future__ import annotations

import abc
import contextlib
import fcntl
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..files import replace_file
from ..registry.base import ModelPointer, check_model_name, excerpt, models_prefix

log = logging.getLogger("caravan.monitoring")

_RECORD_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")


def check_record_id(record_id: str) -> str:
    """Record ids become key segments and file names: 1-200 of ``[A-Za-z0-9_.-]``, no ``..``."""
    if not isinstance(record_id, str) or not _RECORD_ID.fullmatch(record_id) or ".." in record_id:
        raise ConfigurationError(f"trigger record id {record_id!r} must be 1-200 of [A-Za-z0-9_.-]")
    return record_id


def triggers_prefix(model: str, environment: str | None = None) -> str:
    """``caravan/<env>/models/M/triggers/``: inside the model's prefix, so the pipeline's ACL covers it."""
    return f"{models_prefix(environment)}{check_model_name(model)}/triggers/"


def _decode(raw: Any, where: str) -> dict[str, Any] | None:
    try:
        record = json.loads(raw or b"null")
    except ValueError:
        record = None
    if not isinstance(record, dict):
        log.warning("trigger record %s is unreadable (%s); skipped", where, excerpt(raw))
        return None
    return record


class TriggerStore(abc.ABC):
    """Trigger records of one environment's models."""

    environment = ""

    @abc.abstractmethod
    def create(self, model: str, record_id: str, record: dict[str, Any]) -> int | None:
        """Write ``record`` at ``record_id`` unless something is there: its version if this call wrote it, else
        None."""

    @abc.abstractmethod
    def replace(self, model: str, record_id: str, record: dict[str, Any], version: int) -> bool:
        """Write ``record`` over the one at ``version``; False if it changed since (or is gone)."""

    @abc.abstractmethod
    def records(self, model: str) -> dict[str, tuple[dict[str, Any], int]]:
        """Every readable record of ``model``: id -> (record, version); an unreadable one is skipped (logged)."""

    def read(self, model: str, record_id: str) -> tuple[dict[str, Any], int] | None:
        """One record and its version, or None."""
        return self.records(model).get(record_id)


class FileTriggerStore(TriggerStore):
    """Records as ``{"version": n, "record": {...}}`` files under ``<root>/caravan/<env>/models/M/triggers/``."""

    def __init__(self, root: str | Path, environment: str) -> None:
        self.root = Path(root)
        self.environment = environment

    def _folder(self, model: str) -> Path:
        return self.root.joinpath(*triggers_prefix(model, self.environment).rstrip("/").split("/"))

    @contextlib.contextmanager
    def _locked(self, model: str) -> Iterator[Path]:
        folder = self._folder(model)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / ".lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield folder
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _version(self, path: Path) -> int | None:
        try:
            stored = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except ValueError:
            return -1
        return int(stored["version"]) if isinstance(stored, dict) and isinstance(stored.get("version"), int) else -1

    def create(self, model: str, record_id: str, record: dict[str, Any]) -> int | None:
        with self._locked(model) as folder:
            path = folder / check_record_id(record_id)
            if path.exists():
                return None
            replace_file(path, json.dumps({"version": 1, "record": record}, sort_keys=True).encode())
            return 1

    def replace(self, model: str, record_id: str, record: dict[str, Any], version: int) -> bool:
        with self._locked(model) as folder:
            path = folder / check_record_id(record_id)
            if self._version(path) != version:
                return False
            replace_file(path, json.dumps({"version": version + 1, "record": record}, sort_keys=True).encode())
            return True

    def records(self, model: str) -> dict[str, tuple[dict[str, Any], int]]:
        folder = self._folder(model)
        if not folder.is_dir():
            return {}
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for path in sorted(folder.iterdir()):
            if path.name.startswith("."):
                continue
            stored = _decode(path.read_bytes(), str(path))
            if stored is None or not isinstance(stored.get("version"), int) or not isinstance(stored.get("record"),
                                                                                                dict):
                continue
            found[path.name] = (dict(stored["record"]), int(stored["version"]))
        return found


class ConsulTriggerStore(TriggerStore):
    """Records in Consul KV, through a :class:`caravan.consul_api.ConsulAPI` (the Consul pointer is one)."""

    def __init__(self, api: Any) -> None:
        self.api = api
        self.environment = api.environment

    def create(self, model: str, record_id: str, record: dict[str, Any]) -> int | None:
        key = triggers_prefix(model, self.environment) + check_record_id(record_id)
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        if not self.api.call(f"PUT {key}?cas=0", self.api.client.kv.put, key, body, cas=0):
            return None
        # The PUT answers only true: the version a later replace names is the key's ModifyIndex.
        _, data = self.api.call(f"GET {key}", self.api.client.kv.get, key)
        return int(data["ModifyIndex"]) if data else 0

    def replace(self, model: str, record_id: str, record: dict[str, Any], version: int) -> bool:
        key = triggers_prefix(model, self.environment) + check_record_id(record_id)
        body = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        # Never cas=0 here: that would create a record that is gone instead of failing.
        return version > 0 and bool(self.api.call(f"PUT {key}?cas={version}", self.api.client.kv.put, key, body,
                                                  cas=version))

    def records(self, model: str) -> dict[str, tuple[dict[str, Any], int]]:
        prefix = triggers_prefix(model, self.environment)
        _, items = self.api.call(f"GET {prefix}?recurse", self.api.client.kv.get, prefix, recurse=True)
        found: dict[str, tuple[dict[str, Any], int]] = {}
        for item in sorted(items or [], key=lambda i: i["Key"]):
            record_id = item["Key"][len(prefix):]
            if "/" in record_id or not record_id:
                continue
            record = _decode(item.get("Value"), f"{item['Key']} in consul {self.api.address}")
            if record is not None:
                found[record_id] = (record, int(item["ModifyIndex"]))
        return found


def trigger_store(pointer: ModelPointer) -> TriggerStore:
    """The trigger store beside ``pointer`` (same backend, same place, same environment)."""
    from ..registry.consul import ConsulPointer
    from ..registry.file import FilePointer

    if isinstance(pointer, FilePointer):
        return FileTriggerStore(pointer.root, pointer.environment)
    if isinstance(pointer, ConsulPointer):
        return ConsulTriggerStore(pointer)
    raise ConfigurationError(f"no trigger store beside a {type(pointer).__name__} model pointer; caravan keeps "
                             "trigger records beside the 'file' and 'consul' pointers")


__all__ = ["ConsulTriggerStore", "FileTriggerStore", "TriggerStore", "check_record_id", "trigger_store",
           "triggers_prefix"]
