"""The scheduler: evals place allocations, block, or reschedule (``scheduler/``)."""

from __future__ import annotations

import copy
import signal
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .common import (
    ALLOC_LOST,
    ALLOC_UPDATING,
    BLOCKED_DESC,
    DATACENTER,
    LOSE_AFTER_S,
    NODE_ID,
    NODE_NAME,
    AllocRec,
    JobRec,
    TaskRun,
    alloc_terminal,
    now_ns,
    rfc3339,
    send_signal,
)


class Scheduler:
    """The scheduler (a mixin of :class:`NomadDouble`)."""

    def _start(self, target: Callable[..., None], *args: Any) -> None:
        name = f"nomad-double-{target.__name__}"
        threading.Thread(target=target, args=args, daemon=True, name=name).start()

    def _schedule(self, eval_id: str, replace: str | None, delay_s: float, place: bool) -> None:
        """Process one eval: place the job's allocs (or one replacement), or block, then start the client."""
        if delay_s and self._closing.wait(delay_s):
            return
        with self._cond:
            ev = self._evals.get(eval_id)
            rec = self._jobs.get((ev["Namespace"], ev["JobID"])) if ev else None
            if ev is None or ev["Status"] != "pending":
                return
            idx = self._bump()
            placed: list[AllocRec] = []
            if rec is None or rec.job["Stop"] or self._closing.is_set():
                self._update_eval(ev, idx, Status="complete")
            elif rec.fault == "block" or rec.job["Type"] not in ("batch", "sysbatch"):
                self._block(rec, ev, idx)
            elif replace is not None:
                previous = self._allocs[replace]
                placed.append(self._place(rec, ev, previous.alloc["TaskGroup"], previous.alloc["Name"], idx,
                                          previous))
                self._update_eval(ev, idx, Status="complete")
            else:
                if place:
                    for old in self._job_allocs((rec.job["Namespace"], rec.job["ID"])):
                        if not alloc_terminal(old.alloc):
                            self._update_alloc(old, idx, server=True, DesiredStatus="stop",
                                               DesiredDescription=ALLOC_UPDATING)
                            self._start(self._kill_alloc, old)
                    for group in rec.job["TaskGroups"]:
                        for i in range(group["Count"]):
                            name = f"{rec.job['ID']}.{group['Name']}[{i}]"
                            placed.append(self._place(rec, ev, group["Name"], name, idx, None))
                rec.queued = {g["Name"]: 0 for g in rec.job["TaskGroups"]}
                self._update_eval(ev, idx, Status="complete", QueuedAllocations=dict(rec.queued))
            if rec is not None:
                self._refresh((rec.job["Namespace"], rec.job["ID"]), idx)
            self._cond.notify_all()
        for alloc in placed:
            for run in alloc.tasks.values():
                self._start(self._run_task, alloc, run)

    def _block(self, rec: JobRec, ev: dict[str, Any], idx: int) -> None:
        """The eval completes without placing anything; a blocked eval waits for capacity."""
        batch = rec.job["Type"] in ("batch", "sysbatch")
        failed = {}
        for group in rec.job["TaskGroups"]:
            failed[group["Name"]] = {
                "NodesInPool": 0 if batch else 1, "NodesEvaluated": 0 if batch else 1,
                "NodesFiltered": 0 if batch else 1, "NodesAvailable": {DATACENTER: 0 if batch else 1},
                "ClassFiltered": None, "ConstraintFiltered": None if batch else {"missing drivers": 1},
                "NodesExhausted": 0, "ClassExhausted": None, "DimensionExhausted": None,
                "QuotaExhausted": None,
                "ResourcesExhausted": None, "Scores": None, "ScoreMetaData": None, "AllocationTime": 25000,
                "CoalescedFailures": group["Count"] - 1}
        rec.queued = {g["Name"]: g["Count"] for g in rec.job["TaskGroups"]}
        blocked = self._new_eval(rec.job, idx, "queued-allocs", Status="blocked",
                                 StatusDescription=BLOCKED_DESC, PreviousEval=ev["ID"], ClassEligibility={},
                                 EscapedComputedClass=False)
        self._update_eval(ev, idx, Status="complete", FailedTGAllocs=failed, BlockedEval=blocked["ID"],
                          QueuedAllocations=dict(rec.queued))

    def _place(self, rec: JobRec, ev: dict[str, Any], group_name: str, name: str, idx: int,
               previous: AllocRec | None) -> AllocRec:
        job = rec.job
        group = next(g for g in job["TaskGroups"] if g["Name"] == group_name)
        alloc_id, now = str(uuid.uuid4()), now_ns()
        tracker = None
        if previous is not None and previous.alloc["ClientStatus"] == "failed":
            events = list((previous.alloc.get("RescheduleTracker") or {}).get("Events") or [])
            events.append({"RescheduleTime": now, "PrevAllocID": previous.alloc["ID"], "PrevNodeID": NODE_ID,
                           "Delay": group["ReschedulePolicy"]["Delay"]})
            tracker = {"Events": events}
        alloc = {
            "ID": alloc_id, "Namespace": job["Namespace"], "EvalID": ev["ID"], "Name": name,
            "NodeID": NODE_ID, "NodeName": NODE_NAME, "JobID": job["ID"], "JobType": job["Type"],
            "JobVersion": job["Version"],
            "TaskGroup": group_name,
            "AllocatedResources": {"Tasks": {t["Name"]: {"Cpu": {"CpuShares": t["Resources"]["CPU"]},
                                                         "Memory": {"MemoryMB": t["Resources"]["MemoryMB"]}}
                                             for t in group["Tasks"]},
                                   "Shared": {"DiskMB": group["EphemeralDisk"]["SizeMB"]}},
            "Metrics": {"NodesInPool": 1, "NodesEvaluated": 1, "NodesFiltered": 0,
                        "NodesAvailable": {DATACENTER: 1}, "NodesExhausted": 0, "CoalescedFailures": 0,
                        "AllocationTime": 25000},
            "DesiredStatus": "run", "DesiredDescription": "", "DesiredTransition": {"Migrate": None,
                                                                                    "Reschedule": None},
            "ClientStatus": "pending", "ClientDescription": "", "TaskStates": None, "AllocStates": None,
            "PreviousAllocation": previous.alloc["ID"] if previous else "", "NextAllocation": "",
            "DeploymentID": "", "DeploymentStatus": None, "RescheduleTracker": tracker, "NetworkStatus": None,
            "FollowupEvalID": "", "PreemptedAllocations": None, "PreemptedByAllocation": "",
            "CreateIndex": idx, "ModifyIndex": idx, "AllocModifyIndex": idx, "CreateTime": now,
            "ModifyTime": now,
        }
        fault = rec.fault if rec.fault in ("fail", "hang") else None
        if rec.fault == "lose" and previous is None:
            fault = "lose"
        arec = AllocRec(alloc=alloc, job=copy.deepcopy(job), key=(job["Namespace"], job["ID"]),
                         root=(self._root or Path(tempfile.gettempdir())) / alloc_id, fault=fault)
        arec.tasks = {t["Name"]: TaskRun(t["Name"], t) for t in group["Tasks"]}
        self._allocs[alloc_id] = arec
        if previous is not None:
            self._update_alloc(previous, idx, server=True, NextAllocation=alloc_id)
        self._table("allocs", idx)
        return arec

    def _reschedule(self, rec: AllocRec, idx: int) -> None:
        """After an alloc failed: one follow-up eval per ReschedulePolicy (a new alloc after Delay)."""
        job_rec = self._jobs.get(rec.key)
        policy = rec.group.get("ReschedulePolicy")
        if job_rec is None or job_rec.job["Stop"] or not policy or rec.alloc["DesiredStatus"] != "run":
            return
        now = now_ns()
        events = (rec.alloc.get("RescheduleTracker") or {}).get("Events") or []
        recent = [e for e in events if policy["Unlimited"] or e["RescheduleTime"] > now - policy["Interval"]]
        if not policy["Unlimited"] and len(recent) >= policy["Attempts"]:
            return
        delay = policy["Delay"]
        if policy["DelayFunction"] == "exponential":
            delay = delay * 2 ** len(events)
        elif policy["DelayFunction"] == "fibonacci" and events:
            a, b = policy["Delay"], policy["Delay"]
            for _ in events:
                a, b = b, a + b
            delay = b
        if policy.get("MaxDelay"):
            delay = min(delay, policy["MaxDelay"])
        ev = self._new_eval(job_rec.job, idx, "alloc-failure", WaitUntil=rfc3339(now + delay),
                            StatusDescription="created for delayed rescheduling")
        self._update_alloc(rec, idx, server=True, FollowupEvalID=ev["ID"])
        self._start(self._schedule, ev["ID"], rec.alloc["ID"], delay / 1e9, False)

    def _lose(self, rec: AllocRec) -> None:
        """The node running ``rec`` goes down: the alloc is lost and the scheduler replaces it."""
        if self._closing.wait(LOSE_AFTER_S):
            return
        with self._cond:
            job_rec = self._jobs.get(rec.key)
            if rec.lost or alloc_terminal(rec.alloc) or job_rec is None:
                return
            rec.lost = True
            idx = self._bump()
            self._update_alloc(rec, idx, server=True, ClientStatus="lost", DesiredStatus="stop",
                               DesiredDescription=ALLOC_LOST)
            ev = self._new_eval(job_rec.job, idx, "node-update", NodeID=NODE_ID, NodeModifyIndex=idx)
            self._refresh(rec.key, idx)
            self._start(self._schedule, ev["ID"], rec.alloc["ID"], 0.0, False)
            self._cond.notify_all()
        for run in rec.tasks.values():
            send_signal(run.proc, signal.SIGKILL)
