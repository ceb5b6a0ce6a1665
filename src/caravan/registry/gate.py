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

The holdout is read once, in batches (:class:`caravan.ml.split_batches.SplitBatches`), and every model
in the comparison (candidate, current, floor) scores each batch in turn, into exact streaming metrics
(:class:`caravan.ml.metrics_stream.ScoreStream`: the AUC is the very number the whole-array computation
gives, so no error bound enters the decision). Memory holds a batch, not the holdout.

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


class _Scorer:
    """One model scoring the holdout batch by batch into its own :class:`~caravan.ml.metrics_stream.ScoreStream`.

    The first batch it cannot score (a missing feature, a model that does not load) stops it and is kept
    as ``error``; outages propagate. The booster is loaded once, on the first batch.
    """

    def __init__(self, model: Artifact, schema: dict[str, Any], errors: tuple[type[BaseException], ...]) -> None:
        from ..ml.metrics_stream import ScoreStream

        self.model, self.schema, self.errors = model, schema, errors
        self.features = [f["name"] for f in schema["features"]]
        self.stream = ScoreStream()
        self.booster: Any = None
        self.error: BaseException | None = None

    def score(self, batch: Any, y: np.ndarray) -> None:
        if self.error is not None:
            return
        from ..ml.features import feature_matrix

        try:
            if self.booster is None:
                import lightgbm as lgb

                self.booster = lgb.Booster(model_str=self.model.read_text("model.txt"))
            scores = np.asarray(self.booster.predict(feature_matrix(batch, self.features)), dtype=np.float64)
            self.stream.add(y, scores)
        except self.errors as exc:
            self.error = exc

    def metric(self, name: str) -> float:
        """The holdout metric, or the error that stopped this model (raised)."""
        if self.error is not None:
            raise self.error
        stream = self.stream
        if stream.nonfinite:
            raise ValueError(f"{self.model.id} gives {stream.nonfinite} NaN/infinite scores")
        return stream.roc_auc() if name == "auc" else stream.average_precision()


def _score_holdout(dataset: Artifact, text: Artifact | None, label: str, scorers: list[_Scorer],
                   batch_rows: int) -> int:
    """Every model scores the same holdout rows: each batch is read once and scored by all of them in turn.

    Returns the rows read. Stops early when the first scorer (the candidate) cannot score a batch.
    A label that cannot be read is the candidate's failure too (as with the whole table).
    """
    from ..ml.features import labels
    from ..ml.split_batches import SplitBatches

    wanted = [label, *(name for scorer in scorers for name in scorer.features)]
    rows = 0
    with SplitBatches(dataset, text, "test", wanted, batch_rows) as split:
        for batch in split:
            y = labels(batch, label)
            for scorer in scorers:
                scorer.score(batch, y)
            rows += batch.num_rows
            if scorers[0].error is not None:
                break
    return rows


def _usable(model: Artifact, probe: Any) -> tuple[dict[str, Any] | None, str]:
    """The schema of an existing model, or None and why it counts as absent (not found, corrupt, unsound)."""
    try:
        return check_sound(model, probe=probe), ""
    except (ArtifactNotFoundError, ArtifactCorruptError, UnsoundModel) as exc:
        return None, str(exc)


def judge(candidate: Artifact, current: Artifact | None, *, tolerance: float = 0.01, metric: str = "auc",
          floor: Iterable[str] = (), allow_schema_change: bool = False, batch_rows: int | None = None,
          ) -> dict[str, Any]:
    """The verdict on ``candidate``: ``{"decision": "promote"|"reject", "reasons": [...], ...}`` (see the module).

    ``batch_rows``: rows of the holdout read and scored at a time (by every model in turn).
    """
    from ..ml.split_batches import DEFAULT_BATCH_ROWS
    from ..serving.probe import Probe

    probe = Probe()  # one disposable process for every model this verdict loads; started only if one needs it
    try:
        return _judge(candidate, current, tolerance=tolerance, metric=metric, floor=floor,
                      allow_schema_change=allow_schema_change, probe=probe,
                      batch_rows=batch_rows or DEFAULT_BATCH_ROWS)
    finally:
        probe.close()


def _judge(candidate: Artifact, current: Artifact | None, *, tolerance: float, metric: str, floor: Iterable[str],
           allow_schema_change: bool, probe: Any, batch_rows: int) -> dict[str, Any]:
    if metric not in ("auc", "average_precision"):
        raise KeyError(metric)
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
    except scoring_errors as exc:
        return reject(f"candidate does not score its holdout: {type(exc).__name__}: {exc}")

    # Who scores the holdout, decided before it is read: then one pass scores every batch with every model,
    # so each comparison is on the very same rows (and memory holds a batch, not the holdout).
    current_schema = None
    if current is not None:
        current_schema, why = _usable(current, probe)
        if current_schema is None:
            notes.append(f"current model {current.id} counts as absent: {why}")
            verdict["current"] = None
    breaking = breaking_changes(schema, current_schema) if current_schema is not None else []
    floor_models: dict[str, _Scorer] = {}
    floor_notes: list[str] = []
    for artifact_id in dict.fromkeys(floor):
        if artifact_id == candidate.id or (current and artifact_id == current.id):
            continue
        model_schema_, why = _usable(Artifact(candidate.store, artifact_id), probe)
        if model_schema_ is None:
            floor_notes.append(f"floor model {artifact_id} skipped: {why}")
            continue
        floor_models[artifact_id] = _Scorer(Artifact(candidate.store, artifact_id), model_schema_, scoring_errors)
    scorer = _Scorer(candidate, schema, scoring_errors)
    current_scorer = _Scorer(current, current_schema, scoring_errors) \
        if current is not None and current_schema is not None and (allow_schema_change or not breaking) else None
    scorers = [scorer, *([current_scorer] if current_scorer else []), *floor_models.values()]
    try:
        try:
            rows = _score_holdout(dataset, text, schema["label"], scorers, batch_rows)
        except scoring_errors as exc:
            return reject(f"candidate does not score its holdout: {type(exc).__name__}: {exc}")
        if scorer.error is not None:
            failure = scorer.error
            return reject(f"candidate does not score its holdout: {type(failure).__name__}: {failure}")
        return _decide(verdict, reject, scorer, current, current_scorer, breaking, floor_models, floor_notes,
                       rows=rows, dataset=dataset, metric=metric, tolerance=tolerance)
    finally:
        for each in scorers:
            each.stream.close()


def _decide(verdict: dict[str, Any], reject: Callable[[str], dict[str, Any]], scorer: _Scorer,
            current: Artifact | None, current_scorer: _Scorer | None, breaking: list[str],
            floor_models: dict[str, _Scorer], floor_notes: list[str], *, rows: int, dataset: Artifact, metric: str,
            tolerance: float) -> dict[str, Any]:
    """The rules of the module docstring, in order, on the scores of one pass over the holdout."""
    notes: list[str] = verdict["notes"]
    verdict["holdout"] = {"dataset": dataset.id, "rows": rows}
    stream = scorer.stream
    if stream.nonfinite:
        return reject(f"candidate gives {stream.nonfinite} NaN/infinite scores")
    std = stream.std
    verdict["score_std"] = std
    if std < MIN_SCORE_STD:
        return reject(f"candidate is degenerate: near-constant predictions (std {std:.2g} < {MIN_SCORE_STD:g})")
    candidate_score = verdict["candidate_score"] = scorer.metric(metric)

    if current is not None and verdict["current"] is not None:
        if breaking and current_scorer is None:
            return reject(f"breaking serving-schema change against the current model {current.id}: "
                          + ", ".join(breaking) + " (promote with --allow-schema-change if clients send them)")
        if breaking:
            verdict["schema_change"] = breaking
            notes.append("schema change allowed: " + ", ".join(breaking))
        assert current_scorer is not None
        try:
            verdict["current_score"] = current_scorer.metric(metric)
        except current_scorer.errors as exc:
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
                          f"{verdict['current_score']:.4f} on the same {rows} rows by more than the tolerance "
                          f"{tolerance:g}")
    notes.extend(floor_notes)
    for artifact_id, model in floor_models.items():
        try:
            compared[artifact_id] = model.metric(metric)
        except model.errors as exc:
            notes.append(f"floor model {artifact_id} skipped: it cannot score this holdout ({type(exc).__name__})")
    if compared:
        best_id = max(compared, key=lambda k: compared[k])
        verdict["floor"] = {"best": best_id, "best_score": compared[best_id], "scores": compared}
        if candidate_score < compared[best_id] - tolerance:
            return reject(f"slow decline: candidate {metric} {candidate_score:.4f} is worse than the best recent "
                          f"model {best_id} ({compared[best_id]:.4f}) on the same {rows} rows by more than the "
                          f"tolerance {tolerance:g}")
    verdict["decision"] = "promote"
    current_score = verdict.get("current_score")
    versus = " (no current model)" if verdict["current"] is None else " (no comparison)" \
        if current_score is None or (isinstance(current_score, float) and math.isnan(current_score)) \
        else f" vs current {current_score:.4f}"
    verdict["reasons"].append(f"candidate {metric} {candidate_score:.4f}{versus} on {rows} holdout rows")
    return verdict
