"""The state store: one Raft-like index, per-table indexes, job status and summaries (nomad/state/state_store.go)."""

from __future__ import annotations

import copy
import uuid
from typing import Any

from .common import STUB_FIELDS, ZERO_TIME, AllocRec, JobRec, alloc_terminal, is_parent, now_ns


class StateStore:
    """The state store (a mixin of :class:`NomadDouble`)."""

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _table(self, name: str, idx: int) -> None:
        self._tables[name] = idx

    def _job_allocs(self, key: tuple[str, str]) -> list[AllocRec]:
        mine = (a for a in self._allocs.values() if a.key == key)
        return sorted(mine, key=lambda a: a.alloc["CreateIndex"])

    def _job_evals(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return sorted((e for e in self._evals.values() if (e["Namespace"], e["JobID"]) == key),
                      key=lambda e: e["CreateIndex"])

    def _job_status(self, key: tuple[str, str]) -> str:
        """state_store.getJobStatus."""
        job = self._jobs[key].job
        if job["Type"] == "system" or is_parent(job):
            return "dead" if job["Stop"] else "running"
        allocs = self._job_allocs(key)
        if any(not alloc_terminal(a.alloc) for a in allocs):
            return "running"
        evals = self._job_evals(key)
        if any(e["Status"] not in ("complete", "failed", "canceled") for e in evals):
            return "pending"
        return "dead" if evals or allocs else "pending"

    def _touch_summary(self, key: tuple[str, str], idx: int) -> None:
        rec = self._jobs.get(key)
        if rec is not None:
            rec.summary_index = idx
            self._table("job_summary", idx)

    def _refresh(self, key: tuple[str, str], idx: int) -> None:
        """Recompute a job's status after its allocs or evals changed (and its parent's children counts)."""
        rec = self._jobs.get(key)
        if rec is None:
            return
        self._touch_summary(key, idx)
        status = self._job_status(key)
        if status != rec.job["Status"]:
            rec.job.update(Status=status, ModifyIndex=idx)
            self._table("jobs", idx)
            if rec.job["ParentID"]:
                self._touch_summary((key[0], rec.job["ParentID"]), idx)

    def _new_eval(self, job: dict[str, Any], idx: int, triggered_by: str, **fields: Any) -> dict[str, Any]:
        now = now_ns()
        ev = {"ID": str(uuid.uuid4()), "Namespace": job["Namespace"], "Priority": job["Priority"],
              "Type": job["Type"], "TriggeredBy": triggered_by, "JobID": job["ID"],
              "JobModifyIndex": job["JobModifyIndex"], "NodeID": "", "NodeModifyIndex": 0, "DeploymentID": "",
              "Status": "pending", "StatusDescription": "", "Wait": 0, "WaitUntil": ZERO_TIME, "NextEval": "",
              "PreviousEval": "", "BlockedEval": "", "RelatedEvals": None, "FailedTGAllocs": None,
              "ClassEligibility": None, "QuotaLimitReached": "", "EscapedComputedClass": False,
              "AnnotatePlan": False, "QueuedAllocations": None, "LeaderACL": "", "SnapshotIndex": 0,
              "CreateIndex": idx, "ModifyIndex": idx, "CreateTime": now, "ModifyTime": now}
        ev.update(fields)
        self._evals[ev["ID"]] = ev
        self._table("evals", idx)
        return ev

    def _update_eval(self, ev: dict[str, Any], idx: int, **fields: Any) -> None:
        ev.update(fields, ModifyIndex=idx, ModifyTime=now_ns())
        self._table("evals", idx)

    def _update_alloc(self, rec: AllocRec, idx: int, server: bool = False, **fields: Any) -> None:
        was = rec.alloc.get("ClientStatus")
        rec.alloc.update(fields, ModifyIndex=idx, ModifyTime=now_ns())
        if server:
            rec.alloc["AllocModifyIndex"] = idx
        self._table("allocs", idx)
        self._refresh(rec.key, idx)
        if rec.alloc["ClientStatus"] in ("complete", "failed") and was != rec.alloc["ClientStatus"]:
            self._capacity_freed()

    def _summary(self, rec: JobRec) -> dict[str, Any]:
        job = rec.job
        groups = {g["Name"]: {"Queued": rec.queued.get(g["Name"], 0), "Complete": 0, "Failed": 0,
                              "Running": 0, "Starting": 0, "Lost": 0, "Unknown": 0}
                  for g in job["TaskGroups"]}
        column = {"pending": "Starting", "running": "Running", "complete": "Complete", "failed": "Failed",
                  "lost": "Lost", "unknown": "Unknown"}
        for alloc in self._job_allocs((job["Namespace"], job["ID"])):
            groups.setdefault(alloc.alloc["TaskGroup"], dict.fromkeys(column.values(), 0) | {"Queued": 0})
            groups[alloc.alloc["TaskGroup"]][column[alloc.alloc["ClientStatus"]]] += 1
        children = None
        if is_parent(job):
            children = {"Pending": 0, "Running": 0, "Dead": 0}
            for child in self._children(job["Namespace"], job["ID"]):
                children[(child.job["Status"] or "pending").capitalize()] += 1
        return {"JobID": job["ID"], "Namespace": job["Namespace"], "Summary": groups, "Children": children,
                "CreateIndex": job["CreateIndex"], "ModifyIndex": rec.summary_index}

    def _stub(self, rec: JobRec, with_meta: bool) -> dict[str, Any]:
        job = rec.job
        stub = {"ID": job["ID"], "ParentID": job["ParentID"], "Name": job["Name"],
                "Namespace": job["Namespace"], "Datacenters": job["Datacenters"],
                "Multiregion": job.get("Multiregion"), "Type": job["Type"],
                "Priority": job["Priority"], "Periodic": job.get("Periodic") is not None,
                "ParameterizedJob": job.get("ParameterizedJob") is not None and not job["Dispatched"],
                "Stop": job["Stop"], "Status": job["Status"], "StatusDescription": job["StatusDescription"],
                "JobSummary": self._summary(rec), "CreateIndex": job["CreateIndex"],
                "ModifyIndex": job["ModifyIndex"], "JobModifyIndex": job["JobModifyIndex"],
                "SubmitTime": job["SubmitTime"], "NodePool": job["NodePool"]}
        if with_meta:
            stub["Meta"] = job.get("Meta")
        return stub

    @staticmethod
    def _alloc_stub(rec: AllocRec) -> dict[str, Any]:
        return {k: copy.deepcopy(rec.alloc.get(k)) for k in STUB_FIELDS}
