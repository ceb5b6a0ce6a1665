"""A loaded model, its request schema, and the holder that swaps models without a request noticing."""

from __future__ import annotations

import collections
import logging
import math
import operator
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from math import isfinite
from typing import Any

import numpy as np

from ..artifacts import Artifact
from ..errors import ArtifactCorruptError, ArtifactNotFoundError, CaravanError

log = logging.getLogger("caravan.serving")

_INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
_FLOAT_TYPES = {"float", "double", "halffloat", "float16", "float32", "float64"}


EXCERPT = 40
SIGNATURES_KEPT = 256  # distinct type signatures remembered per model (least recently used go first)


def excerpt(text: str, limit: int = EXCERPT) -> str:
    """At most ``limit`` characters of client input, with control characters and lone surrogates escaped."""
    short = text[:limit]
    return repr(short)[1:-1] + ("…" if len(text) > limit else "")


def names_excerpt(names: Sequence[str], shown: int = 5) -> str:
    """A few client-given names, each short and escaped, for an error message."""
    listed = ", ".join(f"'{excerpt(name)}'" for name in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"[{listed}]{more}"


class RequestInvalid(ValueError):
    """A prediction request that does not match the model's features; the message names the field."""

    def __init__(self, message: str, *, field_name: str | None = None, row: int | None = None) -> None:
        self.field_name = field_name
        self.row = row
        super().__init__(message)


@dataclass(frozen=True)
class Feature:
    """One input feature and how a request must give it."""

    name: str
    type: str

    def value(self, raw: Any, row: int) -> float:
        """The feature as a float, or a clear error naming the field (JSON null is a missing value)."""
        if raw is None:
            return math.nan
        try:
            return self._number(raw, row)
        except OverflowError:
            raise RequestInvalid(f"row {row}: field {self.name!r} is too large for a 64-bit float",
                                 field_name=self.name, row=row) from None

    def _number(self, raw: Any, row: int) -> float:
        kind = self.type
        if kind == "bool":
            if isinstance(raw, bool):
                return float(raw)
        elif isinstance(raw, bool):
            pass  # true/false is not a number, whatever Python thinks
        elif kind in _INTEGER_TYPES:
            if isinstance(raw, int):
                return float(raw)
            if isinstance(raw, float) and raw.is_integer():
                return raw
        elif isinstance(raw, (int, float)) and (kind in _FLOAT_TYPES or kind.startswith(("float", "double"))):
            if isinstance(raw, float) and not math.isfinite(raw):
                raise RequestInvalid(f"row {row}: field {self.name!r} must be finite", field_name=self.name, row=row)
            return float(raw)
        expected = "boolean" if kind == "bool" else "integer" if kind in _INTEGER_TYPES else "number"
        raise RequestInvalid(f"row {row}: field {self.name!r} must be a {expected} or null ({kind}), "
                             f"got {type(raw).__name__}", field_name=self.name, row=row)


@dataclass
class LoadedModel:
    """A booster ready to serve, with the artifact it came from."""

    artifact_id: str
    artifact_uri: str
    booster: Any
    features: list[Feature]
    loaded_at: float = field(default_factory=time.time)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        self._expected = set(names)
        # One C-level call per row pulls every feature in model order (itemgetter of one key is no tuple).
        getter = operator.itemgetter(*names)
        self._pick: Callable[[Mapping[str, Any]], tuple[Any, ...]] = \
            getter if len(names) > 1 else (lambda row: (getter(row),))
        # Type signatures (one Python type per feature) already known to be valid. Requests of a
        # deployed model almost always share one or two signatures, so most rows are checked by one
        # tuple lookup instead of one Python call per value. Each maps to a function picking the
        # signature's float values, the only ones that can be NaN or infinite (None is a missing value).
        # Bounded (LRU): a client sending ever new mixes of types must not grow the server's memory.
        self._valid_signatures: collections.OrderedDict[tuple[type, ...],
                                                        Callable[[tuple[Any, ...]], tuple[Any, ...]]] = \
            collections.OrderedDict()

    @staticmethod
    def _floats_of(signature: tuple[type, ...]) -> Callable[[tuple[Any, ...]], tuple[Any, ...]]:
        positions = [j for j, kind in enumerate(signature) if kind is float]
        if not positions:
            return lambda picked: ()
        getter = operator.itemgetter(*positions)
        return getter if len(positions) > 1 else (lambda picked: (getter(picked),))

    def _signature_is_valid(self, signature: tuple[type, ...]) -> bool:
        """Whether every value of this signature passes :meth:`Feature.value` whatever it is (finiteness aside)."""
        for kind, feature in zip(signature, self.features, strict=True):
            if kind is type(None):
                continue
            if feature.type == "bool":
                if kind is not bool:
                    return False
            elif feature.type in _INTEGER_TYPES:
                if kind is not int:  # an integral float is valid, but that depends on the value
                    return False
            elif kind not in (int, float):
                return False
        return True

    def matrix(self, rows: Sequence[Any]) -> np.ndarray:
        """Rows (JSON objects) as a float matrix in feature order; unknown, missing or mistyped fields are refused."""
        expected = self._expected
        pick = self._pick
        valid = self._valid_signatures
        last: tuple[type, ...] | None = None
        values: list[tuple[Any, ...]] = []
        for i, row in enumerate(rows):
            if type(row) is not dict and not isinstance(row, Mapping):  # JSON gives dicts: skip the ABC check
                raise RequestInvalid(f"row {i} must be a JSON object of feature values, got {type(row).__name__}",
                                     row=i)
            if len(row) != len(expected) or row.keys() != expected:
                unknown = sorted(str(name) for name in set(row) - expected)
                missing = sorted(expected - set(row))
                problem = "; ".join(part for part in (f"unknown fields {names_excerpt(unknown)}" if unknown else "",
                                                      f"missing fields {names_excerpt(missing)}" if missing else "")
                                    if part)
                first = (unknown or missing)[0]
                raise RequestInvalid(f"row {i}: {problem}", field_name=excerpt(first), row=i)
            picked = pick(row)
            signature = tuple(map(type, picked))
            floats = valid.get(signature)
            if floats is None:
                self._check(picked, i)
                if self._signature_is_valid(signature):
                    valid[signature] = self._floats_of(signature)
                    if len(valid) > SIGNATURES_KEPT:
                        valid.popitem(last=False)  # the least recently used
            else:
                if signature != last:
                    valid.move_to_end(signature)  # once per run of rows that share a signature
                    last = signature
                if not isfinite(sum(floats(picked))):  # a NaN or an infinity makes the sum non-finite
                    self._check(picked, i)  # the exact check decides (a sum may also just overflow)
            values.append(picked)
        try:
            # Numbers, bools and None (NaN: a missing value) only, each checked above.
            return np.array(values, dtype=np.float64).reshape(len(values), len(self.features))
        except (OverflowError, ValueError, TypeError):
            for i, picked in enumerate(values):  # let the exact check name the value at fault
                self._check(picked, i)
            raise

    def _check(self, picked: tuple[Any, ...], row: int) -> None:
        """The exact check of one row's values: raises RequestInvalid naming the first field at fault."""
        for feature, raw in zip(self.features, picked, strict=True):
            feature.value(raw, row)

    def predict(self, rows: Sequence[Any]) -> list[float]:
        return list(self.booster.predict(self.matrix(rows)).tolist())


class ModelUnsound(CaravanError):
    """A model artifact that cannot serve: it does not load, scores its sample non-finite or all alike, or
    kills the (disposable) process loading it (``crashed``). ``reason`` says which, in one line."""

    def __init__(self, reason: str, *, artifact_id: str = "", crashed: bool = False) -> None:
        self.reason = reason
        self.artifact_id = artifact_id
        self.crashed = crashed
        super().__init__(f"model {artifact_id} is unsound: {reason}" if artifact_id else f"model is unsound: {reason}")


@dataclass(frozen=True)
class ModelFiles:
    """What a model artifact holds for serving, read once: the probe checks these bytes, the server loads them."""

    artifact_id: str
    uri: str
    model_text: str
    schema: dict[str, Any]
    sample: list[Any] | None


def read_model_files(artifact: Artifact) -> ModelFiles:
    """The model, schema and sample of an artifact. A missing, corrupt or malformed file makes it unsound;
    a store that cannot be reached raises its BackendError (worth retrying)."""
    try:
        names = artifact.files()
        schema = artifact.read_json("features.json")
        model_text = artifact.read_text("model.txt")
        sample = artifact.read_json("sample.json") if "sample.json" in names else None
    except (ArtifactNotFoundError, ArtifactCorruptError, ValueError) as exc:
        raise ModelUnsound(f"{type(exc).__name__}: {exc}", artifact_id=artifact.id) from exc
    if not isinstance(schema, dict) or not isinstance(schema.get("features"), list):
        raise ModelUnsound("features.json has no 'features' list", artifact_id=artifact.id)
    if sample is not None and not isinstance(sample, list):
        raise ModelUnsound("sample.json is not a list of rows", artifact_id=artifact.id)
    return ModelFiles(artifact.id, artifact.uri, model_text, schema, sample)


def build_model(files: ModelFiles) -> tuple[LoadedModel, list[float]]:
    """Load a model from its files and check it on its stored sample: it must predict finite, varied scores.

    Returns the model and its sample scores. This runs native code on untrusted bytes: the server runs it
    in the probe process first (see :mod:`caravan.serving.probe`).
    """
    import lightgbm as lgb

    try:
        features = [Feature(str(f["name"]), str(f["type"])) for f in files.schema["features"]]
    except (KeyError, TypeError) as exc:
        raise ModelUnsound(f"features.json lists a feature without name and type: {exc}",
                           artifact_id=files.artifact_id) from None
    if not features:
        raise ModelUnsound("features.json lists no features", artifact_id=files.artifact_id)
    booster = lgb.Booster(model_str=files.model_text)
    if booster.num_feature() != len(features):
        raise ModelUnsound(f"model has {booster.num_feature()} features, features.json lists {len(features)}",
                           artifact_id=files.artifact_id)
    model = LoadedModel(files.artifact_id, files.uri, booster, features)
    sample = files.sample
    rows = sample or [{f.name: 0 if f.type != "bool" else False for f in features}]
    scores = np.asarray(model.predict(rows))
    if not np.all(np.isfinite(scores)):
        raise ModelUnsound("model gives non-finite scores on its stored sample", artifact_id=files.artifact_id)
    if sample and len(rows) > 1 and float(np.std(scores)) < 1e-9:
        raise ModelUnsound("model gives the same score to every row of its stored sample",
                           artifact_id=files.artifact_id)
    return model, [float(s) for s in scores]


def load_model(artifact: Artifact) -> LoadedModel:
    """Load a training artifact in this process and check it on its stored sample (trusted models only)."""
    return build_model(read_model_files(artifact))[0]


class ModelHolder:
    """Holds the model being served. Swapping is one reference assignment: a request that took the old
    model finishes on it, the next one gets the new model, and none sees a mix."""

    def __init__(self) -> None:
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.reloads_ok = 0
        self.reloads_failed = 0
        self.reloads_crashed = 0
        self._lock = threading.Lock()

    def swap(self, model: LoadedModel) -> None:
        with self._lock:
            self.current = model
            self.reloads_ok += 1
            self.last_error = None

    def failed(self, artifact_id: str | None, error: BaseException) -> None:
        """Count a model that did not load (``crashed``: it killed the probe) and keep why."""
        with self._lock:
            self.reloads_failed += 1
            if isinstance(error, ModelUnsound):
                self.reloads_crashed += error.crashed
                self.last_error = str(error)
            else:
                self.last_error = f"{artifact_id}: {type(error).__name__}: {error}"
            self.last_error_at = time.time()
