"""An HTTP double of the Nomad API for parameterized batch jobs, which really runs the dispatched tasks.

Written from the Nomad API notes (../shared/NOMAD_CONSUL_VAULT_API.md): text/plain error bodies
with Nomad's status codes (500 for dispatch validation errors), ``X-Nomad-Index`` on every read and
blocking queries (``index``/``wait``, clamped to 300 s), the ``idempotency_token`` query parameter
(a body key of that spelling is ignored, as Nomad does), child ids ``<parent>/dispatch-<unix>-<8hex>``
reachable with raw and ``%2F``-escaped slashes, evaluations, allocations with task events whose
``Details.exit_code`` is a string, ``/v1/client/fs/logs``, job stop, and HCL parsing/registration.

Each dispatched task's ``config.command``/``args`` run as a subprocess with Nomad's environment
(``NOMAD_META_*`` in both cases, ``NOMAD_JOB_ID``, ``NOMAD_ALLOC_ID``...), so pipelines run end to
end through the HTTP API. ``inject()`` makes the next dispatches of a job fail, hang, lose their
allocation, or stay unplaceable. Drive it only through python-nomad.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

MAX_WAIT_S = 300.0
_SUFFIXES = ("allocations", "evaluations", "summary", "dispatch", "periodic/force", "versions", "deployments",
             "deployment", "plan", "evaluate", "revert", "stable", "scale", "services", "submission")
_UNSAFE_ENV = re.compile(r"[^A-Za-z0-9_.]")
_INTERP = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class HTTPError(Exception):
    """An error answered as Nomad does: a status code and a text/plain body."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status, self.text = status, text


def go_duration(text: str) -> float:
    """Seconds in a Go duration string such as ``30s``, ``1m30s`` or ``500ms``."""
    total, rest = 0.0, text
    if not rest:
        raise ValueError(text)
    while rest:
        match = re.match(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", rest)
        if not match:
            raise ValueError(text)
        total += float(match.group(1)) * _UNITS[match.group(2)]
        rest = rest[match.end():]
    return total


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _rfc3339(when: float | None) -> str:
    if when is None:
        return "0001-01-01T00:00:00Z"
    return dt.datetime.fromtimestamp(when, dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- HCL to Job JSON ---------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items() if k != "__is_block__"}
    return value


def _blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [b for b in body.get(name) or [] if isinstance(b, dict)]


def _labelled(body: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(label, inner) for block in _blocks(body, name) for label, inner in block.items()]


def hcl_to_job(text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Nomad's HCL job spec as API Job JSON (the subset caravan's specs use), with defaults filled in."""
    import hcl2

    tree = _plain(hcl2.loads(text))
    values = {name: body.get("default") for name, body in _labelled(tree, "variable")}
    values.update(variables or {})

    def resolve(value: Any) -> Any:
        if isinstance(value, str):
            whole = re.fullmatch(r"\$\{var\.([A-Za-z0-9_]+)\}", value)
            if whole and whole.group(1) in values:
                return values[whole.group(1)]
            return re.sub(r"\$\{var\.([A-Za-z0-9_]+)\}", lambda m: str(values.get(m.group(1), m.group(0))), value)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        return value

    (job_id, body), = _labelled(tree, "job")
    body = resolve(body)
    job_type = body.get("type", "service")
    batch = job_type in ("batch", "sysbatch")
    groups = []
    for group_name, group in _labelled(body, "group"):
        restart = (_blocks(group, "restart") or [{}])[0]
        reschedule = (_blocks(group, "reschedule") or [{}])[0]
        tasks = []
        for task_name, task in _labelled(group, "task"):
            env: dict[str, str] = {}
            for block in _blocks(task, "env"):
                env.update({k: str(v) for k, v in block.items()})
            tasks.append({"Name": task_name, "Driver": task.get("driver"), "Config": (_blocks(task, "config") or
                                                                                      [{}])[0],
                          "Env": env or None, "Meta": None, "KillTimeout": _ns(5)})
        groups.append({
            "Name": group_name, "Count": int(group.get("count", 1)), "Tasks": tasks, "Meta": None,
            "RestartPolicy": {"Attempts": int(restart.get("attempts", 3 if batch else 2)),
                              "Delay": _ns(go_duration(restart.get("delay", "15s"))),
                              "Interval": _ns(go_duration(restart.get("interval", "24h" if batch else "30m"))),
                              "Mode": restart.get("mode", "fail")},
            "ReschedulePolicy": {"Attempts": int(reschedule.get("attempts", 1 if batch else 0)),
                                 "Unlimited": bool(reschedule.get("unlimited", not batch)),
                                 "Delay": _ns(go_duration(reschedule.get("delay", "5s" if batch else "30s")))},
        })
    parameterized = (_blocks(body, "parameterized") or [None])[0]
    periodic = (_blocks(body, "periodic") or [None])[0]
    return {
        "ID": job_id, "Name": job_id, "Type": job_type, "Namespace": body.get("namespace") or "default",
        "Datacenters": body.get("datacenters") or ["dc1"], "Priority": int(body.get("priority", 50)),
        "Meta": (_blocks(body, "meta") or [None])[0], "TaskGroups": groups,
        "ParameterizedJob": None if parameterized is None else {
            "Payload": parameterized.get("payload") or "optional",
            "MetaRequired": parameterized.get("meta_required") or None,
            "MetaOptional": parameterized.get("meta_optional") or None},
        "Periodic": None if periodic is None else {
            "Enabled": bool(periodic.get("enabled", True)), "Specs": periodic.get("crons") or
            ([periodic["cron"]] if periodic.get("cron") else []), "SpecType": "cron",
            "ProhibitOverlap": bool(periodic.get("prohibit_overlap", False)),
            "TimeZone": periodic.get("time_zone", "UTC")},
    }


# -- the state machine -------------------------------------------------------------------------------------

class NomadDouble:
    """The double (see the module docstring). ``start()`` returns its address."""

    def __init__(self, *, env: dict[str, str] | None = None, python: str = sys.executable,
                 acl_token: str | None = None, kill_timeout_s: float = 5.0) -> None:
        self.env, self.python, self.acl_token, self.kill_timeout_s = dict(env or {}), python, acl_token, kill_timeout_s
        self.index = 1
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.evals: dict[str, dict[str, Any]] = {}
        self.allocs: dict[str, dict[str, Any]] = {}
        self.alloc_index = 1
        self.faults: dict[str, list[str]] = {}
        self.dispatch_requests: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self.processes_started = 0
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._stopping: set[str] = set()
        self._cond = threading.Condition()
        self._workdir = Path(tempfile.mkdtemp(prefix="nomad-double-"))
        self._server: ThreadingHTTPServer | None = None
        self.address = ""

    # lifecycle
    def start(self) -> str:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                double._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = _handle  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.address = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self.address

    def stop(self) -> None:
        for alloc_id in list(self._procs):
            self._kill(alloc_id)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> NomadDouble:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # test controls
    def load_hcl(self, path_or_text: str | os.PathLike[str], variables: dict[str, str] | None = None,
                 namespace: str = "default") -> str:
        text = Path(path_or_text).read_text() if Path(str(path_or_text)).exists() else str(path_or_text)
        job = hcl_to_job(text, variables)
        job["Namespace"] = namespace
        with self._cond:
            self._register(job)
        return str(job["ID"])

    def load_specs(self, directory: str | os.PathLike[str], variables: dict[str, str] | None = None) -> list[str]:
        return [self.load_hcl(p, variables) for p in sorted(Path(directory).glob("*.nomad.hcl"))]

    def inject(self, job_id: str, fault: str, count: int = 1) -> None:
        if fault not in ("fail", "hang", "lose", "block"):
            raise ValueError(f"unknown fault {fault!r}")
        with self._cond:
            self.faults.setdefault(job_id, []).extend([fault] * count)

    # state helpers (call with the condition held)
    def _bump(self) -> int:
        self.index += 1
        self._cond.notify_all()
        return self.index

    def _register(self, job: dict[str, Any]) -> dict[str, Any]:
        key = (job.get("Namespace") or "default", job["ID"])
        old = self.jobs.get(key)
        index = self._bump()
        spec_changed = old is None or {k: v for k, v in old.items() if k not in _SERVER_FIELDS} != \
            {k: v for k, v in job.items() if k not in _SERVER_FIELDS}
        stored = {**job, "Stop": False, "Status": "running" if job.get("ParameterizedJob") or job.get("Periodic")
                  else "pending", "Dispatched": False, "ParentID": job.get("ParentID", ""),
                  "CreateIndex": old["CreateIndex"] if old else index, "ModifyIndex": index,
                  "JobModifyIndex": index if spec_changed else old["JobModifyIndex"],
                  "Version": (old["Version"] + 1 if spec_changed else old["Version"]) if old else 0,
                  "SubmitTime": time.time_ns()}
        self.jobs[key] = stored
        return stored

    def _job(self, namespace: str, job_id: str) -> dict[str, Any]:
        job = self.jobs.get((namespace, job_id))
        if job is None:
            raise HTTPError(404, "job not found")
        return job

    def _job_allocs(self, namespace: str, job_id: str) -> list[dict[str, Any]]:
        return [a for a in self.allocs.values() if a["JobID"] == job_id and a["Namespace"] == namespace]

    def _refresh_job(self, job: dict[str, Any]) -> None:
        if (job.get("ParameterizedJob") and not job.get("Dispatched")) or job.get("Periodic"):
            return
        allocs = self._job_allocs(job["Namespace"], job["ID"])
        evals = [e for e in self.evals.values() if e["JobID"] == job["ID"] and e["Namespace"] == job["Namespace"]]
        if any(a["ClientStatus"] in ("pending", "running") for a in allocs):
            status = "running"
        elif any(e["Status"] in ("pending", "blocked") for e in evals):
            status = "pending"
        else:
            status = "dead"
        if status != job["Status"]:
            job["Status"] = status
            job["ModifyIndex"] = self._bump()

    # -- dispatch and running tasks --------------------------------------------------------------------------

    def _dispatch(self, namespace: str, parent_id: str, body: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
        parent = self.jobs.get((namespace, parent_id))
        if parent is None:
            raise HTTPError(500, "parameterized job not found")
        if not parent.get("ParameterizedJob") or parent.get("Dispatched"):
            raise HTTPError(500, f'Specified job "{parent_id}" is not a parameterized job')
        if parent.get("Stop"):
            raise HTTPError(500, f'Specified job "{parent_id}" is stopped')
        rules = parent["ParameterizedJob"]
        payload = body.get("Payload") or ""
        if rules["Payload"] == "required" and not payload:
            raise HTTPError(500, "Payload is not provided but required by parameterized job")
        if rules["Payload"] == "forbidden" and payload:
            raise HTTPError(500, "Payload provided but forbidden by parameterized job")
        meta = body.get("Meta") or {}
        allowed = set(rules.get("MetaRequired") or []) | set(rules.get("MetaOptional") or [])
        unknown = sorted(k for k in meta if k not in allowed)
        if unknown:
            raise HTTPError(500, f"Dispatch request included unpermitted metadata keys: [{' '.join(unknown)}]")
        missing = sorted(k for k in rules.get("MetaRequired") or [] if k not in meta)
        if missing:
            raise HTTPError(500, f"Dispatch did not provide required meta keys: [{' '.join(missing)}]")
        token = query.get("idempotency_token") or body.get("IdempotencyToken") or ""
        if token:
            for child in self.jobs.values():
                if child.get("ParentID") == parent_id and child.get("DispatchIdempotencyToken") == token \
                        and child["Namespace"] == namespace:
                    return {"DispatchedJobID": child["ID"], "EvalID": "", "EvalCreateIndex": 0,
                            "JobCreateIndex": child["CreateIndex"], "Index": child["ModifyIndex"]}
        child_id = f"{parent_id}/dispatch-{int(time.time())}-{uuid.uuid4().hex[:8]}"
        child = json.loads(json.dumps(parent))
        index = self._bump()
        child.update(ID=child_id, Name=child_id, ParentID=parent_id, Dispatched=True, Status="pending",
                     Meta={**(parent.get("Meta") or {}), **meta}, DispatchIdempotencyToken=token,
                     CreateIndex=index, ModifyIndex=index, JobModifyIndex=index, SubmitTime=time.time_ns())
        self.jobs[(namespace, child_id)] = child
        fault = (self.faults.get(parent_id) or [None]).pop(0) if self.faults.get(parent_id) else None
        evaluation = self._new_eval(child, "job-register")
        threading.Thread(target=self._schedule, args=(child, evaluation["ID"], fault), daemon=True).start()
        return {"DispatchedJobID": child_id, "EvalID": evaluation["ID"], "EvalCreateIndex": evaluation["CreateIndex"],
                "JobCreateIndex": index, "Index": index}

    def _new_eval(self, job: dict[str, Any], trigger: str, status: str = "pending") -> dict[str, Any]:
        index = self._bump()
        evaluation = {"ID": str(uuid.uuid4()), "Namespace": job["Namespace"], "Priority": job["Priority"],
                      "Type": job["Type"], "TriggeredBy": trigger, "JobID": job["ID"], "JobModifyIndex":
                      job["JobModifyIndex"], "Status": status, "StatusDescription": "", "FailedTGAllocs": None,
                      "BlockedEval": "", "CreateIndex": index, "ModifyIndex": index, "CreateTime": time.time_ns(),
                      "ModifyTime": time.time_ns()}
        self.evals[evaluation["ID"]] = evaluation
        return evaluation

    def _schedule(self, job: dict[str, Any], eval_id: str, fault: str | None) -> None:
        time.sleep(0.005)  # the scheduler picks the eval up a moment later
        with self._cond:
            evaluation = self.evals[eval_id]
            if fault == "block":
                blocked = self._new_eval(job, "queued-allocs", status="blocked")
                blocked["StatusDescription"] = "created to place remaining allocations"
                evaluation.update(Status="complete", BlockedEval=blocked["ID"], FailedTGAllocs={
                    g["Name"]: {"NodesEvaluated": 1, "NodesFiltered": 0, "NodesAvailable": {"dc1": 1},
                                "ClassFiltered": None, "ConstraintFiltered": None, "NodesExhausted": 1,
                                "ClassExhausted": None, "DimensionExhausted": {"memory": 1}, "QuotaExhausted": None,
                                "CoalescedFailures": 0} for g in job["TaskGroups"]},
                                  ModifyIndex=self._bump(), ModifyTime=time.time_ns())
                self._refresh_job(job)
                return
            for group in job["TaskGroups"]:
                for i in range(group["Count"]):
                    self._place(job, group, i, eval_id, fault)
            evaluation.update(Status="complete", ModifyIndex=self._bump(), ModifyTime=time.time_ns())
            self._refresh_job(job)

    def _place(self, job: dict[str, Any], group: dict[str, Any], index: int, eval_id: str, fault: str | None,
               previous: str = "") -> dict[str, Any]:
        alloc_id = str(uuid.uuid4())
        self.alloc_index = self._bump()
        task_states = {t["Name"]: {"State": "pending", "Failed": False, "Restarts": 0, "StartedAt": _rfc3339(None),
                                   "FinishedAt": _rfc3339(None), "LastRestart": _rfc3339(None), "Events": []}
                       for t in group["Tasks"]}
        alloc = {"ID": alloc_id, "EvalID": eval_id, "Name": f"{job['ID']}.{group['Name']}[{index}]",
                 "Namespace": job["Namespace"], "NodeID": "node-double-1", "NodeName": "double", "JobID": job["ID"],
                 "JobType": job["Type"], "JobVersion": job["Version"], "TaskGroup": group["Name"],
                 "DesiredStatus": "run", "DesiredDescription": "", "ClientStatus": "pending",
                 "ClientDescription": "", "TaskStates": task_states, "DeploymentStatus": None,
                 "FollowupEvalID": "", "NextAllocation": "", "PreviousAllocation": previous,
                 "RescheduleTracker": None, "PreemptedAllocations": None, "PreemptedByAllocation": "",
                 "CreateIndex": self.alloc_index, "ModifyIndex": self.alloc_index, "CreateTime": time.time_ns(),
                 "ModifyTime": time.time_ns(), "_index": index}
        self.allocs[alloc_id] = alloc
        threading.Thread(target=self._run_alloc, args=(job, group, alloc, fault), daemon=True).start()
        return alloc

    def _touch(self, alloc: dict[str, Any]) -> None:
        self.alloc_index = self._bump()
        alloc["ModifyIndex"], alloc["ModifyTime"] = self.alloc_index, time.time_ns()

    def _event(self, alloc: dict[str, Any], task: str, kind: str, **details: Any) -> None:
        event = {"Type": kind, "Time": time.time_ns(), "Message": details.pop("message", ""),
                 "DisplayMessage": details.pop("display", kind), "Details": {k: str(v).lower() if
                                                                            isinstance(v, bool) else str(v)
                                                                            for k, v in details.items()}}
        if "exit_code" in details:
            event["ExitCode"] = int(details["exit_code"])
        if details.get("fails_task"):
            event["FailsTask"] = True
        events = alloc["TaskStates"][task]["Events"]
        events.append(event)
        del events[:-10]

    def _run_alloc(self, job: dict[str, Any], group: dict[str, Any], alloc: dict[str, Any], fault: str | None) -> None:
        task = group["Tasks"][0]
        name = task["Name"]
        root = self._workdir / alloc["ID"]
        for sub in ("alloc/logs", f"{name}/local", f"{name}/secrets", f"{name}/tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        meta = {**(job.get("Meta") or {}), **(group.get("Meta") or {}), **(task.get("Meta") or {})}
        env = {**os.environ, **self.env,
               "NOMAD_JOB_ID": job["ID"], "NOMAD_JOB_PARENT_ID": job.get("ParentID", ""), "NOMAD_JOB_NAME": job["ID"],
               "NOMAD_ALLOC_ID": alloc["ID"], "NOMAD_ALLOC_NAME": alloc["Name"],
               "NOMAD_ALLOC_INDEX": str(alloc["_index"]), "NOMAD_GROUP_NAME": group["Name"], "NOMAD_TASK_NAME": name,
               "NOMAD_NAMESPACE": job["Namespace"], "NOMAD_REGION": "global", "NOMAD_DC": "dc1",
               "NOMAD_TASK_DIR": str(root / name / "local"), "NOMAD_ALLOC_DIR": str(root / "alloc"),
               "NOMAD_SECRETS_DIR": str(root / name / "secrets")}
        for key, value in meta.items():
            safe = _UNSAFE_ENV.sub("_", key)
            env[f"NOMAD_META_{safe}"] = env[f"NOMAD_META_{safe.upper()}"] = str(value)
        env.update({k: _INTERP.sub(lambda m: env.get(m.group(1), m.group(0)), v) for k, v in (task["Env"] or
                                                                                             {}).items()})
        config = task["Config"] or {}
        command = str(config.get("command", ""))
        command = self.python if command in ("python", "python3") else command
        args = [_INTERP.sub(lambda m: env.get(m.group(1), m.group(0)), str(a)) for a in config.get("args") or []]
        if fault == "fail":
            command, args = self.python, ["-c", "import sys; print('injected failure', file=sys.stderr); sys.exit(3)"]
        elif fault in ("hang", "lose"):
            command, args = self.python, ["-c", "import time; time.sleep(3600)"]
        policy = group["RestartPolicy"]
        restarts = 0
        while True:
            with self._cond:
                if alloc["ID"] in self._stopping:
                    return
                state = alloc["TaskStates"][name]
                self._event(alloc, name, "Received" if restarts == 0 else "Restarting")
                self._event(alloc, name, "Task Setup", message="Building Task Directory")
                out = open(root / "alloc/logs" / f"{name}.stdout.0", "ab")
                err = open(root / "alloc/logs" / f"{name}.stderr.0", "ab")
                try:
                    proc = subprocess.Popen([command, *args], cwd=root / name, env=env, stdout=out, stderr=err,
                                            start_new_session=True)
                except OSError as exc:
                    self._event(alloc, name, "Driver Failure", message=str(exc), fails_task=True)
                    state.update(State="dead", Failed=True, FinishedAt=_rfc3339(time.time()))
                    alloc["ClientStatus"] = "failed"
                    self._touch(alloc)
                    self._refresh_job(job)
                    return
                finally:
                    out.close()
                    err.close()
                self.processes_started += 1
                self._procs[alloc["ID"]] = proc
                state.update(State="running", StartedAt=_rfc3339(time.time()))
                self._event(alloc, name, "Started", message="Task started by client")
                alloc["ClientStatus"] = "running"
                self._touch(alloc)
                self._refresh_job(job)
            if fault == "lose":
                time.sleep(0.3)
                self._lose(job, group, alloc, name)
                return
            code = proc.wait()
            with self._cond:
                self._procs.pop(alloc["ID"], None)
                stopped = alloc["ID"] in self._stopping
                self._event(alloc, name, "Terminated", exit_code=code if code >= 0 else 137,
                            signal=-code if code < 0 else 0, oom_killed=False, display=f"Exit Code: {code}")
                if stopped:
                    self._event(alloc, name, "Killed", message="Task successfully killed")
                    state.update(State="dead", FinishedAt=_rfc3339(time.time()))
                    alloc["ClientStatus"] = "complete"
                elif code == 0:
                    state.update(State="dead", FinishedAt=_rfc3339(time.time()))
                    alloc["ClientStatus"] = "complete"
                elif restarts < policy["Attempts"]:
                    restarts += 1
                    state["Restarts"] = restarts
                    state["LastRestart"] = _rfc3339(time.time())
                    self._touch(alloc)
                else:
                    self._event(alloc, name, "Not Restarting", fails_task=True,
                                restart_reason=f"Exceeded allowed attempts {policy['Attempts']} in interval 24h0m0s "
                                               'and mode is "fail"')
                    state.update(State="dead", Failed=True, FinishedAt=_rfc3339(time.time()))
                    alloc["ClientStatus"] = "failed"
                if state["State"] == "dead":
                    self._touch(alloc)
                    self._refresh_job(job)
                    return
            time.sleep(policy["Delay"] / 1e9)

    def _lose(self, job: dict[str, Any], group: dict[str, Any], alloc: dict[str, Any], name: str) -> None:
        self._kill(alloc["ID"], grace_s=0)
        with self._cond:
            state = alloc["TaskStates"][name]
            state.update(State="dead", Failed=True, FinishedAt=_rfc3339(time.time()))
            alloc.update(ClientStatus="lost", DesiredStatus="stop",
                         DesiredDescription="alloc is lost since its node is down")
            replacement = self._place(job, group, alloc["_index"], alloc["EvalID"], None, previous=alloc["ID"])
            alloc["NextAllocation"] = replacement["ID"]
            self._touch(alloc)
            self._refresh_job(job)

    def _kill(self, alloc_id: str, grace_s: float | None = None) -> None:
        self._stopping.add(alloc_id)
        proc = self._procs.get(alloc_id)
        if proc is None:
            return
        for sig, wait in ((signal.SIGTERM, self.kill_timeout_s if grace_s is None else grace_s), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _stop_job(self, namespace: str, job_id: str, purge: bool) -> dict[str, Any]:
        job = self.jobs.get((namespace, job_id))
        if job is None:
            return {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "Index": 0}
        live = [a for a in self._job_allocs(namespace, job_id) if a["ClientStatus"] in ("pending", "running")]
        for alloc in live:
            alloc["DesiredStatus"] = "stop"
            for name in alloc["TaskStates"]:
                self._event(alloc, name, "Killing", message="Sent interrupt")
            self._touch(alloc)
        self._cond.release()
        try:
            for alloc in live:
                self._kill(alloc["ID"])
        finally:
            self._cond.acquire()
        for alloc in live:  # a task that never started is simply marked complete
            if alloc["ClientStatus"] == "pending":
                alloc["ClientStatus"] = "complete"
                self._touch(alloc)
        job["Stop"] = True
        evaluation = self._new_eval(job, "job-deregister", status="complete")
        job["ModifyIndex"] = job["JobModifyIndex"] = self._bump()
        if purge:
            del self.jobs[(namespace, job_id)]
        else:
            self._refresh_job(job)
            job["Status"] = "dead" if not any(a["ClientStatus"] == "running" for a in
                                              self._job_allocs(namespace, job_id)) else job["Status"]
        return {"EvalID": evaluation["ID"], "EvalCreateIndex": evaluation["CreateIndex"],
                "JobModifyIndex": job["JobModifyIndex"], "Index": self.index}

    # -- HTTP ------------------------------------------------------------------------------------------------

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        raw_path = handler.path
        with self._cond:
            self.requests.append((handler.command, raw_path))
        length = int(handler.headers.get("Content-Length") or 0)
        body_bytes = handler.rfile.read(length) if length else b""
        split = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        try:
            if self.acl_token is not None:
                token = handler.headers.get("X-Nomad-Token") or \
                    (handler.headers.get("Authorization") or "").removeprefix("Bearer ")
                if token != self.acl_token:
                    raise HTTPError(403, "ACL token not found")
            status, payload, index = self._route(handler.command, unquote(split.path), query, body_bytes)
        except HTTPError as exc:
            data = exc.text.encode()
            handler.send_response(exc.status)
            handler.send_header("Content-Type", "text/plain; charset=utf-8")
            handler.send_header("Content-Length", str(len(data)))
            handler.end_headers()
            handler.wfile.write(data)
            return
        if isinstance(payload, bytes):
            data, content_type = payload, "text/plain; charset=utf-8"
        else:
            data = json.dumps(payload, indent=4 if "pretty" in query else None).encode()
            content_type = "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("X-Nomad-Index", str(index))
        handler.send_header("X-Nomad-KnownLeader", "true")
        handler.send_header("X-Nomad-LastContact", "0")
        handler.end_headers()
        handler.wfile.write(data)

    def _blocking(self, query: dict[str, str], read: Callable[[], tuple[Any, int]]) -> tuple[int, Any, int]:
        """Answer ``read()``; with ``index``, wait until its index passes it or ``wait`` runs out."""
        try:
            min_index = int(query.get("index", "0") or 0)
        except ValueError:
            raise HTTPError(400, "Invalid index") from None
        try:
            wait = min(go_duration(query["wait"]), MAX_WAIT_S) if query.get("wait") else MAX_WAIT_S
        except ValueError:
            raise HTTPError(400, "Invalid wait time") from None
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                payload, index = read()
                remaining = deadline - time.monotonic()
                if min_index <= 0 or index > min_index or remaining <= 0:
                    return 200, payload, index
                self._cond.wait(remaining)

    def _route(self, method: str, path: str, query: dict[str, str], body: bytes) -> tuple[int, Any, int]:
        namespace = query.get("namespace") or "default"

        def parsed_body() -> dict[str, Any]:
            if not body:
                raise HTTPError(400, "Request body is empty")
            try:
                value = json.loads(body)
            except ValueError as exc:
                raise HTTPError(400, f"Failed to decode request body: {exc}") from None
            if not isinstance(value, dict):
                raise HTTPError(400, "Failed to decode request body: expected an object")
            return value

        if path == "/v1/jobs":
            if method == "GET":
                prefix, with_meta = query.get("prefix", ""), query.get("meta", "").lower() in ("1", "t", "true")
                return self._blocking(query, lambda: ([self._stub(j, with_meta) for (ns, jid), j in
                                                       sorted(self.jobs.items()) if ns == namespace and
                                                       jid.startswith(prefix)], self.index))
            if method in ("PUT", "POST"):
                request = parsed_body()
                job = request.get("Job") or {}
                if not job.get("ID"):
                    raise HTTPError(400, "Job ID hasn't been provided")
                with self._cond:
                    job.setdefault("Namespace", namespace)
                    stored = self._register(job)
                    evaluation = None if job.get("ParameterizedJob") or job.get("Periodic") else \
                        self._new_eval(stored, "job-register", status="complete")
                return 200, {"EvalID": evaluation["ID"] if evaluation else "", "EvalCreateIndex":
                             evaluation["CreateIndex"] if evaluation else 0, "JobModifyIndex":
                             stored["JobModifyIndex"], "Warnings": "", "Index": self.index, "KnownLeader": False,
                             "LastContact": 0}, self.index
            raise HTTPError(405, "Invalid method")
        if path == "/v1/jobs/parse":
            if method not in ("PUT", "POST"):
                raise HTTPError(405, "Invalid method")
            request = parsed_body()
            if not request.get("JobHCL"):
                raise HTTPError(400, "Job spec is empty")
            try:
                return 200, hcl_to_job(request["JobHCL"]), self.index
            except Exception as exc:
                raise HTTPError(400, f"Failed to parse job: {exc}") from None
        if path.startswith("/v1/job/"):
            rest = path[len("/v1/job/"):]
            job_id, suffix = rest, ""
            for candidate in _SUFFIXES:
                if rest.endswith("/" + candidate):
                    job_id, suffix = rest[: -len(candidate) - 1], candidate
                    break
            return self._job_route(method, namespace, job_id, suffix, query, parsed_body)
        if path.startswith("/v1/evaluation/"):
            eval_id = path[len("/v1/evaluation/"):]

            def read_eval() -> tuple[Any, int]:
                if eval_id not in self.evals:
                    raise HTTPError(404, "eval not found")
                return self.evals[eval_id], self.evals[eval_id]["ModifyIndex"]

            return self._blocking(query, read_eval)
        if path.startswith("/v1/allocation/"):
            alloc_id = path[len("/v1/allocation/"):]

            def read_alloc() -> tuple[Any, int]:
                if alloc_id not in self.allocs:
                    raise HTTPError(404, "alloc not found")
                alloc = self.allocs[alloc_id]
                return self._public(alloc), alloc["ModifyIndex"]

            return self._blocking(query, read_alloc)
        if path.startswith("/v1/client/fs/logs/"):
            return 200, self._logs(path[len("/v1/client/fs/logs/"):], query), self.index
        raise HTTPError(404, "Invalid URL path")

    def _job_route(self, method: str, namespace: str, job_id: str, suffix: str, query: dict[str, str],
                   parsed_body: Callable[[], dict[str, Any]]) -> tuple[int, Any, int]:
        if suffix == "dispatch":
            if method not in ("PUT", "POST"):
                raise HTTPError(405, "Invalid method")
            body = parsed_body()
            if body.get("JobID") and body["JobID"] != job_id:
                raise HTTPError(400, "Job ID does not match")
            with self._cond:
                self.dispatch_requests.append({"job_id": job_id, "query": dict(query), "body": body})
                result = self._dispatch(namespace, job_id, body, query)
            return 200, result, result["Index"]
        if suffix == "allocations":
            return self._blocking(query, lambda: ([self._public(a) for a in self._job_allocs(namespace, job_id)],
                                                  self.alloc_index))
        if suffix == "evaluations":
            return self._blocking(query, lambda: ([e for e in self.evals.values() if e["JobID"] == job_id and
                                                   e["Namespace"] == namespace], self.index))
        if suffix == "summary":
            return self._blocking(query, lambda: self._summary(namespace, job_id))
        if suffix == "" and method == "GET":
            return self._blocking(query, lambda: (lambda j: (j, j["ModifyIndex"]))(self._job(namespace, job_id)))
        if suffix == "" and method == "DELETE":
            purge = query.get("purge", "false")
            if purge.lower() not in ("1", "t", "true", "0", "f", "false", ""):
                raise HTTPError(500, f'Failed to parse value of "purge" ({purge}): invalid syntax')
            with self._cond:
                result = self._stop_job(namespace, job_id, purge.lower() in ("1", "t", "true"))
            return 200, result, result["Index"]
        if suffix == "" and method in ("PUT", "POST"):
            job = parsed_body().get("Job") or {}
            if job.get("ID") != job_id:
                raise HTTPError(400, "Job ID does not match name")
            with self._cond:
                stored = self._register({**job, "Namespace": namespace})
            return 200, {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": stored["JobModifyIndex"],
                         "Warnings": "", "Index": self.index}, self.index
        raise HTTPError(405, "Invalid method")

    def _summary(self, namespace: str, job_id: str) -> tuple[Any, int]:
        job = self._job(namespace, job_id)
        groups = {}
        for group in job["TaskGroups"]:
            allocs = [a for a in self._job_allocs(namespace, job_id) if a["TaskGroup"] == group["Name"]]

            def count(status: str, allocs: list[dict[str, Any]] = allocs) -> int:
                return sum(1 for a in allocs if a["ClientStatus"] == status)

            queued = 1 if job["Status"] == "pending" and not allocs and any(
                e["Status"] == "blocked" for e in self.evals.values() if e["JobID"] == job_id) else 0
            groups[group["Name"]] = {"Queued": queued, "Complete": count("complete"), "Failed": count("failed"),
                                     "Running": count("running"), "Starting": count("pending"), "Lost": count("lost"),
                                     "Unknown": 0}
        children = {"Pending": 0, "Running": 0, "Dead": 0}
        for child in self.jobs.values():
            if child.get("ParentID") == job_id and child["Namespace"] == namespace:
                children[child["Status"].capitalize()] = children.get(child["Status"].capitalize(), 0) + 1
        return ({"JobID": job_id, "Namespace": namespace, "Summary": groups, "Children": children,
                 "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"]}, job["ModifyIndex"])

    def _stub(self, job: dict[str, Any], with_meta: bool) -> dict[str, Any]:
        stub = {k: job.get(k) for k in ("ID", "ParentID", "Name", "Namespace", "Datacenters", "Type", "Priority",
                                        "Stop", "Status", "CreateIndex", "ModifyIndex", "JobModifyIndex",
                                        "SubmitTime")}
        stub.update(Periodic=bool(job.get("Periodic")), ParameterizedJob=bool(job.get("ParameterizedJob")),
                    StatusDescription="")
        if with_meta:
            stub["Meta"] = job.get("Meta")
        return stub

    @staticmethod
    def _public(alloc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in alloc.items() if not k.startswith("_")}

    def _logs(self, alloc_id: str, query: dict[str, str]) -> Any:
        task, kind = query.get("task"), query.get("type")
        if not task:
            raise HTTPError(400, "must provide task name")
        if kind not in ("stdout", "stderr"):
            raise HTTPError(400, "must provide log type (stdout/stderr)")
        origin = query.get("origin", "start")
        if origin not in ("start", "end"):
            raise HTTPError(400, "origin must be start or end")
        with self._cond:
            alloc = self.allocs.get(alloc_id)
            if alloc is None:
                raise HTTPError(404, f'Unknown allocation "{alloc_id}"')
            if task not in alloc["TaskStates"]:
                raise HTTPError(400, f'unknown task name "{task}"')
            if alloc["TaskStates"][task]["StartedAt"] == _rfc3339(None):
                raise HTTPError(404, f'task "{task}" not started yet. No logs available')
        path = self._workdir / alloc_id / "alloc" / "logs" / f"{task}.{kind}.0"
        data = path.read_bytes() if path.exists() else b""
        offset = int(query.get("offset", "0") or 0)
        data = data[offset:] if origin == "start" else data[max(0, len(data) - offset):] if offset else b""
        if query.get("plain", "").lower() in ("1", "t", "true"):
            return data
        return {"File": f"alloc/logs/{task}.{kind}.0", "Offset": len(data), "Data": base64.b64encode(data).decode()}


_SERVER_FIELDS = {"Stop", "Status", "CreateIndex", "ModifyIndex", "JobModifyIndex", "Version", "SubmitTime",
                  "Dispatched", "ParentID", "StatusDescription"}
