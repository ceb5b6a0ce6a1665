"""Promotion: gate a candidate model, then move the pointer by check-and-set.

``PromoteModel`` judges the candidate against the model that is current *now* (a ``GateModel``
step, yielded as a dynamic dependency), and writes the pointer with a check-and-set on the version
it judged against. If another promotion won the race meanwhile, luigi runs it again: it reads the
new pointer, judges again, and only then writes. A rejection leaves the pointer alone, is recorded
in the model's history with its reasons, and the task still succeeds with a verdict artifact.
"""

from __future__ import annotations

import logging
from typing import Any

import luigi

from .artifacts import Artifact, ArtifactTask, current_run_id
from .errors import PointerConflict
from .registry import open_pointer
from .registry.base import new_change_id, utc_now
from .tasks import NomadJobTask

log = logging.getLogger("caravan.promotion")


class GateModel(NomadJobTask):
    """The gate's verdict on one candidate against one current model (``jobs/gate_model.py``)."""

    job = "gate-model"
    path_params = ("tolerance", "metric")
    candidate = luigi.Parameter(description="Artifact id of the candidate model (a training artifact).")
    current = luigi.Parameter(default="", description="Artifact id of the current model ('' if none).")
    tolerance = luigi.FloatParameter(default=0.01, description="How much worse than current the candidate may be.")
    metric = luigi.ChoiceParameter(default="auc", choices=["auc", "average_precision"],
                                   description="Holdout metric the gate compares.")


class PromoteModel(ArtifactTask):
    """Make ``candidate`` the current model of ``model`` if the gate passes; record the verdict either way."""

    path_params = ("model", "tolerance")
    model = luigi.Parameter(default="ranker", description="Model name: the pointer is caravan/models/<model>/current.")
    candidate = luigi.Parameter(description="Artifact id of the candidate model.")
    tolerance = luigi.FloatParameter(default=0.01, description="How much worse than current the candidate may be.")
    metric = luigi.ChoiceParameter(default="auc", choices=["auc", "average_precision"],
                                   description="Holdout metric the gate compares.")
    max_attempts = luigi.IntParameter(default=5, significant=False,
                                      description="Lost check-and-set races before giving up.")
    lock_timeout_s = luigi.FloatParameter(default=600.0, significant=False,
                                          description="Longest wait for another run's promotion lock.")

    def run(self):  # type: ignore[no-untyped-def]
        pointer = open_pointer()
        for _ in range(self.max_attempts):
            state = pointer.read(self.model)
            gate = None
            if state.artifact_id != self.candidate:
                gate = GateModel(candidate=self.candidate, current=state.artifact_id or "", tolerance=self.tolerance,
                                 metric=self.metric)
                yield gate  # a dynamic dependency: judged against the pointer as it is now
            # One decision at a time: an overlapping run for the same slot waits here, then finds this
            # task's artifact published and records nothing twice.
            with pointer.lock(self.model, holder=current_run_id(), timeout_s=self.lock_timeout_s):
                if self.output().exists():
                    log.info("model %s: another run already decided on %s", self.model, self.candidate)
                    return
                if self._decide(pointer, state, gate):
                    return
            log.warning("model %s: the pointer moved while the candidate was judged; judging again", self.model)
        raise PointerConflict(f"model {self.model!r}: lost {self.max_attempts} check-and-set races promoting "
                              f"{self.candidate}")

    def _decide(self, pointer: Any, state: Any, gate: GateModel | None) -> bool:
        """Under the lock: record a rejection, or check-and-set the pointer. False: it moved, judge again."""
        if gate is None:
            self._write({"decision": "already current", "reasons": [f"{self.candidate} is already current"]},
                        state.document)
            return True
        verdict = gate.output().read_json("verdict.json")
        if verdict["decision"] != "promote":
            entry = {"action": "reject", "artifact_id": self.candidate, "reasons": verdict["reasons"],
                     "current_artifact_id": state.artifact_id, "promoted_by": current_run_id(),
                     "promoted_at": utc_now(), "change_id": new_change_id()}
            pointer.record(self.model, entry)
            log.warning("model %s: candidate %s rejected: %s", self.model, self.candidate,
                        "; ".join(verdict["reasons"]))
            self._write(verdict, state.document)
            return True
        candidate = Artifact(self.output().store, self.candidate)
        document = {"artifact_uri": candidate.uri, "artifact_id": candidate.id, "action": "promote",
                    "metrics": {**candidate.metrics, "gate_" + self.metric: verdict.get("candidate_score")},
                    "promoted_by": current_run_id(), "reason": "; ".join(verdict["reasons"])}
        if pointer.set_if(self.model, document, state) is None:
            return False
        log.info("model %s now serves %s", self.model, candidate.id)
        self._write(verdict, document)
        return True

    def _write(self, verdict: dict[str, Any], pointer_document: dict[str, Any] | None) -> None:
        with self.output().writer() as writer:
            writer.write_json("verdict.json", {**verdict, "model": self.model, "pointer": pointer_document})
            writer.metrics["decision"] = verdict["decision"]
