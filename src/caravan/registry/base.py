"""The ModelPointer interface: which artifact is model M's current model, changed only by check-and-set.

The pointer of model ``M`` is one JSON document at ``caravan/models/M/current``::

    {"artifact_uri": ..., "artifact_id": ..., "metrics": {...}, "promoted_at": ..., "promoted_by": <run id>,
     "previous_artifact_id": ..., "action": "promote" | "rollback" | "force", "reason": ...}

Every change is a check-and-set on the pointer's version (Consul's ModifyIndex; a counter in the
file backend) and appends a history entry at ``caravan/models/M/history/<change id>`` (time-ordered
and unique). The current document is the truth; a history entry that a crash left unwritten is
written by the next change or ``repair_history``.
"""

from __future__ import annotations

import abc
import contextlib
import datetime as dt
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, PointerConflict

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_model_name(model: str) -> str:
    """Model names become key segments: letters, digits, ``_.-`` (Consul's safe key characters)."""
    if not _MODEL_NAME.match(model) or ".." in model:
        raise ConfigurationError(f"model name {model!r} must be 1-100 of [A-Za-z0-9_.-], starting with a letter "
                                 "or digit")
    return model


def current_key(model: str) -> str:
    return f"caravan/models/{check_model_name(model)}/current"


def history_prefix(model: str) -> str:
    return f"caravan/models/{check_model_name(model)}/history/"


def history_key(model: str, change_id: str) -> str:
    return f"{history_prefix(model)}{change_id}"


def lock_key(model: str) -> str:
    """The key of the promotion lock: inside the model's prefix, so the pipeline's ACL covers it."""
    return f"caravan/models/{check_model_name(model)}/lock"


def new_change_id() -> str:
    """Sortable by time (UTC, microseconds), unique by its random tail."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:8]


@dataclass(frozen=True)
class PointerState:
    """A pointer as read: its document (None if never set), the version a check-and-set must name,
    and the index a watch blocks on (Consul's X-Consul-Index; the version for files)."""

    document: dict[str, Any] | None
    version: int
    index: int = 0

    @property
    def artifact_id(self) -> str | None:
        return None if self.document is None else str(self.document.get("artifact_id"))


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


class ModelPointer(abc.ABC):
    """Where model pointers live (a folder on this machine, or Consul KV)."""

    name = ""

    @abc.abstractmethod
    def read(self, model: str) -> PointerState:
        """The current pointer and its version (version 0: never set)."""

    @abc.abstractmethod
    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        """Replace the pointer if its version is still ``expected_version``; return the new version, or None."""

    @abc.abstractmethod
    def history(self, model: str) -> list[dict[str, Any]]:
        """Every pointer change, oldest first."""

    @abc.abstractmethod
    def record(self, model: str, document: dict[str, Any]) -> None:
        """Write the history entry of ``document["change_id"]`` unless it exists (idempotent)."""

    @abc.abstractmethod
    def watch(self, model: str, state: PointerState, timeout_s: float) -> PointerState:
        """Block until the pointer differs from ``state`` or ``timeout_s`` passes; return what is there then."""

    @abc.abstractmethod
    def lock(self, model: str, holder: str, timeout_s: float) -> contextlib.AbstractContextManager[None]:
        """Hold the model's promotion lock for the block: one promotion decision at a time.

        Check-and-set already keeps the pointer consistent; the lock keeps two overlapping runs
        from both deciding (and both recording) the same promotion. Waits up to ``timeout_s``
        for another holder, then raises :class:`PromotionLocked`. A holder that dies loses the
        lock on its own (a Consul session TTL, a file lock closed by the kernel).
        """

    def set_if(self, model: str, document: dict[str, Any], state: PointerState) -> PointerState | None:
        """Write ``document`` if the pointer is still as ``state`` saw it; record it in the history.

        Returns the new state, or None when the pointer changed since ``state`` was read.
        """
        document = {"promoted_at": utc_now(), **document, "previous_artifact_id": state.artifact_id,
                    "change_id": new_change_id()}
        version = self.compare_and_set(model, document, state.version)
        if version is None:
            return None
        self.record(model, document)
        return PointerState(document, version, version)

    def change(self, model: str, decide: Callable[[PointerState], dict[str, Any] | None],
               attempts: int = 10) -> tuple[PointerState, dict[str, Any] | None]:
        """Read, decide, check-and-set; on a lost race read again and decide again.

        ``decide`` returns the new document, or None to leave the pointer alone. Never
        overwrites a change it did not see: after ``attempts`` lost races it raises.
        """
        for _ in range(attempts):
            state = self.read(model)
            document = decide(state)
            if document is None:
                return state, None
            written = self.set_if(model, document, state)
            if written is not None:
                return written, written.document
        raise PointerConflict(f"model {model!r}: the pointer kept changing during {attempts} attempts to update it")

    def repair_history(self, model: str) -> None:
        """Write the history entry of the current version if a crash left it out."""
        state = self.read(model)
        if state.document is not None and state.document.get("change_id"):
            self.record(model, state.document)

    def rollback_target(self, model: str) -> dict[str, Any]:
        """The history entry to go back to: the latest one for the current pointer's previous artifact."""
        state = self.read(model)
        if state.document is None:
            raise PointerConflict(f"model {model!r} has no pointer to roll back")
        previous = state.document.get("previous_artifact_id")
        for entry in reversed(self.history(model)):
            if previous and entry.get("artifact_id") == previous:
                return dict(entry)
        raise PointerConflict(f"model {model!r}: no earlier model to roll back to (current {state.artifact_id})")
