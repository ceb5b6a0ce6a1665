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
    AllocRec,
    JobRec,
    TaskRun,
    alloc_terminal,
    now_ns,
    rfc3339,
    send_signal,
)
from .nodes import Choice, new_metric, select_node
from .ports import assign_ports, ports_of


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
                self._block(rec, ev, idx, _unplaceable(rec.job), [])
            else:
                wants: list[Want] = []
                if replace is not None:
                    previous = self._allocs[replace]
                    wants = [(previous.alloc["TaskGroup"], previous.alloc["Name"], replace)]
                elif place:
                    for old in self._job_allocs((rec.job["Namespace"], rec.job["ID"])):
                        if not alloc_terminal(old.alloc):
                            self._update_alloc(old, idx, server=True, DesiredStatus="stop",
                                               DesiredDescription=ALLOC_UPDATING)
                            self._start(self._kill_alloc, old)
                    wants = [(g["Name"], f"{rec.job['ID']}.{g['Name']}[{i}]", None)
                             for g in rec.job["TaskGroups"] for i in range(g["Count"])]
                placed, failed, left = self._place_all(rec, ev, wants, idx)
                if failed:
                    self._block(rec, ev, idx, failed, left)
                else:
                    rec.queued = {g["Name"]: 0 for g in rec.job["TaskGroups"]}
                    self._update_eval(ev, idx, Status="complete", QueuedAllocations=dict(rec.queued))
            if rec is not None:
                self._refresh((rec.job["Namespace"], rec.job["ID"]), idx)
            self._cond.notify_all()
        self._start_tasks(placed)

    def _start_tasks(self, placed: list[AllocRec]) -> None:
        for alloc in placed:
            for run in alloc.tasks.values():
                self._start(self._run_task, alloc, run)

    def _place_all(self, rec: JobRec, ev: dict[str, Any], wants: list[Want],
                   idx: int) -> tuple[list[AllocRec], dict[str, dict[str, Any]], list[Want]]:
        """Place what ``wants`` lists: (placed, FailedTGAllocs by group, what is left to place).

        As ``scheduler/generic_sched.go`` computePlacements: once a group fails, its further allocations
        only add to ``CoalescedFailures``."""
        placed: list[AllocRec] = []
        failed: dict[str, dict[str, Any]] = {}
        left: list[Want] = []
        for group_name, name, previous_id in wants:
            if group_name in failed:
                failed[group_name]["CoalescedFailures"] += 1
                left.append((group_name, name, previous_id))
                continue
            group = next(g for g in rec.job["TaskGroups"] if g["Name"] == group_name)
            choice = select_node(rec.job, group, self._nodes, list(self._allocs.values()))
            if choice.node is None:
                failed[group_name] = choice.metric
                left.append((group_name, name, previous_id))
                continue
            previous = self._allocs.get(previous_id) if previous_id else None
            placed.append(self._place(rec, ev, group_name, name, idx, previous, choice))
        return placed, failed, left

    def _block(self, rec: JobRec, ev: dict[str, Any], idx: int, failed: dict[str, dict[str, Any]],
               left: list[Want]) -> None:
        """The eval completes without placing everything; a blocked eval waits for capacity.

        ``scheduler/generic_sched.go``: the eval keeps its ``FailedTGAllocs`` and names the blocked eval
        (``BlockedEval``); ``nomad/blocked_evals.go`` re-runs that eval when capacity frees (see
        :meth:`_capacity_freed`). Only what ``left`` lists is placed then; an eval with nothing recorded there
        (the ``block`` fault, service jobs on this batch-only client) stays blocked."""
        queued = {g["Name"]: 0 for g in rec.job["TaskGroups"]}
        for group_name, _, _ in left:
            queued[group_name] += 1
        if not left:
            queued = {g["Name"]: g["Count"] for g in rec.job["TaskGroups"]}
        rec.queued = queued
        blocked = self._new_eval(rec.job, idx, "queued-allocs", Status="blocked",
                                 StatusDescription=BLOCKED_DESC, PreviousEval=ev["ID"], ClassEligibility={},
                                 EscapedComputedClass=False)
        if left:
            self._wanted[blocked["ID"]] = left
        self._update_eval(ev, idx, Status="complete", FailedTGAllocs=failed, BlockedEval=blocked["ID"],
                          QueuedAllocations=dict(rec.queued))

    def _capacity_freed(self) -> None:
        """An allocation finished: re-run the blocked evals (``nomad/fsm.go`` applyAllocClientUpdate calls
        ``blockedEvals.UnblockClassAndQuota`` when a client reports an alloc complete or failed). The lock
        is held; one thread re-runs them all, in the broker's order (priority, then age)."""
        if self._unblock_queued or not self._wanted:
            return
        self._unblock_queued = True
        self._start(self._unblock)

    def _unblock(self) -> None:
        placed: list[AllocRec] = []
        with self._cond:
            self._unblock_queued = False
            blocked = sorted((self._evals[i] for i in self._wanted if i in self._evals),
                             key=lambda e: (-e["Priority"], e["CreateIndex"]))
            for ev in blocked:
                key = (ev["Namespace"], ev["JobID"])
                rec = self._jobs.get(key)
                if ev["Status"] != "blocked" or rec is None or rec.job["Stop"] or self._closing.is_set():
                    self._wanted.pop(ev["ID"], None)
                    continue
                idx = self._bump()
                now_placed, _, left = self._place_all(rec, ev, self._wanted[ev["ID"]], idx)
                placed.extend(now_placed)
                rec.queued = {g["Name"]: sum(1 for w in left if w[0] == g["Name"]) for g in rec.job["TaskGroups"]}
                if left:  # ReblockEval: the same eval stays blocked
                    self._wanted[ev["ID"]] = left
                    self._update_eval(ev, idx, QueuedAllocations=dict(rec.queued))
                else:
                    del self._wanted[ev["ID"]]
                    self._update_eval(ev, idx, Status="complete", QueuedAllocations=dict(rec.queued))
                self._refresh(key, idx)
            self._cond.notify_all()
        self._start_tasks(placed)

    def _place(self, rec: JobRec, ev: dict[str, Any], group_name: str, name: str, idx: int,
               previous: AllocRec | None, choice: Choice) -> AllocRec:
        job = rec.job
        node = choice.node or self._nodes[0]
        group = next(g for g in job["TaskGroups"] if g["Name"] == group_name)
        alloc_id, now = str(uuid.uuid4()), now_ns()
        held = (p["Value"] for a in self._allocs.values() if a.alloc["NodeID"] == node["ID"]
                and not alloc_terminal(a.alloc) for p in ports_of(a.alloc))
        ports, networks = assign_ports(group, held)  # ports.py
        tracker = None
        if previous is not None and previous.alloc["ClientStatus"] == "failed":
            events = list((previous.alloc.get("RescheduleTracker") or {}).get("Events") or [])
            events.append({"RescheduleTime": now, "PrevAllocID": previous.alloc["ID"],
                           "PrevNodeID": previous.alloc["NodeID"], "Delay": group["ReschedulePolicy"]["Delay"]})
            tracker = {"Events": events}
        alloc = {
            "ID": alloc_id, "Namespace": job["Namespace"], "EvalID": ev["ID"], "Name": name,
            "NodeID": node["ID"], "NodeName": node["Name"], "JobID": job["ID"], "JobType": job["Type"],
            "JobVersion": job["Version"],
            "TaskGroup": group_name,
            "AllocatedResources": {"Tasks": {t["Name"]: {"Cpu": {"CpuShares": t["Resources"]["CPU"]},
                                                         "Memory": {"MemoryMB": t["Resources"]["MemoryMB"]}}
                                             for t in group["Tasks"]},
                                   "Shared": {"DiskMB": group["EphemeralDisk"]["SizeMB"], "Ports": ports or None,
                                              "Networks": networks or None}},
            "Metrics": choice.metric,
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
                        root=(self._root or Path(tempfile.gettempdir())) / alloc_id, fault=fault, node=node)
        arec.tasks = {t["Name"]: TaskRun(t["Name"], t) for t in group["Tasks"]}
        self._allocs[alloc_id] = arec
        if previous is not None:
            self._update_alloc(previous, idx, server=True, NextAllocation=alloc_id)
        self._table("allocs", idx)
        self._leader_event("placement")
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
            ev = self._new_eval(job_rec.job, idx, "node-update", NodeID=rec.alloc["NodeID"], NodeModifyIndex=idx)
            self._refresh(rec.key, idx)
            self._start(self._schedule, ev["ID"], rec.alloc["ID"], 0.0, False)
            self._cond.notify_all()
        for run in rec.tasks.values():
            send_signal(run.proc, signal.SIGKILL)


Want = tuple[str, str, str | None]  # (task group, alloc name, the alloc it replaces)


def _unplaceable(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """FailedTGAllocs for the ``block`` fault (nothing evaluated) and for service/system jobs, which this
    batch-only client filters as ``missing drivers`` (``scheduler/feasible/feasible.go`` DriverChecker)."""
    batch = job["Type"] in ("batch", "sysbatch")
    failed = {}
    for group in job["TaskGroups"]:
        metric = new_metric()
        metric.update(NodesInPool=0 if batch else 1, NodesEvaluated=0 if batch else 1,
                      NodesFiltered=0 if batch else 1, NodesAvailable={DATACENTER: 0 if batch else 1},
                      ConstraintFiltered=None if batch else {"missing drivers": 1},
                      CoalescedFailures=group["Count"] - 1)
        failed[group["Name"]] = metric
    return failed
