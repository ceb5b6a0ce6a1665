"""Promotion: gate a candidate model, then move the pointer by check-and-set. One protocol for pipeline and CLI.

The protocol (:func:`decide` under the model's promotion lock):

1. the candidate is judged against the model that is current *now* and the best of the recent
   promotions (the floor, see :func:`caravan.registry.base.floor_models`), on the same holdout rows;
2. under the lock, if the pointer moved since the verdict, judge again;
3. a rejection is one history entry with its reasons and leaves the pointer alone; a promotion is a
   check-and-set that writes the new document and its history entry;
4. re-promoting the current model (same id and URI) changes nothing and records nothing.

``PromoteModel`` runs the judgement as a ``GateModel`` step (a dynamic dependency); ``caravan models
promote`` runs the same :func:`caravan.registry.gate.judge` in-process (every model is first loaded in
a disposable probe process) and the same :func:`decide`.
"""

from __future__ import annotations

import logging
from typing import Any

import luigi

from .artifacts import Artifact, ArtifactTask, current_run_id
from .errors import ArtifactCorruptError, ArtifactNotFoundError, PointerConflict
from .registry import ModelPointer, PointerState, open_pointer
from .registry.base import PointerCorrupt, floor_models, new_change_id, utc_now
from .tasks import NomadJobTask

log = logging.getLogger("caravan.promotion")

#: How many recent promotions the floor against slow decline looks at, by default.
FLOOR_WINDOW = 10


def is_current(state: PointerState, candidate: Artifact) -> bool:
    """True when the pointer already names this very artifact (same id and same URI)."""
    return state.document is not None and state.artifact_id == candidate.id and \
        state.document.get("artifact_uri") == candidate.uri


def decide(pointer: ModelPointer, model: str, candidate: Artifact, state: PointerState, verdict: dict[str, Any],
           *, promoted_by: str, action: str = "promote") -> tuple[str, dict[str, Any]]:
    """Act on a verdict reached against ``state``, under the promotion lock; one history entry per decision.

    Returns ``("reject", entry)``, ``("promote", document)``, or ``("moved", {})`` when the pointer
    changed since ``state`` (the caller judges again).
    """
    now, _ = pointer.read_for_repair(model)
    if now.version != state.version:
        return "moved", {}
    if verdict["decision"] != "promote":
        entry = {"action": "reject", "artifact_id": candidate.id, "artifact_uri": candidate.uri,
                 "reasons": list(verdict["reasons"]), "current_artifact_id": state.artifact_id,
                 "promoted_by": promoted_by, "promoted_at": utc_now(), "change_id": new_change_id()}
        pointer.record(model, entry)
        log.warning("model %s: candidate %s rejected: %s", model, candidate.id, "; ".join(verdict["reasons"]))
        return "reject", entry
    metrics = dict(candidate.metrics)
    if verdict.get("candidate_score") is not None:
        metrics["gate_" + str(verdict.get("metric", "auc"))] = verdict["candidate_score"]
    document: dict[str, Any] = {"artifact_uri": candidate.uri, "artifact_id": candidate.id, "action": action,
                                "metrics": metrics, "promoted_by": promoted_by,
                                "reason": "; ".join([*verdict["reasons"], *verdict.get("notes", [])])}
    if verdict.get("schema_change"):
        document["schema_change"] = list(verdict["schema_change"])
    written = pointer.set_if(model, document, state)
    if written is None or written.document is None:
        return "moved", {}
    log.info("model %s now serves %s (%s)", model, candidate.id, action)
    return "promote", written.document


def reference_dataset(model: str, pointer: ModelPointer | None = None) -> str:
    """The id of the dataset the current model of ``model`` was trained on; '' when there is no current model.

    For drift checks, resolved *before* a task's address is computed so that the address names it.
    Only a pointer or model that is absent, corrupt or records no dataset counts as "none" (logged);
    an outage (store, Consul) raises, so the run fails and is retried rather than skipping the check.
    """
    from .registry.gate import holdout_of
    from .step import artifact_at

    try:
        document = (pointer or open_pointer()).read(model).document
    except PointerCorrupt as exc:
        log.warning("no reference data for drift: %s", exc)
        return ""
    if document is None:
        return ""
    try:
        dataset, _ = holdout_of(artifact_at(document["artifact_uri"], document["artifact_id"]))
        dataset.manifest()
    except (ArtifactNotFoundError, ArtifactCorruptError, ValueError) as exc:
        log.warning("no reference data for drift: the current model %s of %s is unreadable: %s",
                    document["artifact_id"], model, exc)
        return ""
    return dataset.id


class GateModel(NomadJobTask):
    """The gate's verdict on one candidate against one current model (``jobs/gate_model.py``)."""

    job = "gate-model"
    path_params = ("tolerance", "metric")
    candidate = luigi.Parameter(description="Artifact id of the candidate model (a training artifact).")
    current = luigi.Parameter(default="", description="Artifact id of the current model ('' if none).")
    tolerance = luigi.FloatParameter(default=0.01, description="How much worse than current the candidate may be.")
    metric = luigi.ChoiceParameter(default="auc", choices=["auc", "average_precision"],
                                   description="Holdout metric the gate compares.")
    floor = luigi.ListParameter(default=(), description="Artifact ids of recent promotions: the candidate must be "
                                "within the tolerance of the best of them too (on the same rows).")
    allow_schema_change = luigi.BoolParameter(default=False, description="Accept a candidate whose serving schema "
                                              "breaks the current one's (the verdict records the change).")


class PromoteModel(ArtifactTask):
    """Make ``candidate`` the current model of ``model`` if the gate passes; record the verdict either way."""

    path_params = ("model", "tolerance")
    model = luigi.Parameter(default="ranker", description="Model name: the pointer is caravan/models/<model>/current.")
    candidate = luigi.Parameter(description="Artifact id of the candidate model.")
    tolerance = luigi.FloatParameter(default=0.01, description="How much worse than current the candidate may be.")
    metric = luigi.ChoiceParameter(default="auc", choices=["auc", "average_precision"],
                                   description="Holdout metric the gate compares.")
    floor_window = luigi.IntParameter(default=FLOOR_WINDOW, description="The floor against slow decline: the best "
                                      "of this many recent promotions, on the same rows (0: current only).")
    allow_schema_change = luigi.BoolParameter(default=False, description="Accept a breaking serving-schema change.")
    max_attempts = luigi.IntParameter(default=5, significant=False,
                                      description="Lost check-and-set races before giving up.")
    lock_timeout_s = luigi.FloatParameter(default=600.0, significant=False,
                                          description="Longest wait for another run's promotion lock.")

    def run(self):  # type: ignore[no-untyped-def]
        pointer = open_pointer()
        candidate = Artifact(self.output().store, self.candidate)
        for _ in range(self.max_attempts):
            state = pointer.read(self.model)  # a corrupt pointer fails the step: it needs an operator's --force
            gate = None
            if not is_current(state, candidate):
                gate = GateModel(candidate=self.candidate, current=state.artifact_id or "", tolerance=self.tolerance,
                                 metric=self.metric, floor=floor_models(pointer.history(self.model), self.floor_window),
                                 allow_schema_change=self.allow_schema_change)
                yield gate  # a dynamic dependency: judged against the pointer as it is now
            # One decision at a time: an overlapping run for the same slot waits here, then finds this
            # task's artifact published and records nothing twice.
            with pointer.lock(self.model, holder=current_run_id(), timeout_s=self.lock_timeout_s):
                if self.output().exists():
                    log.info("model %s: another run already decided on %s", self.model, self.candidate)
                    return
                if self._decide(pointer, candidate, state, gate):
                    return
            log.warning("model %s: the pointer moved while the candidate was judged; judging again", self.model)
        raise PointerConflict(f"model {self.model!r}: lost {self.max_attempts} check-and-set races promoting "
                              f"{self.candidate}")

    def _decide(self, pointer: ModelPointer, candidate: Artifact, state: PointerState,
                gate: GateModel | None) -> bool:
        """Under the lock: act on the verdict. False: the pointer moved, judge again."""
        if gate is None:
            self._write({"decision": "already current", "reasons": [f"{self.candidate} is already current; "
                                                                    "nothing changed, nothing recorded"]},
                        state.document)
            return True
        verdict = gate.output().read_json("verdict.json")
        outcome, written = decide(pointer, self.model, candidate, state, verdict, promoted_by=current_run_id())
        if outcome == "moved":
            return False
        self._write(verdict, written if outcome == "promote" else state.document)
        return True

    def _write(self, verdict: dict[str, Any], pointer_document: dict[str, Any] | None) -> None:
        with self.output().writer() as writer:
            writer.write_json("verdict.json", {**verdict, "model": self.model, "pointer": pointer_document})
            writer.metrics["decision"] = verdict["decision"]
