"""The ModelPointer interface: which artifact is model M's current model, changed only by check-and-set.

The pointer of model ``M`` is one JSON document at ``caravan/<env>/models/M/current`` (``<env>`` the
environment, :func:`caravan.config.environment`: each environment has its own pointers)::

    {"artifact_uri": ..., "artifact_id": ..., "metrics": {...}, "promoted_at": ..., "promoted_by": <run id>,
     "previous_artifact_id": ..., "action": "promote" | "rollback" | "force", "reason": ...}

A rollback also names the change it returns to (``target_change_id``) and the changes it undoes
(``rolled_back``). History entries with ``"action": "reject"`` record a candidate the gate refused;
they never moved the pointer.

Every change is a check-and-set on the pointer's version (Consul's ModifyIndex; a counter in the
file backend) and appends a history entry at ``caravan/<env>/models/M/history/<change id>`` (time-ordered
and unique). The current document is the truth; a history entry that a crash left unwritten is
written by the next change or ``repair_history``. A pointer that does not parse as such a document
(truncated, the wrong shape, garbage) raises :class:`PointerCorrupt`, which carries the version a
check-and-set needs to replace it (``caravan models promote --force`` does).
"""

from __future__ import annotations

import abc
import contextlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import check_environment
from ..config import environment as config_environment
from ..errors import CaravanError, ConfigurationError, PointerConflict
from ..stamps import new_id
from ..stamps import utc_now as utc_now  # re-exported: the pointer's stamps are caravan's one format

#: A pointer change's id: caravan's time-ordered id (the history sorts by it).
new_change_id = new_id

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
#: The length limit of a model name.
MAX_MODEL_NAME = 100


def check_model_name(model: str) -> str:
    """Model names become key segments: letters, digits, ``_.-`` (Consul's safe key characters)."""
    # fullmatch, not match with ^...$: "$" also matches before a trailing newline ("ranker\n").
    if not isinstance(model, str) or not _MODEL_NAME.fullmatch(model) or ".." in model:
        raise ConfigurationError(f"model name {model!r} must be 1-100 of [A-Za-z0-9_.-], starting with a letter "
                                 "or digit")
    return model


def models_prefix(environment: str | None = None) -> str:
    """The KV prefix of one environment's model pointers, ``caravan/<env>/models/`` (``environment`` None: the
    one in effect, :func:`caravan.config.environment`). Staging and production sharing one Consul never meet."""
    return f"caravan/{check_environment(environment) if environment else config_environment()}/models/"


def current_key(model: str, environment: str | None = None) -> str:
    return f"{models_prefix(environment)}{check_model_name(model)}/current"


def history_prefix(model: str, environment: str | None = None) -> str:
    return f"{models_prefix(environment)}{check_model_name(model)}/history/"


def history_key(model: str, change_id: str, environment: str | None = None) -> str:
    return f"{history_prefix(model, environment)}{change_id}"


def lock_key(model: str, environment: str | None = None) -> str:
    """The key of the promotion lock: inside the model's prefix, so the pipeline's ACL covers it."""
    return f"{models_prefix(environment)}{check_model_name(model)}/lock"


#: Version of a corrupt pointer whose own version cannot be read (a truncated file).
UNKNOWN_VERSION = -2
#: Actions that moved the pointer (a "reject" entry did not).
CHANGES = ("promote", "force", "rollback")


class PointerCorrupt(CaravanError):
    """The pointer exists but is not a pointer document; ``version`` is what a check-and-set must name."""

    def __init__(self, message: str, *, version: int = UNKNOWN_VERSION, index: int = 0) -> None:
        self.version = version
        self.index = index
        super().__init__(message)


class NothingToRollBack(PointerConflict):
    """There is no earlier model to go back to."""


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


def encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode("utf-8")


def excerpt(data: bytes | str | None, limit: int = 40) -> str:
    """A short, escaped excerpt of bytes someone else wrote: safe in a one-line message."""
    if data is None:
        return "nothing"
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def parse_document(model: str, raw: bytes | str | None, *, version: int = UNKNOWN_VERSION,
                   index: int = 0, where: str = "") -> dict[str, Any]:
    """The pointer document in ``raw``, or :class:`PointerCorrupt` saying in one line what is wrong."""
    where = where or current_key(model)

    def corrupt(why: str) -> PointerCorrupt:
        return PointerCorrupt(f"model {model!r}: the pointer {where} is corrupt ({why}); "
                              f"'caravan models promote {model} <artifact URI> --force' replaces it",
                              version=version, index=index)

    if raw is None or raw in (b"", ""):
        raise corrupt("it is empty")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise corrupt(f"not JSON: {str(exc).splitlines()[0]}; starts with {excerpt(raw)}") from None
    return check_document(document, corrupt)


def check_document(document: Any, corrupt: Callable[[str], Exception]) -> dict[str, Any]:
    """``document`` if it has the shape of a pointer document, else ``corrupt(why)`` is raised."""
    if not isinstance(document, dict):
        raise corrupt(f"a JSON {type(document).__name__}, not an object")
    for field in ("artifact_id", "artifact_uri"):
        if not isinstance(document.get(field), str) or not document[field]:
            raise corrupt(f"{field!r} is missing or not a string")
    if not document["artifact_uri"].endswith("/" + document["artifact_id"]):
        raise corrupt("its artifact_uri does not end with its artifact_id")
    return document


def lineage(history: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], set[str]]:
    """Replay the history: the stack of models that led to the current one, and the rolled-back changes.

    A promotion pushes; a rollback pops back to the change it names, and what it pops is rolled
    back for good: a later rollback never returns to it. The stack's top is the current model.
    """
    stack: list[dict[str, Any]] = []
    rolled_back: set[str] = set()
    for entry in history:
        action = entry.get("action")
        if action not in CHANGES:
            continue
        if action == "rollback":
            target = entry.get("target_change_id")
            ids = [e.get("change_id") for e in stack]
            if target and target in ids:
                position = len(ids) - 1 - ids[::-1].index(target)
            else:  # an entry from before target_change_id: go back to the latest of its artifact
                matches = [i for i, e in enumerate(stack) if e.get("artifact_id") == entry.get("artifact_id")]
                position = matches[-1] if matches else -1
            if position >= 0:
                rolled_back.update(str(e.get("change_id")) for e in stack[position + 1:])
                del stack[position + 1:]
                continue
            if stack:  # "--to" a model off the stack: the model it replaced is rolled back all the same
                rolled_back.add(str(stack.pop().get("change_id")))
        stack.append(entry)
    return stack, rolled_back


def floor_models(history: list[dict[str, Any]], window: int) -> list[str]:
    """Artifact ids of the last ``window`` promotions that were not rolled back (newest first, once each)."""
    if window <= 0:
        return []
    _, rolled_back = lineage(history)
    promoted = [e for e in history if e.get("action") in ("promote", "force")][-window:]
    ids: list[str] = []
    for entry in reversed(promoted):
        artifact_id = entry.get("artifact_id")
        if entry.get("change_id") not in rolled_back and isinstance(artifact_id, str) and artifact_id not in ids:
            ids.append(artifact_id)
    return ids


def rollback_target(model: str, state: PointerState, history: list[dict[str, Any]],
                    to: str | None = None) -> tuple[dict[str, Any], list[str]]:
    """Where a rollback of ``model`` from ``state`` goes, and the change ids it rolls back.

    Without ``to``: the model that was current before the current one's promotion, skipping
    rolled-back entries. With ``to``: that artifact id (or change id); an earlier model of the
    lineage, or any model that was once current.
    """
    if state.document is None:
        raise NothingToRollBack(f"model {model!r} has no pointer to roll back")
    stack, _ = lineage(history)
    if not stack or stack[-1].get("artifact_id") != state.artifact_id:
        raise PointerConflict(f"model {model!r}: the history does not end at the current model {state.artifact_id}; "
                              "name the target with --to")
    if to is None:
        if len(stack) < 2:
            raise NothingToRollBack(f"model {model!r}: nothing earlier to roll back to; {state.artifact_id} is the "
                                    "first model of its history that was not rolled back")
        return dict(stack[-2]), [str(stack[-1].get("change_id"))]
    if to in (state.artifact_id, state.document.get("change_id")):
        raise NothingToRollBack(f"model {model!r}: {to} is already the current model")
    for position in range(len(stack) - 2, -1, -1):
        if to in (stack[position].get("artifact_id"), stack[position].get("change_id")):
            return dict(stack[position]), [str(e.get("change_id")) for e in stack[position + 1:]]
    for entry in reversed(history):
        if entry.get("action") in CHANGES and to in (entry.get("artifact_id"), entry.get("change_id")):
            return dict(entry), [str(stack[-1].get("change_id"))]
    raise NothingToRollBack(f"model {model!r}: {to} was never the current model (see 'caravan models history "
                            f"{model}')")


class ModelPointer(abc.ABC):
    """Where model pointers live (a folder on this machine, or Consul KV)."""

    name = ""
    #: The environment whose pointers this backend reads and moves (set when it is made).
    environment = ""

    @abc.abstractmethod
    def read(self, model: str) -> PointerState:
        """The current pointer and its version (version 0: never set); :class:`PointerCorrupt` if unreadable."""

    @abc.abstractmethod
    def compare_and_set(self, model: str, document: dict[str, Any], expected_version: int) -> int | None:
        """Replace the pointer if its version is still ``expected_version``; return the new version, or None."""

    @abc.abstractmethod
    def history(self, model: str) -> list[dict[str, Any]]:
        """Every pointer change and rejection, oldest first (an unreadable entry is skipped with a warning)."""

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

    def read_for_repair(self, model: str) -> tuple[PointerState, PointerCorrupt | None]:
        """The pointer, or for a corrupt one an empty state with the version that replacing it must name."""
        try:
            return self.read(model), None
        except PointerCorrupt as exc:
            return PointerState(None, exc.version, exc.index), exc

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

    def rollback_target(self, model: str, to: str | None = None) -> dict[str, Any]:
        """The history entry a rollback of ``model`` goes to now (see :func:`rollback_target`)."""
        self.repair_history(model)
        target, _ = rollback_target(model, self.read(model), self.history(model), to)
        return target
