"""Constants, records and small helpers shared by the Nomad double's modules."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import _http

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
STUB_FIELDS = ("ID", "EvalID", "Name", "Namespace", "NodeID", "NodeName", "JobID", "JobType", "JobVersion",
                "TaskGroup", "AllocatedResources", "DesiredStatus", "DesiredDescription", "ClientStatus",
                "ClientDescription", "DesiredTransition", "TaskStates", "DeploymentStatus", "FollowupEvalID",
                "NextAllocation", "RescheduleTracker", "PreemptedAllocations", "PreemptedByAllocation",
                "CreateIndex", "ModifyIndex", "CreateTime", "ModifyTime")
RUNTIME_FIELDS = ("Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex",
                   "ModifyIndex", "JobModifyIndex")
GO_TRUE, GO_FALSE = ("1", "t", "T", "TRUE", "true", "True"), ("0", "f", "F", "FALSE", "false", "False")
ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")
RUNTIME_REF = re.compile(r"\$\{([^{}]+)\}")



def now_ns() -> int:
    return time.time_ns()


def rfc3339(ns: int) -> str:
    stamp = dt.datetime.fromtimestamp(ns / 1e9, dt.timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".") + "Z"


def go_json(obj: Any, pretty: bool = False) -> bytes:
    """JSON as Nomad's HTTP API writes it: its codec handles set ``HTMLCharsAsIs`` (``nomad/structs/
    handlers.go``), so <, > and & are not escaped, unlike encoding/json; ``?pretty`` adds a final newline."""
    return _http.go_json(obj, pretty, html_escape=False)


def parse_bool(value: str, name: str) -> bool:
    if value in GO_TRUE:
        return True
    if value in GO_FALSE:
        return False
    raise HTTPError(400, f'Failed to parse value of "{name}" ({value}): strconv.ParseBool: parsing '
                         f'"{value}": invalid syntax')


def go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    return {str: "string", int: "number", float: "number", list: "array", dict: "object"}.get(type(value),
                                                                                            "value")


def b64decode(text: str) -> bytes:
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


def alloc_terminal(alloc: dict[str, Any]) -> bool:
    server_says = alloc["DesiredStatus"] in ("stop", "evict")
    return server_says or alloc["ClientStatus"] in ("complete", "failed", "lost")


def is_parent(job: dict[str, Any]) -> bool:
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
    drop: bool = False  # close the connection without answering (an agent going away mid-request)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes
    ambiguous: bool = False  # applied, but the caller gets the leader-loss answer instead of the reply


@dataclass
class JobRec:
    job: dict[str, Any]
    summary_index: int
    queued: dict[str, int] = field(default_factory=dict)
    fault: str | None = None


@dataclass
class TaskRun:
    name: str
    spec: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    exited: threading.Event = field(default_factory=threading.Event)
    template_env: dict[str, str] = field(default_factory=dict)
    oom_killed: bool = False  # the last run went past its memory limit (client.py _execute)


@dataclass
class AllocRec:
    alloc: dict[str, Any]
    job: dict[str, Any]
    key: tuple[str, str]
    root: Path
    fault: str | None
    node: dict[str, Any] = field(default_factory=dict)  # the node it was placed on (see ``nodes``)
    tasks: dict[str, TaskRun] = field(default_factory=dict)
    kill: threading.Event = field(default_factory=threading.Event)
    lost: bool = False

    @property
    def group(self) -> dict[str, Any]:
        return next(g for g in self.job["TaskGroups"] if g["Name"] == self.alloc["TaskGroup"])


def job_spec(job: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in job.items() if k not in RUNTIME_FIELDS}


def interpolate(text: str, view: dict[str, str]) -> str:
    """Nomad's runtime interpolation: ``${NOMAD_META_x}``, ``${node.unique.name}``...; unknown ones stay."""
    return RUNTIME_REF.sub(lambda m: view.get(m.group(1).strip(), m.group(0)), text)


def send_signal(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
