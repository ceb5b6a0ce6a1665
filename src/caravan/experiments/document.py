"""The experiment document of a model and the store that holds it, changed only by check-and-set.

One document per model at ``caravan/<env>/experiments/M`` (beside the model pointer, same backend)::

    {"model": "ranker", "arms": [{"name": "control", "artifact_id": ..., "artifact_uri": ..., "weight": 0.5}, ...],
     "policy": "fixed" | "thompson", "unit": "user_id", "salt": ..., "reward": "click",
     "state": "running" | "stopped", "winner": null | <arm>, "started_at": ..., "updated_at": ...}

Every write names the version it replaces (Consul's ModifyIndex; a counter in the file backend;
0: the document must not exist yet) and raises :class:`ExperimentConflict` when someone wrote first.

Reward counters are per gateway: each gateway writes only its own key,
``caravan/<env>/experiments/M/stats/<gateway-id>`` (``{"salt": ..., "counts": {arm: [successes, failures]}}``),
so gateways never race; :meth:`ExperimentStore.read_stats` sums every gateway's counters. A failure is a
request the arm answered whose outcome was no reward. Counters carry the experiment's salt: a new experiment
(a new salt) never counts an old one's rewards.
"""

from __future__ import annotations

import abc
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import CaravanError, ConfigurationError, PointerConflict
from ..registry.base import check_model_name, models_prefix, utc_now

POLICIES = ("fixed", "thompson")
STATES = ("running", "stopped")
#: Arm and gateway names become key segments and Consul tags (``arm=NAME``): short, key-safe.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}")


class ExperimentInvalid(CaravanError):
    """An experiment document (given, or read from the store) breaks the schema; the message names the field."""


class ExperimentConflict(PointerConflict):
    """A check-and-set on an experiment document lost a race: read again and decide again."""


def check_name(what: str, name: Any) -> str:
    """``name`` if it is a valid arm or gateway name (1-40 of ``[A-Za-z0-9_.-]``, starting with a letter or digit)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ExperimentInvalid(f"{what} {name!r} must be 1-40 of [A-Za-z0-9_.-], starting with a letter or digit")
    return name


def experiments_prefix(environment: str | None = None) -> str:
    """``caravan/<env>/experiments/``: beside ``caravan/<env>/models/``."""
    return models_prefix(environment)[: -len("models/")] + "experiments/"


def experiment_key(model: str, environment: str | None = None) -> str:
    return f"{experiments_prefix(environment)}{check_model_name(model)}"


def stats_prefix(model: str, environment: str | None = None) -> str:
    return f"{experiment_key(model, environment)}/stats/"


@dataclass(frozen=True)
class Arm:
    """One arm: a name (``control``, ``challenger``), the artifact it serves, and its share of traffic."""

    name: str
    artifact_id: str
    artifact_uri: str
    weight: float

    def __post_init__(self) -> None:
        check_name("arm name", self.name)
        for what in ("artifact_id", "artifact_uri"):
            if not isinstance(getattr(self, what), str) or not getattr(self, what):
                raise ExperimentInvalid(f"arm {self.name!r}: {what} must be a non-empty string")
        if not self.artifact_uri.endswith("/" + self.artifact_id):
            raise ExperimentInvalid(f"arm {self.name!r}: artifact_uri {self.artifact_uri!r} does not end with its "
                                    f"artifact_id {self.artifact_id!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, (int, float)) \
                or not math.isfinite(self.weight) or self.weight < 0:
            raise ExperimentInvalid(f"arm {self.name!r}: weight {self.weight!r} must be a finite number >= 0")


@dataclass(frozen=True, kw_only=True)
class Experiment:
    """A model's experiment: its arms and how traffic is split between them (see the module docstring)."""

    model: str
    arms: tuple[Arm, ...]
    policy: str = "fixed"
    unit: str = "user_id"
    salt: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: str = field(default_factory=utc_now)
    reward: str = "reward"
    state: str = "running"
    winner: str | None = None
    updated_at: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        try:
            check_model_name(self.model)
        except ConfigurationError as exc:
            raise ExperimentInvalid(f"experiment field 'model': {exc}") from None
        if not isinstance(self.arms, tuple) or not self.arms or not all(isinstance(a, Arm) for a in self.arms):
            raise ExperimentInvalid(f"experiment of {self.model!r}: field 'arms' must hold at least one arm")
        names = [a.name for a in self.arms]
        if len(set(names)) != len(names):
            raise ExperimentInvalid(f"experiment of {self.model!r}: field 'arms' names an arm twice ({names})")
        if sum(a.weight for a in self.arms) <= 0:
            raise ExperimentInvalid(f"experiment of {self.model!r}: field 'arms' has no arm with a weight above 0")
        for what, allowed in (("policy", POLICIES), ("state", STATES)):
            if getattr(self, what) not in allowed:
                raise ExperimentInvalid(f"experiment of {self.model!r}: field {what!r} is {getattr(self, what)!r}; "
                                        f"one of {', '.join(allowed)}")
        for what in ("unit", "salt", "started_at", "reward", "updated_at"):
            if not isinstance(getattr(self, what), str) or not getattr(self, what):
                raise ExperimentInvalid(f"experiment of {self.model!r}: field {what!r} must be a non-empty string")
        if self.winner is not None and self.winner not in names:
            raise ExperimentInvalid(f"experiment of {self.model!r}: field 'winner' {self.winner!r} is not an arm "
                                    f"({', '.join(names)})")
        if self.state == "running" and self.winner is not None:
            raise ExperimentInvalid(f"experiment of {self.model!r}: field 'winner' is set on a running experiment")

    def arm(self, name: str) -> Arm:
        """The arm called ``name``; :class:`ExperimentInvalid` naming the arms there are otherwise."""
        for arm in self.arms:
            if arm.name == name:
                return arm
        raise ExperimentInvalid(f"experiment of {self.model!r} has no arm {name!r}; its arms are "
                                f"{', '.join(a.name for a in self.arms)}")

    def weights(self) -> list[tuple[str, float]]:
        """(arm, share of traffic) in arm order, shares summing to 1."""
        total = sum(a.weight for a in self.arms)
        return [(a.name, a.weight / total) for a in self.arms]

    def with_weights(self, weights: Mapping[str, float]) -> Experiment:
        """A copy with new weights (arms not named keep theirs) and a fresh ``updated_at``."""
        unknown = set(weights) - {a.name for a in self.arms}
        if unknown:
            raise ExperimentInvalid(f"experiment of {self.model!r} has no arm {sorted(unknown)[0]!r}")
        arms = tuple(replace(a, weight=float(weights.get(a.name, a.weight))) for a in self.arms)
        return replace(self, arms=arms, updated_at=utc_now())

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["arms"] = [asdict(a) for a in self.arms]
        return out

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, fixed separators (the same document always gives the same bytes)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes | Mapping[str, Any]) -> Experiment:
        """Parse strictly: unknown or missing fields, wrong types: :class:`ExperimentInvalid` naming the field."""
        if isinstance(raw, Mapping):
            data: Any = dict(raw)
        else:
            try:
                data = json.loads(raw)
            except ValueError as exc:
                raise ExperimentInvalid(f"experiment document is not JSON ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ExperimentInvalid(f"experiment document is a JSON {type(data).__name__}, not an object")
        fields = {"model", "arms", "policy", "unit", "salt", "started_at", "reward", "state", "winner",
                  "updated_at"}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ExperimentInvalid(f"experiment document has an unknown field {unknown[0]!r}")
        missing = sorted(fields - set(data))
        if missing:
            raise ExperimentInvalid(f"experiment document lacks the field {missing[0]!r}")
        if not isinstance(data["arms"], list):
            raise ExperimentInvalid("experiment document: field 'arms' must be a list")
        arms = []
        for position, arm in enumerate(data["arms"]):
            arm_fields = {"name", "artifact_id", "artifact_uri", "weight"}
            if not isinstance(arm, dict) or set(arm) != arm_fields:
                raise ExperimentInvalid(f"experiment document: field 'arms[{position}]' must be an object with "
                                        f"exactly {', '.join(sorted(arm_fields))}")
            arms.append(Arm(**arm))
        return cls(**{**data, "arms": tuple(arms)})


#: Per-arm reward counters: arm -> (successes, failures).
Counts = dict[str, tuple[int, int]]


def check_counts(counts: Mapping[str, Any], where: str) -> Counts:
    """``counts`` as {arm: (successes, failures)} of non-negative ints, or :class:`ExperimentInvalid` naming the arm."""
    out: Counts = {}
    for arm, pair in counts.items():
        check_name("arm name", arm)
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in pair):
            raise ExperimentInvalid(f"{where}: counts of arm {arm!r} must be [successes, failures], integers >= 0")
        out[arm] = (int(pair[0]), int(pair[1]))
    return out


def merge_counts(parts: list[Counts]) -> Counts:
    """The sum of several gateways' counters, arm by arm."""
    merged: Counts = {}
    for counts in parts:
        for arm, (s, f) in counts.items():
            old = merged.get(arm, (0, 0))
            merged[arm] = (old[0] + s, old[1] + f)
    return merged


class ExperimentStore(abc.ABC):
    """Where experiment documents and reward counters live (a folder beside the pointers, or Consul KV)."""

    name = ""
    environment = ""

    @abc.abstractmethod
    def read(self, model: str) -> tuple[Experiment | None, int]:
        """The document (None if there is none) and the version a write must name (0: none yet)."""

    @abc.abstractmethod
    def write(self, exp: Experiment, version: int) -> int:
        """Replace the document if its version is still ``version``; the new version, or :class:`ExperimentConflict`."""

    @abc.abstractmethod
    def watch(self, model: str, version: int, wait_s: float) -> tuple[Experiment | None, int]:
        """Block until the version differs from ``version`` or ``wait_s`` passes; what is there then."""

    @abc.abstractmethod
    def put_stats(self, model: str, gateway_id: str, counts: Mapping[str, tuple[int, int]], *,
                  salt: str = "") -> None:
        """Replace this gateway's counters (its own key: no race with other gateways)."""

    @abc.abstractmethod
    def read_stats(self, model: str, *, salt: str | None = None) -> Counts:
        """Every gateway's counters summed per arm (``salt``: only counters of that experiment)."""

    @abc.abstractmethod
    def clear_stats(self, model: str) -> None:
        """Forget every gateway's counters (a new experiment starts from zero)."""

    def update(self, model: str, decide: Callable[[Experiment | None], Experiment | None],
               attempts: int = 10) -> Experiment | None:
        """Read, decide, check-and-set; on a lost race read and decide again. ``decide`` None: write nothing."""
        for _ in range(attempts):
            exp, version = self.read(model)
            new = decide(exp)
            if new is None:
                return exp
            try:
                self.write(new, version)
            except ExperimentConflict:
                continue
            return new
        raise ExperimentConflict(f"model {model!r}: the experiment document kept changing during {attempts} "
                                 "attempts to update it")


def parse_stats(raw: bytes | str | None, where: str) -> tuple[str, Counts]:
    """(salt, counts) of one gateway's stats value; :class:`ExperimentInvalid` naming ``where`` if unreadable."""
    try:
        data = json.loads(raw or b"null")
    except ValueError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.get("counts"), dict) or not isinstance(data.get("salt"), str):
        raise ExperimentInvalid(f"{where} is not a stats document ({{'salt': ..., 'counts': {{arm: [s, f]}}}})")
    return data["salt"], check_counts(data["counts"], where)


def encode_stats(counts: Mapping[str, tuple[int, int]], salt: str, where: str) -> bytes:
    checked = check_counts(counts, where)
    return json.dumps({"salt": salt, "counts": {k: list(v) for k, v in checked.items()}, "updated_at": utc_now()},
                      sort_keys=True, separators=(",", ":")).encode()
