"""An in-process Nomad agent (one server, one client node) that the real ``python-nomad`` drives unchanged.

It answers the part of the HTTP API that a client of parameterized batch jobs uses, as read in
``command/agent/*_endpoint.go``, ``nomad/job_endpoint.go`` and ``nomad/structs`` (see
``NOMAD_CONSUL_VAULT_API.md``), and it really runs every placed task's ``command``/``args`` as a
subprocess, whatever the driver, so that pipelines run end to end through HTTP:

* jobs: list (``prefix``, ``namespace``, ``meta``), register (``POST /v1/jobs``, ``/v1/job/:id``), read,
  ``/summary`` (``Children`` for parents), ``/allocations`` (``all``), ``/evaluations``, stop and purge
  (``DELETE``), ``/dispatch`` (N1's validation order and 500 texts, ``?idempotency_token=``),
  ``/periodic/force``; ``POST /v1/jobs/parse`` through the same HCL conversion as :meth:`load_hcl`.
* allocations, evaluations, ``/v1/client/fs/logs/:alloc`` (plain or framed, ``origin``,
  ``offset``, ``follow``), ``/v1/status/leader``.
* one Raft-like index for every write; ``X-Nomad-Index``/``KnownLeader``/``LastContact`` headers;
  blocking queries (``index``/``wait``, clamped to 300 s, ``wait/16`` jitter) on a condition variable.
* a client that honours restart and reschedule policies, writes ``alloc/logs/<task>.std{out,err}.0``,
  and kills with SIGTERM then SIGKILL after the kill timeout.
* job ids with ``/`` work raw and ``%2F``-escaped; errors are ``text/plain``; a wrong method is 405.

The node runs batch and sysbatch work only: service and system jobs stay unplaced (a blocked eval with
"missing drivers"), so a registered serving spec never starts a server. Faults (:meth:`NomadDouble.inject`)
stage what a real cluster does on a bad day.

Templates and Vault, as a client with Vault (and Consul) integration does it (N8, V3). Given ``vault_addr``
and ``vault_token`` (the token the client would derive from the task's workload identity) or
``consul_addr``, the client renders every task's ``Templates`` before the first start (``nomad_template``:
``with secret``, ``.Data.data.x``, ``env``, ``key``, ``keyOrDefault``, ``keyExists``, ``index``; anything else
fails the task with a message naming it). Secrets are read with hvac and Consul keys with py-consul, the real
clients. Each template is written to its ``DestPath`` under the task directory (``local/``, ``secrets/``,
``alloc/``) with its ``Perms``; ``Envvars`` files are read back as the task's environment (over the spec's
``env``, under the runtime ``NOMAD_*`` variables). A task with a ``vault`` block also gets ``VAULT_TOKEN`` and
``secrets/vault_token`` unless its block says ``env = false`` / ``disable_file = true``. Data that is not
there (a missing secret or key, a 403, an unreachable server) gives a ``Template`` event "Missing:
vault.read(path)"; after a short bounded retry (Nomad keeps retrying) the task is failed with a ``Killing``
event "Template failed: ..." and never runs. So is a template using ``secret`` in a task without a ``vault``
block, a missing field under ``error_on_missing_key`` (without it the field renders ``<no value>``), and a
template the renderer does not support. Rendered values exist only in the task directory: events and
messages name paths and keys, never values. Templates render once: a secret that changes later does not
re-render or restart the task. Without ``vault_addr`` or ``consul_addr`` (or with
``render_templates=False``) nothing is rendered, so the project's specs run secret-free steps on a client
that has no Vault, as the executor contract needs.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections import defaultdict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .nomad_hcl import (
    JobSpecError,
    canonicalize,
    format_duration,
    hcl_to_job,
    multierror,
    parse_duration_ns,
    validate_job,
    var_file_values,
)
from .nomad_template import (
    EnvParseError,
    MissingDependency,
    SourceError,
    Sources,
    TemplateError,
    parse_env,
    render,
)
from .nomad_template import (
    parse as parse_template,
)

REGION, DATACENTER = "global", "dc1"
NODE_ID, NODE_NAME = "f2c4e1d0-7b3a-4c55-9e7f-0d1b2a3c4d5e", "nomad-double"
LEADER = "127.0.0.1:4647"
FIRST_INDEX = 10  # a fresh agent has applied a few raft entries before the first job
MAX_BLOCKING_S = 300.0  # MaxBlockingRPCQueryTime: waits are clamped to it, and it is the default
MAX_PAYLOAD = 16384
MAX_EVENTS = 10
LOG_FRAME = 64 * 1024
LOSE_AFTER_S = 0.2  # how long a doomed allocation runs before its node "goes down"
ZERO_TIME = "0001-01-01T00:00:00Z"
FAULTS = ("fail", "hang", "lose", "block")
TEMPLATE_ATTEMPTS = 4  # renders before a template that waits on data fails its task (Nomad retries far longer)
TEMPLATE_BACKOFF_S = 0.1  # doubled after each failed render
SERVICE_TIMEOUT_S = 5.0  # one Vault or Consul request from the template renderer
JOB_SUFFIXES = ("/periodic/force", "/allocations", "/evaluations", "/summary", "/dispatch", "/versions",
                "/deployments", "/deployment", "/plan", "/evaluate", "/revert", "/stable", "/scale",
                "/services", "/submission")
ALLOC_LOST = "alloc is lost since its node is down"
ALLOC_NOT_NEEDED = "alloc not needed due to job update"
ALLOC_UPDATING = "alloc is being updated due to job update"
BLOCKED_DESC = "created to place remaining allocations"
_STUB_FIELDS = ("ID", "EvalID", "Name", "Namespace", "NodeID", "NodeName", "JobID", "JobType", "JobVersion",
                "TaskGroup", "AllocatedResources", "DesiredStatus", "DesiredDescription", "ClientStatus",
                "ClientDescription", "DesiredTransition", "TaskStates", "DeploymentStatus", "FollowupEvalID",
                "NextAllocation", "RescheduleTracker", "PreemptedAllocations", "PreemptedByAllocation",
                "CreateIndex", "ModifyIndex", "CreateTime", "ModifyTime")
_RUNTIME_FIELDS = ("Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex",
                   "ModifyIndex", "JobModifyIndex")
_GO_TRUE, _GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")
_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")
_RUNTIME_REF = re.compile(r"\$\{([^{}]+)\}")


def _now_ns() -> int:
    return time.time_ns()


def _rfc3339(ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".") + "Z"


def _go_json(obj: Any, pretty: bool = False) -> bytes:
    """JSON as Go's encoding/json writes it (compact, with <, > and & escaped)."""
    text = json.dumps(obj, ensure_ascii=False, indent=4 if pretty else None,
                      separators=(",", ": ") if pretty else (",", ":"))
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.encode()


def _parse_bool(value: str, name: str) -> bool:
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    raise HTTPError(400, f'Failed to parse value of "{name}" ({value}): strconv.ParseBool: parsing '
                         f'"{value}": invalid syntax')


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {str: "string", int: "number", float: "number", list: "array", dict: "object"}.get(type(value),
                                                                                            "value")


def _b64decode(text: str) -> bytes:
    """Standard padded base64 as Go's encoding/json reads ``[]byte``; Go's message when it is not."""
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")
    for pos, char in enumerate(text):
        if char not in alphabet and not (char == "=" and pos >= len(text) - 2):
            raise HTTPError(400, f"illegal base64 data at input byte {pos}")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        raise HTTPError(400, f"illegal base64 data at input byte {len(text) - len(text) % 4 or len(text)}") \
            from None


def _alloc_terminal(alloc: dict[str, Any]) -> bool:
    server_says = alloc["DesiredStatus"] in ("stop", "evict")
    return server_says or alloc["ClientStatus"] in ("complete", "failed", "lost")


def _is_parent(job: dict[str, Any]) -> bool:
    """IsParameterized() or IsPeriodic(): jobs that only launch children."""
    parameterized = job.get("ParameterizedJob") is not None and not job.get("Dispatched")
    return parameterized or job.get("Periodic") is not None


class HTTPError(Exception):
    """An error answer: status and text/plain reason (and the index to report, on reads)."""

    def __init__(self, status: int, reason: str, index: int | None = None) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.index = status, reason, index


@dataclass
class Reply:
    """A success answer: a JSON body (or raw bytes, or a stream) and the index headers."""

    body: Any = None
    index: int | None = None
    read: bool = True
    raw: bytes | None = None
    content_type: str = "application/json"
    stream: Callable[[Callable[[bytes], None]], None] | None = None


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes


@dataclass
class _JobRec:
    job: dict[str, Any]
    summary_index: int
    queued: dict[str, int] = field(default_factory=dict)
    fault: str | None = None


@dataclass
class _TaskRun:
    name: str
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    template_env: dict[str, str] = field(default_factory=dict)


@dataclass
class _AllocRec:
    alloc: dict[str, Any]
    job: dict[str, Any]
    key: tuple[str, str]
    root: Path
    fault: str | None
    tasks: dict[str, _TaskRun] = field(default_factory=dict)
    kill: threading.Event = field(default_factory=threading.Event)
    lost: bool = False

    @property
    def group(self) -> dict[str, Any]:
        return next(g for g in self.job["TaskGroups"] if g["Name"] == self.alloc["TaskGroup"])


class NomadDouble:
    """A Nomad agent on a loopback port, with an in-memory state store and a client that runs tasks."""

    def __init__(self, *, env: dict[str, str] | None = None, python: str = sys.executable,
                 acl_token: str | None = None, kill_timeout_s: float = 5.0, vault_addr: str | None = None,
                 vault_token: str | None = None, consul_addr: str | None = None,
                 consul_token: str | None = None, render_templates: bool | None = None,
                 inherit_env: bool = True) -> None:
        """``vault_addr``/``vault_token``: the client's Vault and the token it hands every task with a ``vault``
        block; ``consul_addr``/``consul_token``: the client's Consul. ``render_templates`` defaults to whether
        either is given. ``inherit_env``: tasks start from this process's environment (convenient for tests
        that configure steps through it); False gives them only ``PATH``/locale, ``env`` and what Nomad sets,
        as a Docker task gets, so nothing reaches a step but its spec, its templates and ``env``."""
        self.env = dict(env or {})
        self.inherit_env = inherit_env
        self.python = python
        self.acl_token = acl_token
        self.kill_timeout_s = kill_timeout_s
        self.vault_addr = vault_addr
        self.vault_token = vault_token
        self.consul_addr = consul_addr
        self.consul_token = consul_token
        if render_templates is None:
            render_templates = vault_addr is not None or consul_addr is not None
        self.render_templates = render_templates
        self.address = ""
        self.dispatch_requests: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        # Test-only: called with (method, path, status, body bytes) for every response body (and stream chunk).
        self.response_hook: Callable[[str, str, int, bytes], None] | None = None
        self.processes_started = 0
        self._cond = threading.Condition(threading.RLock())
        self._index = FIRST_INDEX
        self._tables: dict[str, int] = defaultdict(int)
        self._jobs: dict[tuple[str, str], _JobRec] = {}
        self._allocs: dict[str, _AllocRec] = {}
        self._evals: dict[str, dict[str, Any]] = {}
        self._faults: dict[str, deque[str]] = defaultdict(deque)
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._root: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> str:
        """Listen on 127.0.0.1 (a free port) and return the agent's address, ``http://127.0.0.1:PORT``."""
        self._root = Path(tempfile.mkdtemp(prefix="nomad-double-"))
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.double = self  # type: ignore[attr-defined]
        self._server = server
        threading.Thread(target=server.serve_forever, name="nomad-double", daemon=True).start()
        self.address = f"http://127.0.0.1:{server.server_address[1]}"
        return self.address

    def stop(self) -> None:
        """Stop serving, wake blocked queries and kill every task process (their process groups)."""
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
            runs = [run for rec in self._allocs.values() for run in rec.tasks.values()]
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for run in runs:
            _signal(run.proc, signal.SIGKILL)
        for run in runs:
            if run.proc is not None:
                run.proc.wait()
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)

    def __enter__(self) -> NomadDouble:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- test controls ---------------------------------------------------------------------------------

    def load_hcl(self, path_or_text: str | os.PathLike[str], variables: dict[str, str] | None = None,
                 namespace: str = "default") -> str:
        """Parse a jobspec (a path or HCL text), register it as ``nomad job run`` would; return its id."""
        text = str(path_or_text)
        if isinstance(path_or_text, os.PathLike) or ("\n" not in text and Path(text).is_file()):
            text = Path(path_or_text).read_text()
        job = hcl_to_job(text, variables)
        try:
            self._register(job, namespace)
        except HTTPError as exc:  # what `nomad job run` would print
            raise JobSpecError(exc.reason) from None
        return str(job["ID"])

    def load_specs(self, directory: str | os.PathLike[str],
                   variables: dict[str, str] | None = None) -> list[str]:
        """:meth:`load_hcl` every ``*.nomad.hcl`` in ``directory`` (sorted); return the job ids."""
        return [self.load_hcl(path, variables) for path in sorted(Path(directory).glob("*.nomad.hcl"))]

    def task_dir(self, alloc_id: str, task: str) -> Path:
        """The directory a task of an allocation runs in (``local/``, ``secrets/``, ``tmp/``)."""
        with self._cond:
            return self._allocs[alloc_id].root / task

    def inject(self, job_id: str, fault: str, count: int = 1) -> None:
        """Make the next ``count`` launches of ``job_id`` (dispatches, forced or plain runs) misbehave.

        ``fail``: every run writes "injected failure" to stderr and exits 3. ``hang``: every run sleeps
        until stopped. ``lose``: the first allocation's node goes down (ClientStatus ``lost``), and one
        replacement with ``PreviousAllocation`` runs the real command. ``block``: the eval cannot place
        the job (``FailedTGAllocs`` and a ``blocked`` eval); the child stays ``pending``, ``Queued 1``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._cond:
            self._faults[job_id].extend([fault] * count)

    # -- state helpers (the lock is held) --------------------------------------------------------------

    def _bump(self) -> int:
        self._index += 1
        return self._index

    def _table(self, name: str, idx: int) -> None:
        self._tables[name] = idx

    def _job_allocs(self, key: tuple[str, str]) -> list[_AllocRec]:
        mine = (a for a in self._allocs.values() if a.key == key)
        return sorted(mine, key=lambda a: a.alloc["CreateIndex"])

    def _job_evals(self, key: tuple[str, str]) -> list[dict[str, Any]]:
        return sorted((e for e in self._evals.values() if (e["Namespace"], e["JobID"]) == key),
                      key=lambda e: e["CreateIndex"])

    def _job_status(self, key: tuple[str, str]) -> str:
        """state_store.getJobStatus."""
        job = self._jobs[key].job
        if job["Type"] == "system" or _is_parent(job):
            return "dead" if job["Stop"] else "running"
        allocs = self._job_allocs(key)
        if any(not _alloc_terminal(a.alloc) for a in allocs):
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
        now = _now_ns()
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
        ev.update(fields, ModifyIndex=idx, ModifyTime=_now_ns())
        self._table("evals", idx)

    def _update_alloc(self, rec: _AllocRec, idx: int, server: bool = False, **fields: Any) -> None:
        rec.alloc.update(fields, ModifyIndex=idx, ModifyTime=_now_ns())
        if server:
            rec.alloc["AllocModifyIndex"] = idx
        self._table("allocs", idx)
        self._refresh(rec.key, idx)

    # -- registering, dispatching, stopping ------------------------------------------------------------

    def _register(self, job: dict[str, Any], namespace: str,
                  enforce_index: int | None = None) -> dict[str, Any]:
        canonicalize(job)
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
            changed = old is None or _spec(old.job) != _spec(job)
            version = 0 if old is None else old.job["Version"] + (1 if changed else 0)
            job.update(Version=version, SubmitTime=_now_ns(), ModifyIndex=idx, JobModifyIndex=idx,
                       CreateIndex=old.job["CreateIndex"] if old else idx,
                       Status="running" if _is_parent(job) else "pending")
            if old is None:
                rec = _JobRec(job=job, summary_index=idx)
                self._jobs[key] = rec
            else:
                rec, rec.job = old, job
            self._table("jobs", idx)
            self._touch_summary(key, idx)
            reply = {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": idx, "Warnings": "", "Index": idx,
                     "KnownLeader": False, "LastContact": 0}
            if not _is_parent(job):
                rec.fault = self._take_fault(job["ID"])
                ev = self._new_eval(job, idx, "job-register")
                reply.update(EvalID=ev["ID"], EvalCreateIndex=idx)
                self._start(self._schedule, ev["ID"], None, 0.0, changed)
            self._refresh(key, idx)
            self._cond.notify_all()
        return reply

    def _take_fault(self, job_id: str) -> str | None:
        queue = self._faults.get(job_id)
        return queue.popleft() if queue else None

    def _dispatch(self, req: _Request, namespace: str, job_id: str) -> Reply:
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
            raise HTTPError(400, f"json: cannot unmarshal {_go_type(bad)} into Go struct field "
                                 f"JobDispatchRequest.{target}")
        meta = {k: v or "" for k, v in meta.items()}
        if fields.get("jobid") and fields["jobid"] != job_id:
            raise HTTPError(400, "Job ID does not match")
        raw_payload = fields.get("payload")
        payload = _b64decode(raw_payload) if isinstance(raw_payload, str) else b""
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
            ev_id, idx = self._launch(child, "job-register")
        return Reply({"DispatchedJobID": child_id, "EvalID": ev_id, "EvalCreateIndex": idx if ev_id else 0,
                      "JobCreateIndex": idx, "Index": idx}, index=idx, read=False)

    def _children(self, namespace: str, parent_id: str) -> list[_JobRec]:
        return [rec for (ns, job_id), rec in sorted(self._jobs.items())
                if ns == namespace and rec.job["ParentID"] == parent_id]

    def _launch(self, child: dict[str, Any], triggered_by: str) -> tuple[str, int]:
        """Store a child job and, unless it is itself periodic, its eval; schedule it: (eval id, index)."""
        idx = self._bump()
        key = (child["Namespace"], child["ID"])
        child.update(Version=0, Stop=False, SubmitTime=_now_ns(), CreateIndex=idx, ModifyIndex=idx,
                     JobModifyIndex=idx, Status="running" if _is_parent(child) else "pending")
        self._jobs[key] = _JobRec(job=child, summary_index=idx, fault=self._take_fault(child["ParentID"]))
        self._table("jobs", idx)
        self._touch_summary(key, idx)
        self._touch_summary((key[0], child["ParentID"]), idx)
        ev_id = ""
        if not _is_parent(child):
            ev_id = self._new_eval(child, idx, triggered_by)["ID"]
            self._start(self._schedule, ev_id, None, 0.0, True)
        self._cond.notify_all()
        return ev_id, idx

    def _force_periodic(self, namespace: str, job_id: str) -> Reply:
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
            ev = None if _is_parent(rec.job) else self._new_eval(rec.job, idx, "job-deregister")
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

    # -- the scheduler ---------------------------------------------------------------------------------

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
            placed: list[_AllocRec] = []
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
                        if not _alloc_terminal(old.alloc):
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

    def _block(self, rec: _JobRec, ev: dict[str, Any], idx: int) -> None:
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

    def _place(self, rec: _JobRec, ev: dict[str, Any], group_name: str, name: str, idx: int,
               previous: _AllocRec | None) -> _AllocRec:
        job = rec.job
        group = next(g for g in job["TaskGroups"] if g["Name"] == group_name)
        alloc_id, now = str(uuid.uuid4()), _now_ns()
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
        arec = _AllocRec(alloc=alloc, job=copy.deepcopy(job), key=(job["Namespace"], job["ID"]),
                         root=(self._root or Path(tempfile.gettempdir())) / alloc_id, fault=fault)
        arec.tasks = {t["Name"]: _TaskRun(t["Name"], t) for t in group["Tasks"]}
        self._allocs[alloc_id] = arec
        if previous is not None:
            self._update_alloc(previous, idx, server=True, NextAllocation=alloc_id)
        self._table("allocs", idx)
        return arec

    def _reschedule(self, rec: _AllocRec, idx: int) -> None:
        """After an alloc failed: one follow-up eval per ReschedulePolicy (a new alloc after Delay)."""
        job_rec = self._jobs.get(rec.key)
        policy = rec.group.get("ReschedulePolicy")
        if job_rec is None or job_rec.job["Stop"] or not policy or rec.alloc["DesiredStatus"] != "run":
            return
        now = _now_ns()
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
        ev = self._new_eval(job_rec.job, idx, "alloc-failure", WaitUntil=_rfc3339(now + delay),
                            StatusDescription="created for delayed rescheduling")
        self._update_alloc(rec, idx, server=True, FollowupEvalID=ev["ID"])
        self._start(self._schedule, ev["ID"], rec.alloc["ID"], delay / 1e9, False)

    def _lose(self, rec: _AllocRec) -> None:
        """The node running ``rec`` goes down: the alloc is lost and the scheduler replaces it."""
        if self._closing.wait(LOSE_AFTER_S):
            return
        with self._cond:
            job_rec = self._jobs.get(rec.key)
            if rec.lost or _alloc_terminal(rec.alloc) or job_rec is None:
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
            _signal(run.proc, signal.SIGKILL)

    # -- the client ------------------------------------------------------------------------------------

    def _task_event(self, rec: _AllocRec, task: str, kind: str, message: str, idx: int,
                    **fields: Any) -> None:
        state = rec.alloc["TaskStates"][task]
        event = {"Type": kind, "Time": _now_ns(), "DisplayMessage": message, "Details": {}, "Message": "",
                 "FailsTask": False, "RestartReason": "", "SetupError": "", "DriverError": "",
                 "DriverMessage": "",
                 "ExitCode": 0, "Signal": 0, "KillReason": "", "KillTimeout": 0, "KillError": "",
                 "StartDelay": 0, "DownloadError": "", "ValidationError": "", "FailedSibling": "",
                 "VaultError": "", "TaskSignalReason": "", "TaskSignal": "", "GenericSource": ""}
        details = fields.pop("Details", {})
        event.update(fields)
        event["Details"] = {k: str(v) for k, v in details.items()}
        state["Events"] = (state["Events"] + [event])[-MAX_EVENTS:]
        self._update_alloc(rec, idx)

    def _set_task(self, rec: _AllocRec, task: str, idx: int, **fields: Any) -> None:
        """Update a task's state and the alloc's client status, as the client's alloc runner reports it."""
        rec.alloc["TaskStates"][task].update(fields)
        states = rec.alloc["TaskStates"].values()
        if rec.lost:
            status, description = rec.alloc["ClientStatus"], rec.alloc["ClientDescription"]
        elif any(s["State"] == "running" for s in states):
            status, description = "running", "Tasks are running"
        elif any(s["State"] == "pending" for s in states):
            status, description = "pending", "No tasks have started"
        elif any(s["Failed"] for s in states):
            status, description = "failed", "Failed tasks"
        else:
            status, description = "complete", "All tasks have completed"
        was = rec.alloc["ClientStatus"]
        self._update_alloc(rec, idx, ClientStatus=status, ClientDescription=description)
        if status == "failed" and was != "failed":
            self._reschedule(rec, idx)

    def _run_task(self, rec: _AllocRec, run: _TaskRun) -> None:
        """One task on the client: set up its directory, run it, restart it per its RestartPolicy."""
        task, policy = run.name, run.spec["RestartPolicy"]
        task_dir = rec.root / task
        for folder in (rec.root / "alloc" / "logs", rec.root / "alloc" / "data", rec.root / "alloc" / "tmp",
                       task_dir / "local", task_dir / "secrets", task_dir / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        with self._cond:
            if rec.alloc["TaskStates"] is None:
                rec.alloc["TaskStates"] = {}
            rec.alloc["TaskStates"][task] = {"State": "pending", "Failed": False, "Restarts": 0,
                                             "LastRestart": ZERO_TIME, "StartedAt": ZERO_TIME,
                                             "FinishedAt": ZERO_TIME, "Events": [], "TaskHandle": None}
            self._task_event(rec, task, "Received", "Task received by client", self._bump())
            self._task_event(rec, task, "Task Setup", "Building Task Directory", self._bump(),
                             Message="Building Task Directory")
            payload = rec.job.get("Payload")
            if run.spec.get("DispatchPayload") and payload:
                target = task_dir / "local" / run.spec["DispatchPayload"]["File"]
                target.write_bytes(base64.b64decode(payload))
            self._cond.notify_all()
        if not self._prepare_secrets(rec, run):
            return
        window_start, restarts_in_window = time.monotonic(), 0
        while True:
            if rec.kill.is_set() or self._closing.is_set() or rec.lost:
                with self._cond:
                    self._finish_killed(rec, run, None)
                return
            code, sig = self._execute(rec, run)
            with self._cond:
                if rec.lost or self._closing.is_set():
                    return  # the node is gone: nothing more is ever reported for this alloc
                idx = self._bump()
                if code is not None:
                    text = f"Exit Code: {code}" + (f", Signal: {sig}" if sig else "")
                    self._task_event(rec, task, "Terminated", text, idx, ExitCode=code, Signal=sig,
                                     Details={"exit_code": code, "signal": sig, "oom_killed": "false"})
                if rec.kill.is_set():
                    self._finish_killed(rec, run, idx)
                    return
                if code == 0:
                    self._set_task(rec, task, idx, State="dead", FinishedAt=_rfc3339(_now_ns()))
                    self._cond.notify_all()
                    return
                restart, delay_ns, reason, window_start, restarts_in_window = _restart_decision(
                    policy, window_start, restarts_in_window)
                if not restart:
                    details = {"fails_task": "true", "restart_reason": reason}
                    self._task_event(rec, task, "Not Restarting", reason, idx, FailsTask=True,
                                     RestartReason=reason, Details=details)
                    self._set_task(rec, task, idx, State="dead", Failed=True, FinishedAt=_rfc3339(_now_ns()))
                    if any(other is not run and not other.exited.is_set() for other in rec.tasks.values()):
                        self._start(self._kill_alloc, rec)  # a failed task takes its siblings down
                    self._cond.notify_all()
                    return
                message = f"Task restarting in {format_duration(delay_ns)}"
                details = {"restart_reason": reason, "start_delay": delay_ns}
                self._task_event(rec, task, "Restarting", message, idx, RestartReason=reason,
                                 StartDelay=delay_ns, Details=details)
                state = rec.alloc["TaskStates"][task]
                self._set_task(rec, task, idx, State="pending", Restarts=state["Restarts"] + 1,
                               LastRestart=_rfc3339(_now_ns()))
                self._cond.notify_all()
            rec.kill.wait(delay_ns / 1e9)

    # -- the client's vault and template hooks -----------------------------------------------------------

    def _vault_env(self, task: dict[str, Any]) -> dict[str, str]:
        """VAULT_TOKEN (and VAULT_NAMESPACE) for a task whose ``vault`` block asks for them (V3)."""
        vault = task.get("Vault")
        if vault is None or self.vault_token is None or not vault.get("Env", True):
            return {}
        env = {"VAULT_TOKEN": self.vault_token}
        if vault.get("Namespace"):
            env["VAULT_NAMESPACE"] = vault["Namespace"]
        return env

    def _prepare_secrets(self, rec: _AllocRec, run: _TaskRun) -> bool:
        """The vault and template prestart hooks: token file, then every template rendered (False: task failed).

        Data a template waits for is retried TEMPLATE_ATTEMPTS times with a ``Template`` "Missing: ..." event
        for each new set of missing dependencies; then, or at once for a template error, the task is failed
        with a ``Killing`` event, as the template manager's Kill does, and never starts.
        """
        vault = run.spec.get("Vault")
        if vault is not None and self.vault_token is not None and not vault.get("DisableFile"):
            token_file = rec.root / run.name / "secrets" / "vault_token"
            descriptor = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w") as out:
                out.write(self.vault_token)
        if not self.render_templates or not run.spec.get("Templates"):
            return True
        backoff_s, missing_shown = TEMPLATE_BACKOFF_S, ""
        for attempt in range(1, TEMPLATE_ATTEMPTS + 1):
            try:
                run.template_env = self._render_templates(rec, run)
                return True
            except MissingDependency as missing:
                if not missing.retry or attempt == TEMPLATE_ATTEMPTS:
                    return self._template_failed(rec, run, f"Template failed: {missing}")
                if missing.dependency != missing_shown:
                    missing_shown = missing.dependency
                    with self._cond:
                        self._task_event(rec, run.name, "Template", f"Missing: {missing.dependency}", self._bump())
                        self._cond.notify_all()
            except TemplateError as exc:
                return self._template_failed(rec, run, f"Template failed: {exc}")
            except EnvParseError as exc:
                return self._template_failed(rec, run, f"Template failed to read environment variables: {exc}")
            except Exception as exc:  # a bug in the renderer must fail the task, not hang it; no text (values)
                frame = traceback.extract_tb(exc.__traceback__)[-1]
                where = f"{Path(frame.filename).name}:{frame.lineno}"
                return self._template_failed(rec, run, f"Template failed: {type(exc).__name__} at {where}")
            if rec.kill.wait(backoff_s) or self._closing.is_set() or rec.lost:
                with self._cond:
                    self._finish_killed(rec, run, None)
                return False
            backoff_s *= 2
        return False  # not reached: the last attempt returns

    def _template_failed(self, rec: _AllocRec, run: _TaskRun, message: str) -> bool:
        with self._cond:
            if rec.lost or self._closing.is_set():
                return False
            idx = self._bump()
            self._task_event(rec, run.name, "Killing", message, idx, FailsTask=True,
                             Details={"fails_task": "true"})
            self._set_task(rec, run.name, idx, State="dead", Failed=True, FinishedAt=_rfc3339(_now_ns()))
            run.exited.set()
            if any(other is not run and not other.exited.is_set() for other in rec.tasks.values()):
                self._start(self._kill_alloc, rec)
            self._cond.notify_all()
        return False

    def _render_templates(self, rec: _AllocRec, run: _TaskRun) -> dict[str, str]:
        """Render every template, then write them; the environment their ``Envvars`` files give the task."""
        task = run.spec
        with self._cond:
            runtime, task_env, view = self._environment(rec, run)
        # Templates see the task's environment only (Nomad masks the agent's own), with relative task dirs.
        sources = Sources(env={**self.env, **task_env, **runtime, **self._vault_env(task)},
                          secret=self._vault_reader(task), key=self._consul_reader())
        relative = {**view, "NOMAD_ALLOC_DIR": "alloc", "NOMAD_TASK_DIR": "local", "NOMAD_SECRETS_DIR": "secrets"}
        task_dir, rendered = rec.root / run.name, []
        for template in task["Templates"]:
            name = _interpolate(str(template.get("DestPath") or ""), relative)
            dest = self._template_path(rec, task_dir, name, "destination")
            text = template.get("EmbeddedTmpl") or ""
            if not text and template.get("SourcePath"):
                source = _interpolate(str(template["SourcePath"]), relative)
                text = self._template_path(rec, task_dir, source, "source").read_text()
            perms = str(template.get("Perms") or "0644")
            try:
                mode = int(perms, 8)
            except ValueError:
                raise TemplateError(f'Failed to parse "{perms}" as octal') from None
            parsed = parse_template(text, name, template.get("LeftDelim") or "{{", template.get("RightDelim") or "}}")
            output = render(parsed, sources, bool(template.get("ErrMissingKey")))
            rendered.append((dest, output, mode, bool(template.get("Envvars"))))
        env: dict[str, str] = {}
        for dest, output, mode, envvars in rendered:
            dest.parent.mkdir(parents=True, exist_ok=True)
            partial = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
            partial.write_text(output)
            partial.chmod(mode)
            partial.replace(dest)
            if envvars:
                try:
                    env.update(parse_env(output))
                except EnvParseError as exc:
                    raise EnvParseError(f'error parsing env template "{dest}": {exc}') from None
        return env

    @staticmethod
    def _template_path(rec: _AllocRec, task_dir: Path, name: str, what: str) -> Path:
        """A template path, always under the task dir (an absolute one too); ``alloc/`` is the shared alloc dir."""
        parts = Path(name).parts[1:] if Path(name).is_absolute() else Path(name).parts
        normalized = os.path.normpath(os.path.join(*parts)) if parts else "."
        if normalized == "." or normalized == ".." or normalized.startswith("../"):
            raise TemplateError(f"template {what} path escapes alloc directory")
        relative = Path(normalized)
        return rec.root / relative if relative.parts[0] == "alloc" else task_dir / relative

    def _vault_reader(self, task: dict[str, Any]) -> Callable[[str], dict[str, Any] | None]:
        """Reads a Vault path with hvac, with the token the client hands this task."""
        vault = task.get("Vault")

        def read(path: str) -> dict[str, Any] | None:
            if self.vault_addr is None:
                raise SourceError("Vault is not enabled on this Nomad client", retry=False)
            if vault is None:
                raise SourceError("the task has no vault block, so the client gives its templates no Vault token",
                                  retry=False)
            import hvac
            import requests

            client = hvac.Client(url=self.vault_addr, token=self.vault_token or "", timeout=SERVICE_TIMEOUT_S,
                                 namespace=vault.get("Namespace") or None)
            try:
                response = client.read(path)
            except hvac.exceptions.Forbidden:
                raise SourceError("Code: 403. Errors: permission denied") from None
            except hvac.exceptions.VaultError as exc:
                raise SourceError(f"Vault answered {type(exc).__name__}") from None
            except requests.RequestException:
                raise SourceError(f"Vault at {self.vault_addr} is unreachable") from None
            return response if isinstance(response, dict) else None

        return read

    def _consul_reader(self) -> Callable[[str], str | None] | None:
        """Reads a Consul KV key with py-consul (None when the client has no Consul)."""
        if self.consul_addr is None:
            return None
        import consul
        import requests

        parts = urlsplit(self.consul_addr if "://" in self.consul_addr else f"http://{self.consul_addr}")
        client = consul.Consul(host=parts.hostname, port=parts.port or 8500, scheme=parts.scheme,
                               token=self.consul_token, connections_timeout=SERVICE_TIMEOUT_S)

        def get(key: str) -> str | None:
            try:
                _, entry = client.kv.get(key)
            except consul.ACLPermissionDenied:
                raise SourceError("Code: 403. Errors: Permission denied") from None
            except (consul.ConsulException, requests.RequestException):
                raise SourceError(f"Consul at {self.consul_addr} is unreachable") from None
            if entry is None:
                return None
            value = entry.get("Value")
            return "" if value is None else bytes(value).decode("utf-8", errors="replace")

        return get

    def _execute(self, rec: _AllocRec, run: _TaskRun) -> tuple[int | None, int]:
        """Start the task's process and wait for it; (exit code, signal), or (None, 0) if it did not start."""
        logs = rec.root / "alloc" / "logs"
        with self._cond:
            argv, env = self._command(rec, run)
        run.exited.clear()
        try:
            with open(logs / f"{run.name}.stdout.0", "ab") as out, \
                    open(logs / f"{run.name}.stderr.0", "ab") as err:
                proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env,
                                        cwd=rec.root / run.name, start_new_session=True)
        except (OSError, ValueError) as exc:
            with self._cond:
                message = f"failed to launch command with executor: {exc}"
                self._task_event(rec, run.name, "Driver Failure", message, self._bump(), DriverError=message)
                self._cond.notify_all()
            return None, 0
        with self._cond:
            run.proc = proc
            if self._closing.is_set():  # stop() ran while this process was starting
                _signal(proc, signal.SIGKILL)
            self.processes_started += 1
            idx = self._bump()
            self._task_event(rec, run.name, "Started", "Task started by client", idx)
            self._set_task(rec, run.name, idx, State="running", StartedAt=_rfc3339(_now_ns()))
            killed_meanwhile = rec.kill.is_set()
            self._cond.notify_all()
        if killed_meanwhile:
            self._start(self._kill_alloc, rec)
        if rec.fault == "lose":
            self._start(self._lose, rec)
        returncode = proc.wait()
        run.exited.set()
        return (128 - returncode, -returncode) if returncode < 0 else (returncode, 0)

    def _environment(self, rec: _AllocRec,
                     run: _TaskRun) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """(the runtime ``NOMAD_*`` variables, the task's ``env`` block interpolated, the interpolation view)."""
        job, group, task = rec.job, rec.group, run.spec
        alloc_dir, task_dir = rec.root / "alloc", rec.root / run.name
        name = rec.alloc["Name"]
        runtime = {
            "NOMAD_ALLOC_DIR": str(alloc_dir), "NOMAD_TASK_DIR": str(task_dir / "local"),
            "NOMAD_SECRETS_DIR": str(task_dir / "secrets"), "NOMAD_ALLOC_ID": rec.alloc["ID"],
            "NOMAD_SHORT_ALLOC_ID": rec.alloc["ID"][:8], "NOMAD_ALLOC_NAME": name,
            "NOMAD_ALLOC_INDEX": name[name.rindex("[") + 1:-1], "NOMAD_GROUP_NAME": group["Name"],
            "NOMAD_TASK_NAME": run.name, "NOMAD_JOB_ID": job["ID"], "NOMAD_JOB_NAME": job["Name"],
            "NOMAD_NAMESPACE": job["Namespace"], "NOMAD_REGION": REGION, "NOMAD_DC": DATACENTER,
            "NOMAD_CPU_LIMIT": str(task["Resources"]["CPU"]),
            "NOMAD_MEMORY_LIMIT": str(task["Resources"]["MemoryMB"]),
        }
        if job["ParentID"]:
            runtime["NOMAD_JOB_PARENT_ID"] = job["ParentID"]
        meta = {**(job.get("Meta") or {}), **(group.get("Meta") or {}), **(task.get("Meta") or {})}
        for key, value in meta.items():
            clean = _ENV_UNSAFE.sub("_", key)
            runtime[f"NOMAD_META_{clean}"] = runtime[f"NOMAD_META_{clean.upper()}"] = value
        view = {**runtime, "node.unique.id": NODE_ID, "node.unique.name": NODE_NAME,
                "node.datacenter": DATACENTER, "node.region": REGION, "attr.kernel.name": sys.platform}
        task_env = {k: _interpolate(str(v), view) for k, v in (task.get("Env") or {}).items()}
        view.update(task_env)
        return runtime, task_env, view

    def _command(self, rec: _AllocRec, run: _TaskRun) -> tuple[list[str], dict[str, str]]:
        """The argv and environment Nomad's client would give the task."""
        runtime, task_env, view = self._environment(rec, run)
        view.update(run.template_env)
        base = os.environ if self.inherit_env else \
            {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR")}
        env = {**base, **self.env, **task_env, **run.template_env, **runtime, **self._vault_env(run.spec)}
        config = run.spec.get("Config") or {}
        if rec.fault in ("hang", "lose"):
            return [self.python, "-c", "import time\nwhile True:\n    time.sleep(60)"], env
        if rec.fault == "fail":
            fail = "import sys; sys.stderr.write('injected failure\\n'); sys.exit(3)"
            return [self.python, "-c", fail], env
        command = _interpolate(str(config.get("command") or ""), view)
        if os.path.basename(command) in ("python", "python3"):
            command = self.python
        return [command, *(_interpolate(str(a), view) for a in config.get("args") or [])], env

    def _finish_killed(self, rec: _AllocRec, run: _TaskRun, idx: int | None) -> None:
        idx = idx or self._bump()
        self._task_event(rec, run.name, "Killed", "Task successfully killed", idx)
        self._set_task(rec, run.name, idx, State="dead", FinishedAt=_rfc3339(_now_ns()))
        self._cond.notify_all()

    def _kill_alloc(self, rec: _AllocRec) -> None:
        """Stop an alloc's tasks: Killing, SIGTERM to the process group, SIGKILL after the kill timeout."""
        rec.kill.set()
        live = []
        with self._cond:
            for run in rec.tasks.values():
                if run.proc is not None and run.proc.poll() is None and not run.exited.is_set():
                    timeout_s = min(run.spec["KillTimeout"] / 1e9, self.kill_timeout_s)
                    timeout = format_duration(int(timeout_s * 1e9))
                    message = f"Sent interrupt. Waiting {timeout} before force killing"
                    self._task_event(rec, run.name, "Killing", message, self._bump(),
                                     KillTimeout=int(timeout_s * 1e9), Details={"kill_timeout": timeout})
                    live.append((run, timeout_s))
            self._cond.notify_all()
        for run, timeout_s in live:
            _signal(run.proc, signal.SIGTERM)
            if not run.exited.wait(timeout_s):
                _signal(run.proc, signal.SIGKILL)

    # -- reads -----------------------------------------------------------------------------------------

    def _summary(self, rec: _JobRec) -> dict[str, Any]:
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
        if _is_parent(job):
            children = {"Pending": 0, "Running": 0, "Dead": 0}
            for child in self._children(job["Namespace"], job["ID"]):
                children[(child.job["Status"] or "pending").capitalize()] += 1
        return {"JobID": job["ID"], "Namespace": job["Namespace"], "Summary": groups, "Children": children,
                "CreateIndex": job["CreateIndex"], "ModifyIndex": rec.summary_index}

    def _stub(self, rec: _JobRec, with_meta: bool) -> dict[str, Any]:
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
    def _alloc_stub(rec: _AllocRec) -> dict[str, Any]:
        return {k: copy.deepcopy(rec.alloc.get(k)) for k in _STUB_FIELDS}

    def _blocking(self, req: _Request, query: Callable[[], tuple[Any, int, Any]]) -> tuple[Any, int]:
        """Run ``query`` (body, index, watch) under the lock; block while index <= ?index, up to ?wait."""
        min_index, wait_s = _blocking_params(req.query)
        with self._cond:
            body, index, watch = query()
            if min_index == 0 or index > min_index:
                return body, index
            deadline = time.monotonic() + wait_s + random.uniform(0, wait_s / 16)
            while not self._closing.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                new_body, new_index, new_watch = query()
                if new_watch != watch:
                    body, index, watch = new_body, new_index, new_watch
                    if index > min_index:
                        break
        return body, index

    def _read(self, req: _Request, query: Callable[[], tuple[Any, int]], missing: str = "",
              watch: Callable[[], Any] | None = None) -> Reply:
        """A blocking read: ``query`` gives (body, or None when missing, index) under the lock; ``watch``
        what the query depends on (default: the index of the object read), as Nomad's watch sets do."""
        def watched() -> tuple[Any, int, Any]:
            body, index = query()
            return body, index, watch() if watch else (index if body is not None else None)

        body, index = self._blocking(req, watched)
        if body is None:
            raise HTTPError(404, missing, index=index)
        return Reply(body, index)

    def _get_job(self, req: _Request, ns: str, job_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._jobs.get((ns, job_id))
            return (copy.deepcopy(rec.job), rec.job["ModifyIndex"]) if rec else (None, self._tables["jobs"])

        return self._read(req, query, "job not found")

    def _get_summary(self, req: _Request, ns: str, job_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._jobs.get((ns, job_id))
            return (self._summary(rec), rec.summary_index) if rec else (None, self._tables["job_summary"])

        return self._read(req, query, "job not found")

    def _get_job_allocs(self, req: _Request, ns: str, job_id: str) -> Reply:
        include_all = _parse_bool(req.query["all"], "all") if req.query.get("all") else False

        def allocs() -> list[_AllocRec]:
            rec = self._jobs.get((ns, job_id))
            return [a for a in self._job_allocs((ns, job_id))
                    if include_all or rec is None or a.job["CreateIndex"] == rec.job["CreateIndex"]]

        return self._read(req, lambda: ([self._alloc_stub(a) for a in allocs()], self._tables["allocs"]),
                          watch=lambda: [(a.alloc["ID"], a.alloc["ModifyIndex"]) for a in allocs()])

    def _get_job_evals(self, req: _Request, ns: str, job_id: str) -> Reply:
        return self._read(req, lambda: (copy.deepcopy(self._job_evals((ns, job_id))), self._tables["evals"]),
                          watch=lambda: [(e["ID"], e["ModifyIndex"]) for e in self._job_evals((ns, job_id))])

    def _list_jobs(self, req: _Request, ns: str) -> Reply:
        if req.query.get("filter"):
            raise HTTPError(501, "filter expressions are not implemented by the Nomad double")
        prefix = req.query.get("prefix", "")
        with_meta = bool(req.query.get("meta")) and _parse_bool(req.query["meta"], "meta")

        def query() -> tuple[Any, int]:
            stubs = [self._stub(rec, with_meta) for (job_ns, job_id), rec in sorted(self._jobs.items())
                     if (ns == "*" or job_ns == ns) and job_id.startswith(prefix)]
            return stubs, max(self._tables["jobs"], self._tables["job_summary"])

        return self._read(req, query)

    def _get_alloc(self, req: _Request, alloc_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            rec = self._allocs.get(alloc_id)
            if rec is None:
                return None, self._tables["allocs"]
            return {**copy.deepcopy(rec.alloc), "Job": copy.deepcopy(rec.job)}, rec.alloc["ModifyIndex"]

        return self._read(req, query, "alloc not found")

    def _get_eval(self, req: _Request, eval_id: str) -> Reply:
        def query() -> tuple[Any, int]:
            ev = self._evals.get(eval_id)
            return (copy.deepcopy(ev), ev["ModifyIndex"]) if ev else (None, self._tables["evals"])

        return self._read(req, query, "eval not found")

    def _logs(self, req: _Request, alloc_id: str) -> Reply:
        """``/v1/client/fs/logs/:alloc``: Nomad's checks in its order, then the bytes (plain or framed)."""
        q = req.query
        if not alloc_id:
            raise HTTPError(400, "must provide a valid alloc id")
        task = q.get("task", "")
        if not task:
            raise HTTPError(400, "must provide task name")
        follow = _parse_bool(q["follow"], "follow") if q.get("follow") else False
        plain = _parse_bool(q["plain"], "plain") if q.get("plain") else False
        kind = q.get("type", "")
        if kind not in ("stdout", "stderr"):
            raise HTTPError(400, "must provide log type (stdout/stderr)")
        origin = q.get("origin") or "start"
        if origin not in ("start", "end"):
            raise HTTPError(400, "origin must be start or end")
        try:
            offset = int(q.get("offset") or 0)
        except ValueError:
            text = f'error parsing offset: strconv.ParseInt: parsing "{q["offset"]}": invalid syntax'
            raise HTTPError(400, text) from None
        with self._cond:
            rec = self._allocs.get(alloc_id)
            if rec is None:
                raise HTTPError(404, f'Unknown allocation "{alloc_id}"')
            if task not in rec.tasks:
                raise HTTPError(400, f'unknown task name "{task}"')
            state = (rec.alloc["TaskStates"] or {}).get(task)
            if state is None or state["StartedAt"] == ZERO_TIME:
                raise HTTPError(404, f'task "{task}" not started yet. No logs available')
        path = rec.root / "alloc" / "logs" / f"{task}.{kind}.0"
        rel = f"alloc/logs/{task}.{kind}.0"

        def chunks(position: int) -> Iterator[tuple[int, bytes]]:
            data = path.read_bytes() if path.exists() else b""
            for start in range(position, len(data), LOG_FRAME):
                piece = data[start:start + LOG_FRAME]
                yield start + len(piece), piece

        size = path.stat().st_size if path.exists() else 0
        start = max(0, size - offset) if origin == "end" else min(offset, size)

        def encode(items: Iterator[tuple[int, bytes]]) -> bytes:
            if plain:
                return b"".join(piece for _, piece in items)
            return b"".join(_go_json({"File": rel, "Offset": end, "Data": base64.b64encode(piece).decode()})
                            for end, piece in items)

        if not follow:
            return Reply(raw=encode(chunks(start)),
                         content_type="text/plain" if plain else "application/json")

        def stream(write: Callable[[bytes], None]) -> None:
            position = start
            while not self._closing.is_set():
                with self._cond:
                    finished = rec.tasks[task].exited.is_set() and _alloc_terminal(rec.alloc)
                for end, piece in chunks(position):
                    write(encode(iter([(end, piece)])))
                    position = end
                if finished:
                    return
                with self._cond:
                    self._cond.wait(0.2)

        return Reply(stream=stream, content_type="text/plain" if plain else "application/json")

    def _parse(self, req: _Request) -> Reply:
        body = self._decode(req)
        fields = {k.lower(): v for k, v in (body if isinstance(body, dict) else {}).items()}
        text = fields.get("jobhcl") or ""
        if not text.strip():
            raise HTTPError(400, "Job spec is empty")
        variables: dict[str, Any] = {}
        if fields.get("variables"):
            try:
                variables = var_file_values(fields["variables"])
            except Exception as exc:  # python-hcl2 raises lark's many exception types
                raise HTTPError(400, f"Failed to parse job: {exc}") from None
        try:
            job = hcl_to_job(text, variables)
        except JobSpecError as exc:
            raise HTTPError(400, str(exc)) from None
        return Reply(canonicalize(job) if fields.get("canonicalize") else job, read=False)

    # -- HTTP ------------------------------------------------------------------------------------------

    def _decode(self, req: _Request) -> Any:
        if not req.body:
            raise HTTPError(400, "Request body is empty")
        text = req.body.decode("utf-8", errors="replace")
        try:
            return json.JSONDecoder().raw_decode(text.lstrip())[0]
        except json.JSONDecodeError as exc:
            rest = text.lstrip()
            if exc.pos >= len(rest):
                raise HTTPError(400, "unexpected EOF") from None
            text = f"invalid character {rest[exc.pos]!r} looking for beginning of value"
            raise HTTPError(400, text) from None

    def handle(self, method: str, raw_path: str, headers: Any,
               body: bytes) -> tuple[int, dict[str, str], Reply]:
        """Answer one request: (status, extra headers, reply); errors become text/plain replies."""
        self.requests.append((method, raw_path))
        parts = urlsplit(raw_path)
        query = dict(reversed(parse_qsl(parts.query, keep_blank_values=True)))  # the first value wins
        req = _Request(method, unquote(parts.path), query, headers, body)
        try:
            reply = self._route(req)
        except HTTPError as exc:
            extra = {} if exc.index is None else _read_headers(exc.index)
            return exc.status, extra, Reply(raw=exc.reason.encode(), content_type="text/plain; charset=utf-8")
        except JobSpecError as exc:
            return 400, {}, Reply(raw=str(exc).encode(), content_type="text/plain; charset=utf-8")
        extra = {}
        if reply.index is not None:
            extra = _read_headers(reply.index) if reply.read else {"X-Nomad-Index": str(max(1, reply.index))}
        if reply.raw is None and reply.stream is None:
            reply.raw = _go_json(reply.body, pretty="pretty" in req.query)
        return 200, extra, reply

    def _route(self, req: _Request) -> Reply:
        path, method = req.path, req.method
        if path == "/v1/status/leader":
            _methods(method, "GET")
            return Reply(LEADER, index=None)
        self._check_acl(req.headers)
        if req.query.get("region") not in (None, "", REGION):
            raise HTTPError(500, "No path to region")
        ns = req.query.get("namespace") or "default"
        if path == "/v1/jobs":
            if _methods(method, "GET", "PUT", "POST") == "GET":
                return self._list_jobs(req, ns)
            return self._register_request(req, None)
        if path == "/v1/jobs/parse":
            _methods(method, "PUT", "POST")
            return self._parse(req)
        if path.startswith("/v1/job/"):
            return self._route_job(req, ns, path[len("/v1/job/"):])
        if path.startswith("/v1/allocation/"):
            alloc_id = path[len("/v1/allocation/"):]
            if "/" in alloc_id:
                raise HTTPError(501, f"{path} is not implemented by the Nomad double")
            _methods(method, "GET")
            return self._get_alloc(req, alloc_id)
        if path.startswith("/v1/evaluation/"):
            eval_id = path[len("/v1/evaluation/"):]
            _methods(method, "GET")
            if eval_id.endswith("/allocations"):
                eval_id = eval_id[: -len("/allocations")]
                with self._cond:
                    mine = (a for a in self._allocs.values() if a.alloc["EvalID"] == eval_id)
                    stubs = [self._alloc_stub(a) for a in mine]
                    return Reply(stubs, self._tables["allocs"])
            return self._get_eval(req, eval_id)
        if path.startswith("/v1/client/fs/logs/"):
            _methods(method, "GET")
            return self._logs(req, path[len("/v1/client/fs/logs/"):])
        raise HTTPError(404, "404 page not found\n")

    def _route_job(self, req: _Request, ns: str, rest: str) -> Reply:
        suffix = next((s for s in JOB_SUFFIXES if rest.endswith(s) and len(rest) > len(s)), "")
        job_id, method = rest[: len(rest) - len(suffix)], req.method
        if suffix == "":
            verb = _methods(method, "GET", "PUT", "POST", "DELETE")
            if verb == "GET":
                return self._get_job(req, ns, job_id)
            if verb == "DELETE":
                purge = _parse_bool(req.query["purge"], "purge") if req.query.get("purge") else False
                return self._deregister(ns, job_id, purge)
            return self._register_request(req, job_id)
        if suffix == "/dispatch":
            _methods(method, "PUT", "POST")
            return self._dispatch(req, ns, job_id)
        if suffix == "/periodic/force":
            _methods(method, "PUT", "POST")
            return self._force_periodic(ns, job_id)
        _methods(method, "GET")
        if suffix == "/allocations":
            return self._get_job_allocs(req, ns, job_id)
        if suffix == "/evaluations":
            return self._get_job_evals(req, ns, job_id)
        if suffix == "/summary":
            return self._get_summary(req, ns, job_id)
        raise HTTPError(501, f"/v1/job/:id{suffix} is not implemented by the Nomad double")

    def _register_request(self, req: _Request, path_id: str | None) -> Reply:
        body = self._decode(req)
        fields = {k.lower(): v for k, v in (body if isinstance(body, dict) else {}).items()}
        job = fields.get("job")
        if not isinstance(job, dict):
            raise HTTPError(400, "Job must be specified")
        if not job.get("ID"):
            raise HTTPError(400, "Job ID hasn't been provided")
        if path_id is not None and job["ID"] != path_id:
            raise HTTPError(400, "Job ID does not match name")
        namespace = req.query.get("namespace") or fields.get("namespace") or job.get("Namespace") or "default"
        enforce = fields.get("jobmodifyindex", 0) if fields.get("enforceindex") else None
        reply = self._register(copy.deepcopy(job), namespace, enforce)
        return Reply(reply, index=reply["Index"], read=False)

    def _check_acl(self, headers: Any) -> None:
        if self.acl_token is None:
            return
        token = headers.get("X-Nomad-Token") or ""
        auth = headers.get("Authorization") or ""
        if not token and auth.startswith("Bearer "):
            token = auth[len("Bearer "):]
        if not token:
            raise HTTPError(403, "Permission denied")  # the anonymous token has no policy
        if token != self.acl_token:
            raise HTTPError(403, "ACL token not found")


def _spec(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in _RUNTIME_FIELDS}


def _methods(method: str, *allowed: str) -> str:
    if method not in allowed:
        raise HTTPError(405, "Invalid method")
    return method


def _read_headers(index: int) -> dict[str, str]:
    return {"X-Nomad-Index": str(max(1, index)), "X-Nomad-KnownLeader": "true", "X-Nomad-LastContact": "0"}


def _blocking_params(query: dict[str, str]) -> tuple[int, float]:
    wait_s = MAX_BLOCKING_S
    if query.get("wait"):
        try:
            wait_s = parse_duration_ns(query["wait"]) / 1e9
        except ValueError:
            raise HTTPError(400, "Invalid wait time") from None
        wait_s = min(max(wait_s, 0.0), MAX_BLOCKING_S) or MAX_BLOCKING_S
    index = 0
    if query.get("index"):
        if not query["index"].isdigit():
            raise HTTPError(400, "Invalid index")
        index = int(query["index"])
    return index, wait_s


def _restart_decision(policy: dict[str, Any], window_start: float,
                      count: int) -> tuple[bool, int, str, float, int]:
    """client/allocrunner/taskrunner/restarts: (restart?, delay ns, reason, window start, count)."""
    attempts, interval_ns, delay_ns = policy["Attempts"], policy["Interval"], policy["Delay"]
    if attempts == 0:
        return False, 0, "Policy allows no restarts", window_start, count
    now = time.monotonic()
    if interval_ns and now > window_start + interval_ns / 1e9:
        return True, delay_ns, "Restart within policy", now, 0
    count += 1
    if count <= attempts:
        return True, delay_ns, "Restart within policy", window_start, count
    if policy["Mode"] == "fail":
        reason = (f"Exceeded allowed attempts {attempts} in interval {format_duration(interval_ns)} "
                  f'and mode is "fail"')
        return False, 0, reason, window_start, count
    wait_ns = max(0, int((window_start + interval_ns / 1e9 - now) * 1e9))
    return True, wait_ns, "Exceeded allowed attempts, applying a delay", window_start, count


def _interpolate(text: str, view: dict[str, str]) -> str:
    """Nomad's runtime interpolation: ``${NOMAD_META_x}``, ``${node.unique.name}``...; unknown ones stay."""
    return _RUNTIME_REF.sub(lambda m: view.get(m.group(1).strip(), m.group(0)), text)


def _signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Go's net/http (Nomad) sets TCP_NODELAY; without it, headers and body in two writes meet
    # delayed ACKs and every response waits ~40 ms.
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        double: NomadDouble = self.server.double  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, extra, reply = double.handle(self.command, self.path, self.headers, body)
        hook = double.response_hook

        def sent(data: bytes) -> None:
            if hook is not None:
                hook(self.command, self.path, status, data)

        self.send_response(status)
        self.send_header("Content-Type", reply.content_type)
        for name, value in extra.items():
            self.send_header(name, value)
        if reply.stream is not None:
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                reply.stream(lambda data: (sent(data), self.wfile.write(data), self.wfile.flush()))
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        data = reply.raw or b""
        sent(data)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = _serve  # noqa: N815 - the stdlib's naming

    def log_message(self, format: str, *args: Any) -> None:
        pass
