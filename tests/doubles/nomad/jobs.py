"""Registering, dispatching, forcing and stopping jobs, as ``nomad/job_endpoint.go`` does."""

from __future__ import annotations

import base64
import copy
import time
import uuid
from typing import Any

from .admission import admit
from .common import (
    ALLOC_NOT_NEEDED,
    MAX_PAYLOAD,
    HTTPError,
    JobRec,
    Reply,
    Request,
    b64decode,
    go_type,
    is_parent,
    job_spec,
    now_ns,
)
from .hcl import canonicalize, multierror, validate_job

IDEMPOTENCY_VERSIONS = ("1.11.2", "1.11.1")  # how the FSM treats a duplicate token (see _dispatch)


class JobEndpoint:
    """The job endpoint (a mixin of :class:`NomadDouble`)."""

    def _register(self, job: dict[str, Any], namespace: str,
                  enforce_index: int | None = None) -> dict[str, Any]:
        admit(canonicalize(job))  # the stored form: server-side defaults (admission.py)
        job["Namespace"] = namespace
        problems = validate_job(job)
        if problems:
            raise HTTPError(500, multierror(problems))
        key = (namespace, job["ID"])
        with self._cond:
            old = self._jobs.get(key)
            if enforce_index is not None:
                current = old.job["JobModifyIndex"] if old else 0
                if enforce_index == 0 and old is not None:
                    raise HTTPError(500, "Enforcing job modify index 0: job already exists")
                if enforce_index != current:
                    raise HTTPError(500, f"Enforcing job modify index {enforce_index}: job exists with "
                                         f"conflicting job modify index: {current}")
            if old is not None:
                for field_name, what in (("ParameterizedJob", "parameterized"), ("Periodic", "periodic")):
                    was, now = old.job.get(field_name) is not None, job.get(field_name) is not None
                    if was != now:
                        raise HTTPError(500, f"cannot update {'non-' if not was else ''}{what} job to being "
                                             f"{'non-' if was else ''}{what}")
            idx = self._bump()
            changed = old is None or job_spec(old.job) != job_spec(job)
            version = 0 if old is None else old.job["Version"] + (1 if changed else 0)
            job.update(Version=version, SubmitTime=now_ns(), ModifyIndex=idx, JobModifyIndex=idx,
                       CreateIndex=old.job["CreateIndex"] if old else idx,
                       Status="running" if is_parent(job) else "pending")
            if old is None:
                rec = JobRec(job=job, summary_index=idx)
                self._jobs[key] = rec
            else:
                rec, rec.job = old, job
            self._table("jobs", idx)
            self._touch_summary(key, idx)
            reply = {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": idx, "Warnings": "", "Index": idx,
                     "KnownLeader": False, "LastContact": 0}
            if not is_parent(job):
                rec.fault = self._take_fault(job["ID"])
                ev = self._new_eval(job, idx, "job-register")
                reply.update(EvalID=ev["ID"], EvalCreateIndex=idx)
                self._start(self._schedule, ev["ID"], None, 0.0, changed)
            self._refresh(key, idx)
            self._cond.notify_all()
        return reply

    def _dispatch(self, req: Request, namespace: str, job_id: str) -> Reply:
        body: dict[str, Any] = {}
        try:
            decoded = self._decode(req)
            body = decoded if isinstance(decoded, dict) else {}
        finally:
            self.dispatch_requests.append({"job_id": job_id, "query": dict(req.query), "body": body})
        fields = {k.lower(): v for k, v in body.items()}
        meta = fields.get("meta") or {}
        if not isinstance(meta, dict) or any(not isinstance(v, str | None) for v in meta.values()):
            bad = meta if not isinstance(meta, dict) else next(v for v in meta.values()
                                                                if not isinstance(v, str))
            target = "Meta of type map[string]string" if not isinstance(meta, dict) else "Meta of type string"
            raise HTTPError(400, f"json: cannot unmarshal {go_type(bad)} into Go struct field "
                                 f"JobDispatchRequest.{target}")
        meta = {k: v or "" for k, v in meta.items()}
        if fields.get("jobid") and fields["jobid"] != job_id:
            raise HTTPError(400, "Job ID does not match")
        raw_payload = fields.get("payload")
        payload = b64decode(raw_payload) if isinstance(raw_payload, str) else b""
        # command/agent/http.go parseIdempotencyToken: a non-empty ?idempotency_token= wins; otherwise the body's
        # WriteRequest.IdempotencyToken, which encoding/json matches case-insensitively ("idempotencytoken").
        # python-nomad's own argument sends "idempotency_token" in the body: no field has that name, so Nomad
        # (and this double) ignore it.
        token = req.query.get("idempotency_token") or fields.get("idempotencytoken") or ""
        prefix = fields.get("idprefixtemplate") or ""
        priority = fields.get("priority") or 0
        with self._cond:
            rec = self._jobs.get((namespace, job_id))
            parent = rec.job if rec else None
            if parent is None:
                raise HTTPError(500, "parameterized job not found")
            params = parent.get("ParameterizedJob")
            if params is None or parent.get("Dispatched"):
                raise HTTPError(500, f'Specified job "{job_id}" is not a parameterized job')
            if parent["Stop"]:
                raise HTTPError(500, f'Specified job "{job_id}" is stopped')
            if params["Payload"] == "required" and not payload:
                raise HTTPError(500, "Payload is not provided but required by parameterized job")
            if params["Payload"] == "forbidden" and payload:
                raise HTTPError(500, "Payload provided but forbidden by parameterized job")
            if len(payload) > MAX_PAYLOAD:
                raise HTTPError(500, f"Payload exceeds maximum size; {len(payload)} > {MAX_PAYLOAD}")
            allowed = set(params.get("MetaRequired") or []) | set(params.get("MetaOptional") or [])
            unpermitted = sorted(set(meta) - allowed)
            if unpermitted:
                raise HTTPError(500, "Dispatch request included unpermitted metadata keys: "
                                     f"[{' '.join(unpermitted)}]")
            missing = [k for k in params.get("MetaRequired") or [] if k not in meta]
            if missing:
                raise HTTPError(500, f"Dispatch did not provide required meta keys: [{' '.join(missing)}]")
            if not isinstance(priority, int) or (priority != 0 and not 1 <= priority <= 100):
                raise HTTPError(500, "dispatch job priority must be between [1, 100]")
            if token:
                for child in self._children(namespace, job_id):
                    if child.job["DispatchIdempotencyToken"] == token:
                        return Reply({"DispatchedJobID": child.job["ID"], "EvalID": "", "EvalCreateIndex": 0,
                                      "JobCreateIndex": child.job["CreateIndex"],
                                      "Index": child.job["ModifyIndex"]}, index=child.job["ModifyIndex"],
                                     read=False)
            infix = f"{prefix}-" if prefix else ""
            child_id = f"{job_id}/dispatch-{infix}{int(time.time())}-{uuid.uuid4().hex[:8]}"
            child = copy.deepcopy(parent)
            child.update(ID=child_id, Name=child_id, ParentID=job_id, Dispatched=True, Status="",
                         DispatchIdempotencyToken=token, Meta={**(parent.get("Meta") or {}), **meta},
                         Payload=base64.b64encode(payload).decode() if payload else None,
                         Priority=priority or parent["Priority"])
            if self.dispatch_race_window_s <= 0:
                # No window: the apply lands before any other dispatch is checked (an idle leader), so two
                # dispatches of one token never both pass the check, however the caller's threads interleave.
                return self._apply_dispatch(req, namespace, job_id, token, child)
        # The check above ran on a snapshot; the Raft apply comes later (nomad/job_endpoint.go Dispatch), so
        # two dispatches of one token inside this window both pass it.
        if self._closing.wait(self.dispatch_race_window_s):
            raise HTTPError(500, "rpc error: server is shutting down")
        with self._cond:
            return self._apply_dispatch(req, namespace, job_id, token, child)

    def _apply_dispatch(self, req: Request, namespace: str, job_id: str, token: str,
                        child: dict[str, Any]) -> Reply:
        """The Raft apply of a dispatch whose checks passed (called holding the lock)."""
        if token and self.dispatch_idempotency != "1.11.1" and any(
                c.job["DispatchIdempotencyToken"] == token for c in self._children(namespace, job_id)):
            # 1.11.2 nomad/fsm.go applyUpsertJob: the FSM finds the token and silently drops the apply
            # (job and eval), yet the endpoint answers with the ids it made up, which never exist.
            idx = self._bump()
            self.stats["duplicate_dispatches_dropped"] += 1
            ev_id = "" if is_parent(child) else str(uuid.uuid4())
        else:
            ev_id, idx = self._launch(child, "job-register")
            self.stats["dispatches"] += 1
            req.ambiguous = self._leader_event("dispatch")
        return Reply({"DispatchedJobID": child["ID"], "EvalID": ev_id, "EvalCreateIndex": idx if ev_id else 0,
                      "JobCreateIndex": idx, "Index": idx}, index=idx, read=False)

    def _children(self, namespace: str, parent_id: str) -> list[JobRec]:
        return [rec for (ns, job_id), rec in sorted(self._jobs.items())
                if ns == namespace and rec.job["ParentID"] == parent_id]

    def _launch(self, child: dict[str, Any], triggered_by: str) -> tuple[str, int]:
        """Store a child job and, unless it is itself periodic, its eval; schedule it: (eval id, index)."""
        idx = self._bump()
        key = (child["Namespace"], child["ID"])
        child.update(Version=0, Stop=False, SubmitTime=now_ns(), CreateIndex=idx, ModifyIndex=idx,
                     JobModifyIndex=idx, Status="running" if is_parent(child) else "pending")
        self._jobs[key] = JobRec(job=child, summary_index=idx, fault=self._take_fault(child["ParentID"]))
        self._table("jobs", idx)
        self._touch_summary(key, idx)
        self._touch_summary((key[0], child["ParentID"]), idx)
        ev_id = ""
        if not is_parent(child):
            ev_id = self._new_eval(child, idx, triggered_by)["ID"]
            self._start(self._schedule, ev_id, None, 0.0, True)
        self._cond.notify_all()
        return ev_id, idx

    def _force_periodic(self, req: Request, namespace: str, job_id: str) -> Reply:
        with self._cond:
            rec = self._jobs.get((namespace, job_id))
            if rec is None:
                raise HTTPError(500, "job not found")
            job = rec.job
            if job.get("Periodic") is None:
                raise HTTPError(500, "can't force launch non-periodic job")
            if job["Stop"] or not job["Periodic"]["Enabled"] or job.get("ParameterizedJob") is not None:
                raise HTTPError(500, "periodic job is not enabled")
            launch = int(time.time())
            while (namespace, f"{job_id}/periodic-{launch}") in self._jobs:
                launch += 1
            child = copy.deepcopy(job)
            child_id = f"{job_id}/periodic-{launch}"
            child.update(ID=child_id, Name=child_id, ParentID=job_id, Periodic=None, Status="")
            ev_id, idx = self._launch(child, "periodic-job")
        return Reply({"EvalID": ev_id, "EvalCreateIndex": idx, "Index": idx}, index=idx, read=False)

    def _deregister(self, namespace: str, job_id: str, purge: bool) -> Reply:
        with self._cond:
            key = (namespace, job_id)
            rec = self._jobs.get(key)
            if rec is None:
                return Reply({"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "Index": 0}, index=0,
                             read=False)
            idx = self._bump()
            rec.job.update(Stop=True, ModifyIndex=idx, JobModifyIndex=idx)
            self._table("jobs", idx)
            ev = None if is_parent(rec.job) else self._new_eval(rec.job, idx, "job-deregister")
            done = self._bump()  # the scheduler processes the deregister eval: every alloc is told to stop
            doomed = []
            for alloc in self._job_allocs(key):
                if alloc.alloc["DesiredStatus"] == "run":
                    self._update_alloc(alloc, done, server=True, DesiredStatus="stop",
                                       DesiredDescription=ALLOC_NOT_NEEDED)
                    doomed.append(alloc)
            for other in self._job_evals(key):
                if other["Status"] == "blocked":
                    self._update_eval(other, done, Status="canceled",
                                      StatusDescription="canceled after more recent eval was processed")
            if ev is not None:
                self._update_eval(ev, done, Status="complete")
            rec.queued = dict.fromkeys(rec.queued, 0)
            self._refresh(key, done)
            if purge:
                del self._jobs[key]
                self._table("jobs", done)
                if rec.job["ParentID"]:
                    self._touch_summary((namespace, rec.job["ParentID"]), done)
            for alloc in doomed:
                self._start(self._kill_alloc, alloc)
            self._cond.notify_all()
        return Reply({"EvalID": ev["ID"] if ev else "", "EvalCreateIndex": idx if ev else 0,
                      "JobModifyIndex": idx, "Index": idx}, index=idx, read=False)
