"""The promotion gate: a candidate replaces the current model only if it is sound and not worse, on the same rows.

The rules, in order (the first that fails rejects, and the verdict says why in one line each):

1. **Sound**: the candidate has a readable serving schema (``features.json``), loads and scores its
   sample with finite values in a disposable process first (``caravan.serving.probe``), then scores
   the holdout (the test split of the dataset it was trained on, from its manifest) here, with
   finite, not near-constant scores.
2. **Compatible**: every feature the candidate needs is in the current model's schema with the same
   type. Otherwise the change is breaking and rejected, naming the fields, unless
   ``allow_schema_change`` (the verdict then records the change).
3. **Like with like**: the current model scores the *same holdout rows*; if it cannot, the candidate
   is rejected with that reason (a comparison of numbers from different data is never made). With an
   allowed schema change the comparison is skipped instead, and the verdict says so.
4. **Not worse**: the candidate's metric is within ``tolerance`` of the current model's, and of the
   best of the ``floor`` models (the recent promotions) on the same rows, so quality cannot slide
   one tolerance at a time.

Fail closed: only a current model that is not found, corrupt or unsound counts as "no current
model"; any other error (a store or network outage) propagates, so the step fails and is retried.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..artifacts import Artifact
from ..errors import ArtifactCorruptError, ArtifactError, ArtifactNotFoundError, CaravanError

#: Below this standard deviation of scores, a model says the same thing about everyone.
MIN_SCORE_STD = 1e-4
#: Errors that mean "this model cannot score these rows" (never an outage: those propagate).
_SCORING_ERRORS: tuple[type[BaseException], ...] = (ValueError, KeyError, TypeError, IndexError, ArtifactError)


class UnsoundModel(CaravanError):
    """An artifact that is not a model serving could load: no readable schema, or it fails or crashes a probe."""


def _lightgbm_error() -> tuple[type[BaseException], ...]:
    from lightgbm.basic import LightGBMError

    return (*_SCORING_ERRORS, LightGBMError)


def model_schema(model: Artifact) -> dict[str, Any]:
    """The serving schema of a model artifact (``{"label": ..., "features": [{"name", "type"}, ...]}``)."""
    try:
        files = model.files()
        if "features.json" not in files or "model.txt" not in files:
            family = model.manifest().get("task_family") or "unknown"
            raise UnsoundModel(f"{model.id} is not a model: a {family} artifact without model.txt and "
                               f"features.json (it has {', '.join(files) or 'no files'})")
        schema = model.read_json("features.json")
    except ArtifactCorruptError as exc:
        raise UnsoundModel(f"{model.id} is not a sound model: {exc}") from exc
    except ValueError as exc:
        raise UnsoundModel(f"{model.id} is not a sound model: features.json is not JSON ({exc})") from exc
    features = schema.get("features") if isinstance(schema, dict) else None
    if not isinstance(features, list) or not features or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("type"), str)
            for f in features) or not isinstance(schema.get("label"), str):
        raise UnsoundModel(f"{model.id} is not a sound model: features.json is not a schema "
                           "(a label and a list of features with name and type)")
    return dict(schema)


_probed: set[str] = set()


def check_sound(model: Artifact, *, probe: Any = None, timeout_s: float = 60.0) -> dict[str, Any]:
    """Refuse anything that is not a loadable model; return its schema.

    The model is loaded and scored on its sample in a disposable process first (``probe``, a
    :class:`caravan.serving.probe.Probe`, or a fresh one): a model file that makes LightGBM abort
    kills the probe, never this process. Outages propagate.
    """
    schema = model_schema(model)
    if model.uri in _probed:
        return schema
    from ..serving.probe import ModelUnsound, check_model

    try:
        report = probe.check(model.uri, model.id) if probe is not None else \
            check_model(model.uri, timeout_s=timeout_s, artifact_id=model.id)
    except ModelUnsound as exc:
        how = "crashed the probe process" if exc.crashed else "failed in the probe"
        raise UnsoundModel(f"{model.id} is not a sound model: it {how} ({exc.reason})") from exc
    scores = np.asarray(report.sample_scores or [], dtype=np.float64)
    if not scores.size or not np.all(np.isfinite(scores)):
        raise UnsoundModel(f"{model.id} is not a sound model: its sample scores are missing or not finite")
    _probed.add(model.uri)
    return schema


def breaking_changes(candidate: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Features the candidate needs that the current schema lacks or types differently (clients send the current)."""
    served = {f["name"]: f["type"] for f in current["features"]}
    changes = []
    for feature in candidate["features"]:
        name, kind = feature["name"], feature["type"]
        if name not in served:
            changes.append(f"{name} (not in the current schema)")
        elif served[name] != kind:
            changes.append(f"{name} ({served[name]} -> {kind})")
    return changes


def holdout_of(model: Artifact) -> tuple[Artifact, Artifact | None]:
    """The dataset (and text features) a model artifact was trained on, from its manifest."""
    upstream = model.manifest().get("upstream") or {}
    if not isinstance(upstream, dict) or "dataset" not in upstream:
        raise ValueError(f"{model.id} records no 'dataset' upstream; cannot find its holdout")
    text = upstream.get("text")
    return Artifact(model.store, upstream["dataset"]), (Artifact(model.store, text) if text else None)


def _scores(model: Artifact, schema: dict[str, Any], table: Any) -> np.ndarray:
    import lightgbm as lgb

    from ..ml.features import feature_matrix

    booster = lgb.Booster(model_str=model.read_text("model.txt"))
    matrix = feature_matrix(table, [f["name"] for f in schema["features"]])
    return np.asarray(booster.predict(matrix), dtype=np.float64)


def _usable(model: Artifact, probe: Any) -> tuple[dict[str, Any] | None, str]:
    """The schema of an existing model, or None and why it counts as absent (not found, corrupt, unsound)."""
    try:
        return check_sound(model, probe=probe), ""
    except (ArtifactNotFoundError, ArtifactCorruptError, UnsoundModel) as exc:
        return None, str(exc)


def judge(candidate: Artifact, current: Artifact | None, *, tolerance: float = 0.01, metric: str = "auc",
          floor: Iterable[str] = (), allow_schema_change: bool = False) -> dict[str, Any]:
    """The verdict on ``candidate``: ``{"decision": "promote"|"reject", "reasons": [...], ...}`` (see the module)."""
    from ..serving.probe import Probe

    probe = Probe()  # one disposable process for every model this verdict loads; started only if one needs it
    try:
        return _judge(candidate, current, tolerance=tolerance, metric=metric, floor=floor,
                      allow_schema_change=allow_schema_change, probe=probe)
    finally:
        probe.close()


def _judge(candidate: Artifact, current: Artifact | None, *, tolerance: float, metric: str, floor: Iterable[str],
           allow_schema_change: bool, probe: Any) -> dict[str, Any]:
    from ..ml import metrics
    from ..ml.features import labels, load_split

    score_fn: Callable[[np.ndarray, np.ndarray], float] = {
        "auc": metrics.roc_auc, "average_precision": metrics.average_precision}[metric]
    verdict: dict[str, Any] = {"candidate": candidate.id, "current": current.id if current else None,
                               "metric": metric, "tolerance": tolerance, "reasons": [], "notes": []}
    reasons: list[str] = verdict["reasons"]
    notes: list[str] = verdict["notes"]

    def reject(reason: str) -> dict[str, Any]:
        reasons.append(reason)
        verdict["decision"] = "reject"
        return verdict

    scoring_errors = _lightgbm_error()
    try:
        schema = check_sound(candidate, probe=probe)
    except UnsoundModel as exc:
        return reject(str(exc))
    try:
        dataset, text = holdout_of(candidate)
        test = load_split(dataset, text, "test")
        y = labels(test, schema["label"])
        scores = _scores(candidate, schema, test)
    except scoring_errors as exc:
        return reject(f"candidate does not score its holdout: {type(exc).__name__}: {exc}")
    verdict["holdout"] = {"dataset": dataset.id, "rows": len(y)}
    if not np.all(np.isfinite(scores)):
        return reject(f"candidate gives {int(np.sum(~np.isfinite(scores)))} NaN/infinite scores")
    std = float(np.std(scores)) if len(scores) else 0.0
    verdict["score_std"] = std
    if std < MIN_SCORE_STD:
        return reject(f"candidate is degenerate: near-constant predictions (std {std:.2g} < {MIN_SCORE_STD:g})")
    candidate_score = verdict["candidate_score"] = score_fn(y, scores)

    current_schema = None
    if current is not None:
        current_schema, why = _usable(current, probe)
        if current_schema is None:
            notes.append(f"current model {current.id} counts as absent: {why}")
            verdict["current"] = None
    if current is not None and current_schema is not None:
        breaking = breaking_changes(schema, current_schema)
        if breaking and not allow_schema_change:
            return reject(f"breaking serving-schema change against the current model {current.id}: "
                          + ", ".join(breaking) + " (promote with --allow-schema-change if clients send them)")
        if breaking:
            verdict["schema_change"] = breaking
            notes.append("schema change allowed: " + ", ".join(breaking))
        try:
            verdict["current_score"] = score_fn(y, _scores(current, current_schema, test))
        except scoring_errors as exc:
            if not breaking:
                return reject(f"the current model {current.id} cannot score the candidate's holdout "
                              f"{dataset.id} ({type(exc).__name__}: {exc}); numbers from different data are "
                              "never compared")
            notes.append(f"the current model cannot score this holdout ({type(exc).__name__}); with the schema "
                         "change allowed, no comparison was made")

    compared: dict[str, float] = {}
    if verdict.get("current_score") is not None and current is not None:
        compared[current.id] = verdict["current_score"]
        if candidate_score < verdict["current_score"] - tolerance:
            return reject(f"candidate {metric} {candidate_score:.4f} is worse than the current model's "
                          f"{verdict['current_score']:.4f} on the same {len(y)} rows by more than the tolerance "
                          f"{tolerance:g}")
    for artifact_id in floor:
        if artifact_id in compared or artifact_id == candidate.id or (current and artifact_id == current.id):
            continue
        model = Artifact(candidate.store, artifact_id)
        model_schema_, why = _usable(model, probe)
        if model_schema_ is None:
            notes.append(f"floor model {artifact_id} skipped: {why}")
            continue
        try:
            compared[artifact_id] = score_fn(y, _scores(model, model_schema_, test))
        except scoring_errors as exc:
            notes.append(f"floor model {artifact_id} skipped: it cannot score this holdout ({type(exc).__name__})")
    if compared:
        best_id = max(compared, key=lambda k: compared[k])
        verdict["floor"] = {"best": best_id, "best_score": compared[best_id], "scores": compared}
        if candidate_score < compared[best_id] - tolerance:
            return reject(f"slow decline: candidate {metric} {candidate_score:.4f} is worse than the best recent "
                          f"model {best_id} ({compared[best_id]:.4f}) on the same {len(y)} rows by more than the "
                          f"tolerance {tolerance:g}")
    verdict["decision"] = "promote"
    current_score = verdict.get("current_score")
    versus = " (no current model)" if verdict["current"] is None else " (no comparison)" \
        if current_score is None or (isinstance(current_score, float) and math.isnan(current_score)) \
        else f" vs current {current_score:.4f}"
    reasons.append(f"candidate {metric} {candidate_score:.4f}{versus} on {len(y)} holdout rows")
    return verdict
