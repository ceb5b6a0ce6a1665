"""Nomad HCL2 jobspecs to API Job JSON, canonicalized the way the agent does before it stores a job.

python-hcl2 parses the text; this module evaluates the little of HCL that jobspecs use: ``variable``
blocks (defaults, overridden like ``-var k=v``), ``locals``, ``${var.x}`` / ``${local.x}`` references,
escapes and heredocs. Runtime interpolations (``${NOMAD_META_x}``, ``${node.unique.name}``,
``${attr.kernel.name}``...) are left in place for the client, as Nomad's jobspec2 parser does.

Task ``template`` blocks become ``Templates`` and ``vault`` blocks ``Vault`` (a job or group block applies to
every task without its own, as jobspec2 pushes it down). :func:`canonicalize` fills the defaults of
``api.Job.Canonicalize`` (restart/reschedule policies per job type as in ``nomad/structs`` and
``api/tasks.go``, Name = ID, ``optional`` payload, resources, log config, 5 s kill timeout, ``Vault`` and
``Templates`` fields); :func:`validate_job` returns the messages of ``structs.Job.Validate`` for
the rules a parameterized batch job can break. Durations in Job JSON are int64 nanoseconds.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import hcl2
from hcl2.utils import SerializationOptions, process_escape_sequences

from .admission import api_canonicalize, networks, services, update

SECOND_NS = 1_000_000_000
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": SECOND_NS,
             "m": 60 * SECOND_NS, "h": 3600 * SECOND_NS}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_INTERPOLATION = re.compile(r"\$\$\{|%%\{|\$\{((?:[^{}\"]|\"[^\"]*\")*)\}")
_REFERENCE = re.compile(r"(var|local)\.([A-Za-z_][A-Za-z0-9_-]*)((?:\[[^\]]+\])*)")
_HEREDOC = re.compile(r"<<(-?)([A-Za-z][A-Za-z0-9._-]*)\r?\n(.*?)(?:\r?\n)?[ \t]*\2\s*\Z", re.S)

JOB_TYPES = ("service", "batch", "system", "sysbatch")
PAYLOAD_MODES = ("optional", "required", "forbidden")


class JobSpecError(ValueError):
    """A jobspec that does not parse or evaluate (Nomad answers 400 "Failed to parse job: ...")."""


# -- durations -------------------------------------------------------------------------------------------

def parse_duration_ns(text: str) -> int:
    """Nanoseconds in a Go duration string ("15s", "1m30s", "24h", "0"); ValueError as time.ParseDuration."""
    body, sign = (text[1:], -1) if text[:1] == "-" else (text.lstrip("+"), 1)
    if body == "0":
        return 0
    total, pos = 0.0, 0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            break
        total += float(match.group(1)) * _UNITS_NS[match.group(2)]
        pos = match.end()
    if not body or pos != len(body):
        raise ValueError(f'time: invalid duration "{text}"')
    return sign * round(total)


def format_duration(ns: int) -> str:
    """A duration as Go's ``time.Duration.String`` writes it ("15s", "24h0m0s", "500ms")."""
    if ns == 0:
        return "0s"
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < SECOND_NS:
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if ns >= size:
                return f"{sign}{ns / size:.9f}".rstrip("0").rstrip(".") + unit
    hours, rest = divmod(ns, 3600 * SECOND_NS)
    minutes, rest = divmod(rest, 60 * SECOND_NS)
    seconds = f"{rest / SECOND_NS:.9f}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{seconds}"
    return f"{sign}{minutes}m{seconds}" if minutes else sign + seconds


def _duration(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise JobSpecError(f"Failed to parse job: invalid duration {value!r}")
    if isinstance(value, int | float):
        return int(value)
    try:
        return parse_duration_ns(str(value))
    except ValueError as exc:
        raise JobSpecError(f"Failed to parse job: {exc}") from None


# -- evaluating python-hcl2's output ---------------------------------------------------------------------

class _Scope:
    """Variables and locals, and the evaluation of python-hcl2's serialized values against them."""

    def __init__(self, doc: dict[str, Any], overrides: dict[str, Any]) -> None:
        self.values: dict[str, dict[str, Any]] = {"var": {}, "local": {}}
        for name, body in _labelled(doc, "variable"):
            given = overrides.get(name)
            if given is not None:
                self.values["var"][name] = _typed(given, body.get("type"))
            elif "default" in body:
                self.values["var"][name] = self.value(body["default"])
            else:
                raise JobSpecError(f'Failed to parse job: Required variable "{name}" is not set')
        pending = {k: v for block in doc.get("locals") or [] for k, v in block.items()
                   if not k.startswith("__")}
        for _ in range(len(pending) + 1):  # locals may refer to each other, in any order
            for name, raw in list(pending.items()):
                try:
                    self.values["local"][name] = self.value(raw)
                    del pending[name]
                except JobSpecError:
                    continue
        if pending:
            raise JobSpecError(f"Failed to parse job: cannot evaluate locals {sorted(pending)}")

    def value(self, raw: Any) -> Any:
        """The value of one serialized attribute: quoted strings, ``${expr}``, lists, maps, blocks."""
        if isinstance(raw, list):
            return [self.value(item) for item in raw]
        if isinstance(raw, dict):
            return {_unquote(k): self.value(v) for k, v in raw.items() if not k.startswith("__")}
        if not isinstance(raw, str):
            return raw
        if len(raw) >= 2 and raw[0] == raw[-1] == '"':
            body = raw[1:-1]
            heredoc = _HEREDOC.match(body)
            if heredoc:
                return self.template(_heredoc(heredoc))
            return self.template(process_escape_sequences(body))
        if raw.startswith("${") and raw.endswith("}"):
            return self.template(raw)
        return raw  # a bare keyword such as a variable's `type = string`

    def template(self, text: str) -> Any:
        """Interpolate ``var.``/``local.`` references; a lone ``${ref}`` keeps the value's own type."""
        whole = _INTERPOLATION.fullmatch(text)
        if whole and whole.group(1) is not None:
            found = self.reference(whole.group(1).strip())
            if found is not _UNKNOWN:
                return found

        def replace(match: re.Match[str]) -> str:
            if match.group(0) in ("$${", "%%{"):
                return match.group(0)[1:]
            found = self.reference(match.group(1).strip())
            if found is _UNKNOWN:
                return match.group(0)  # a runtime interpolation: the client fills it in
            return found if isinstance(found, str) else json.dumps(found)

        return _INTERPOLATION.sub(replace, text)

    def reference(self, expr: str) -> Any:
        match = _REFERENCE.fullmatch(expr)
        if match is None:
            return _UNKNOWN
        kind, name, indexes = match.groups()
        if name not in self.values[kind]:
            what = "variable" if kind == "var" else "local value"
            raise JobSpecError(f"Failed to parse job: Unsupported attribute; there is no {what} "
                               f'named "{name}"')
        value = self.values[kind][name]
        for index in re.findall(r"\[([^\]]+)\]", indexes):
            key = index.strip().strip('"')
            value = value[int(key)] if isinstance(value, list) else value[key]
        return value


_UNKNOWN = object()


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def _heredoc(match: re.Match[str]) -> str:
    text = match.group(3) + "\n"
    if match.group(1):  # <<- strips the common leading whitespace
        lines = text.split("\n")
        indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
        cut = min(indents, default=0)
        text = "\n".join(line[cut:] for line in lines)
    return text


def _typed(given: Any, type_: Any) -> Any:
    """A ``-var`` string converted to the variable's declared type."""
    if not isinstance(given, str):
        return given
    kind = str(type_ or "string").strip("${}")
    if kind == "string" or (kind == "any" and not given.startswith(("[", "{"))):
        return given
    if kind == "number":
        return float(given) if "." in given else int(given)
    if kind == "bool":
        return given == "true"
    try:
        return _Scope({}, {}).value(hcl2.loads(f"v = {given}\n", serialization_options=_OPTIONS)["v"])
    except Exception as exc:
        message = f"Failed to parse job: invalid value {given!r} for a {kind} variable: {exc}"
        raise JobSpecError(message) from None


_OPTIONS = SerializationOptions(with_comments=False)


def var_file_values(text: str) -> dict[str, Any]:
    """The values of a var-file (``name = value`` lines in HCL), as plain Python values."""
    raw = hcl2.loads(text, serialization_options=_OPTIONS)
    scope = _Scope({}, {})
    return {k: scope.value(v) for k, v in raw.items() if not k.startswith("__")}


def _labelled(body: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """Labelled blocks (``job "x" {}``) as (label, body) pairs, in order."""
    return [(_unquote(label), inner) for block in body.get(name) or [] if isinstance(block, dict)
            for label, inner in block.items() if not label.startswith("__")]


def _block(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """An unlabelled block (``restart {}``) or a map attribute (``meta = {}``), merged when repeated."""
    found = body.get(name)
    if isinstance(found, dict):
        return found
    if isinstance(found, list) and found and all(isinstance(b, dict) for b in found):
        merged: dict[str, Any] = {}
        for block in found:
            merged.update(block)
        return merged
    return None


def _strings(mapping: dict[str, Any] | None) -> dict[str, str] | None:
    if mapping is None:
        return None
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in mapping.items()}


# -- HCL to API JSON -------------------------------------------------------------------------------------

def hcl_to_job(text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parse one jobspec into API Job JSON (not yet canonicalized); JobSpecError when it is not one."""
    if not text.strip():
        raise JobSpecError("Job spec is empty")
    try:
        doc = hcl2.loads(text, serialization_options=_OPTIONS)
    except Exception as exc:
        raise JobSpecError(f"Failed to parse job: {exc}") from None
    jobs = _labelled(doc, "job")
    if len(jobs) != 1:
        raise JobSpecError(f"Failed to parse job: expected exactly one job block, found {len(jobs)}")
    scope = _Scope(doc, dict(variables or {}))
    job_id, raw = jobs[0]
    body = scope.value(raw)
    job: dict[str, Any] = {
        "ID": job_id, "Name": body.get("name") or job_id, "Type": body.get("type"),
        "Region": body.get("region"), "Namespace": body.get("namespace"), "Priority": body.get("priority"),
        "Datacenters": body.get("datacenters"), "NodePool": body.get("node_pool"),
        "AllAtOnce": body.get("all_at_once"), "Meta": _strings(_block(body, "meta")),
        "Periodic": _periodic(_block(body, "periodic")), "Constraints": _constraints(body),
        "Update": update(body),
        "ParameterizedJob": _parameterized(_block(body, "parameterized")),
        "TaskGroups": [_group(name, group) for name, group in _labelled(body, "group")],
    }
    _push_down_vault(job, _vault(_block(body, "vault")), body)
    return job


def _vault(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``vault`` block as ``api.Vault`` (defaults are filled by :func:`canonicalize`)."""
    if block is None:
        return None
    return {"Role": block.get("role"), "Policies": block.get("policies"), "Namespace": block.get("namespace"),
            "Cluster": block.get("cluster"), "Env": block.get("env"), "DisableFile": block.get("disable_file"),
            "ChangeMode": block.get("change_mode"), "ChangeSignal": block.get("change_signal"),
            "AllowTokenExpiration": block.get("allow_token_expiration")}


def _push_down_vault(job: dict[str, Any], job_vault: dict[str, Any] | None, body: dict[str, Any]) -> None:
    """Job and group ``vault`` blocks apply to every task without its own, as jobspec2 does (API JSON has
    ``Vault`` on tasks only)."""
    for group, (_, group_body) in zip(job["TaskGroups"], _labelled(body, "group"), strict=True):
        group_vault = _vault(_block(group_body, "vault")) or job_vault
        for task in group["Tasks"]:
            if task["Vault"] is None and group_vault is not None:
                task["Vault"] = copy.deepcopy(group_vault)


def _periodic(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if block is None:
        return None
    crons = block.get("crons")
    return {"Enabled": block.get("enabled"), "Spec": block.get("cron") or "", "Specs": crons,
            "SpecType": "cron", "ProhibitOverlap": block.get("prohibit_overlap"),
            "TimeZone": block.get("time_zone")}


def _constraints(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """``constraint`` blocks as ``api.Constraint`` (jobspec2: ``attribute``, ``operator`` default "=", ``value``;
    the ``distinct_hosts``/``distinct_property`` shorthands become that operator)."""
    found = []
    for block in body.get("constraint") or []:
        if not isinstance(block, dict):
            continue
        operand = str(block.get("operator") or "=")
        if block.get("distinct_hosts"):
            operand = "distinct_hosts"
        elif block.get("distinct_property") is not None:
            operand = "distinct_property"
            block = {**block, "attribute": block["distinct_property"]}
        found.append({"LTarget": str(block.get("attribute") or ""), "RTarget": str(block.get("value") or ""),
                      "Operand": operand})
    return found or None


def _parameterized(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return {"Payload": block.get("payload") or "", "MetaRequired": block.get("meta_required"),
            "MetaOptional": block.get("meta_optional")}


def _restart(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return {"Attempts": block.get("attempts"), "Delay": _duration(block.get("delay")),
            "Interval": _duration(block.get("interval")), "Mode": block.get("mode"),
            "RenderTemplates": block.get("render_templates")}


def _reschedule(block: dict[str, Any] | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return {"Attempts": block.get("attempts"), "Interval": _duration(block.get("interval")),
            "Delay": _duration(block.get("delay")), "DelayFunction": block.get("delay_function"),
            "MaxDelay": _duration(block.get("max_delay")), "Unlimited": block.get("unlimited")}


def _group(name: str, body: dict[str, Any]) -> dict[str, Any]:
    return {"Name": name, "Count": body.get("count"), "Meta": _strings(_block(body, "meta")),
            "Networks": networks(body), "Services": services(body), "Update": update(body),
            "RestartPolicy": _restart(_block(body, "restart")),
            "ReschedulePolicy": _reschedule(_block(body, "reschedule")),
            "Constraints": _constraints(body), "Volumes": _volumes(body), "Consul": _consul(_block(body, "consul")),
            "Tasks": [_task(task, inner) for task, inner in _labelled(body, "task")]}


def _volumes(body: dict[str, Any]) -> dict[str, Any] | None:
    """A group's ``volume`` blocks as api.VolumeRequest (Job.Register checks their mount capabilities)."""
    found = {name: {"Name": name, "Type": volume.get("type") or "", "Source": volume.get("source") or "",
                    "ReadOnly": bool(volume.get("read_only")), "Sticky": bool(volume.get("sticky")),
                    "AccessMode": volume.get("access_mode") or "",
                    "AttachmentMode": volume.get("attachment_mode") or "", "MountOptions": None,
                    "PerAlloc": bool(volume.get("per_alloc"))}
             for name, volume in _labelled(body, "volume")}
    return found or None


def _consul(block: dict[str, Any] | None) -> dict[str, Any] | None:
    """A ``consul`` block as api.Consul (Canonicalize: cluster "default"); since Nomad 1.10 a task gets a Consul
    workload identity for its templates only with one (job_endpoint_hook_implicit_identities.go)."""
    if block is None:
        return None
    return {"Namespace": block.get("namespace") or "", "Cluster": block.get("cluster") or "default",
            "Partition": block.get("partition") or ""}


def _task(name: str, body: dict[str, Any]) -> dict[str, Any]:
    resources = _block(body, "resources") or {}
    logs = _block(body, "logs")
    payload = _block(body, "dispatch_payload")
    templates = [{"SourcePath": t.get("source"), "DestPath": t.get("destination"),
                  "EmbeddedTmpl": t.get("data"), "ChangeMode": t.get("change_mode") or "restart",
                  "ChangeSignal": t.get("change_signal") or "", "Splay": _duration(t.get("splay") or "5s"),
                  "Perms": t.get("perms") or "0644", "LeftDelim": t.get("left_delimiter") or "{{",
                  "RightDelim": t.get("right_delimiter") or "}}", "Envvars": bool(t.get("env")),
                  "Once": bool(t.get("once")), "ErrMissingKey": bool(t.get("error_on_missing_key"))}
                 for t in body.get("template") or [] if isinstance(t, dict)]
    return {
        "Name": name, "Driver": body.get("driver"), "User": body.get("user"), "Constraints": _constraints(body),
        "Config": _block(body, "config") or {}, "Env": _strings(_block(body, "env")),
        "Meta": _strings(_block(body, "meta")), "RestartPolicy": _restart(_block(body, "restart")),
        "KillTimeout": _duration(body.get("kill_timeout")), "KillSignal": body.get("kill_signal"),
        "Leader": body.get("leader"),
        "Resources": {"CPU": resources.get("cpu"), "Cores": resources.get("cores"),
                      "MemoryMB": resources.get("memory"), "MemoryMaxMB": resources.get("memory_max")},
        "LogConfig": None if logs is None else {"MaxFiles": logs.get("max_files"),
                                                "MaxFileSizeMB": logs.get("max_file_size"),
                                                "Disabled": logs.get("disabled")},
        "Templates": templates or None, "Vault": _vault(_block(body, "vault")),
        "DispatchPayload": None if payload is None else {"File": payload.get("file") or ""},
        "VolumeMounts": [{"Volume": mount.get("volume") or "", "Destination": mount.get("destination") or "",
                          "ReadOnly": bool(mount.get("read_only")),
                          "PropagationMode": mount.get("propagation_mode") or "private", "SELinuxLabel": ""}
                         for mount in body.get("volume_mount") or [] if isinstance(mount, dict)] or None,
        "Consul": _consul(_block(body, "consul")),
    }


# -- canonicalization and validation ---------------------------------------------------------------------

def _restart_default(job_type: str) -> dict[str, Any]:
    if job_type in ("service", "system"):
        return {"Attempts": 2, "Delay": 15 * SECOND_NS, "Interval": 1800 * SECOND_NS, "Mode": "fail",
                "RenderTemplates": False}
    return {"Attempts": 3, "Delay": 15 * SECOND_NS, "Interval": 86400 * SECOND_NS, "Mode": "fail",
            "RenderTemplates": False}


def _reschedule_default(job_type: str) -> dict[str, Any] | None:
    if job_type == "batch":
        return {"Attempts": 1, "Interval": 86400 * SECOND_NS, "Delay": 5 * SECOND_NS,
                "DelayFunction": "constant", "MaxDelay": 0, "Unlimited": False}
    if job_type == "service":
        return {"Attempts": 0, "Interval": 0, "Delay": 30 * SECOND_NS, "DelayFunction": "exponential",
                "MaxDelay": 3600 * SECOND_NS, "Unlimited": True}
    return None  # system and sysbatch jobs never reschedule


def _merge(defaults: dict[str, Any] | None, given: dict[str, Any] | None) -> dict[str, Any] | None:
    if defaults is None:
        return copy.deepcopy(given)
    merged = dict(defaults)
    merged.update({k: v for k, v in (given or {}).items() if v is not None})
    return merged


def _fill(target: dict[str, Any], defaults: dict[str, Any]) -> None:
    for key, value in defaults.items():
        if target.get(key) is None:
            target[key] = copy.deepcopy(value)


_JOB_DEFAULTS: dict[str, Any] = {
    "Region": "global", "Namespace": "default", "Type": "service", "Priority": 50, "AllAtOnce": False,
    "Datacenters": ["*"], "NodePool": "", "Constraints": None, "Affinities": None, "Spreads": None,
    "Update": None, "Multiregion": None, "Periodic": None, "ParameterizedJob": None, "Dispatched": False,
    "DispatchIdempotencyToken": "", "Payload": None, "Meta": None, "ConsulToken": "", "ConsulNamespace": "",
    "VaultToken": "", "VaultNamespace": "", "NomadTokenID": "", "Status": "", "StatusDescription": "",
    "Stable": False, "Version": 0, "SubmitTime": 0, "CreateIndex": 0, "ModifyIndex": 0, "JobModifyIndex": 0,
    "ParentID": "", "Stop": False, "UI": None,
}
_GROUP_DEFAULTS: dict[str, Any] = {
    "Count": 1, "Constraints": None, "Affinities": None, "Spreads": None, "Volumes": None, "Update": None,
    "Migrate": None, "Networks": None, "Meta": None, "Services": None, "ShutdownDelay": None,
    "EphemeralDisk": {"Sticky": False, "Migrate": False, "SizeMB": 300}, "Scaling": None, "Consul": None,
}
_TASK_DEFAULTS: dict[str, Any] = {
    "Driver": "", "User": "", "Lifecycle": None, "Config": {}, "Constraints": None, "Affinities": None,
    "Env": None, "Services": None, "Meta": None, "KillTimeout": 5 * SECOND_NS, "KillSignal": "",
    "Artifacts": None, "Vault": None, "Templates": None, "DispatchPayload": None, "VolumeMounts": None,
    "Leader": False, "ShutdownDelay": 0, "Kind": "", "ScalingPolicies": None, "Identities": None, "Consul": None,
}

# api.Vault.Canonicalize and api.Template.Canonicalize
_VAULT_DEFAULTS: dict[str, Any] = {
    "Role": "", "Policies": None, "Namespace": "", "Cluster": "default", "Env": True, "DisableFile": False,
    "ChangeMode": "restart", "ChangeSignal": "SIGHUP", "AllowTokenExpiration": False,
}
_TEMPLATE_DEFAULTS: dict[str, Any] = {
    "SourcePath": "", "DestPath": "", "EmbeddedTmpl": "", "ChangeMode": "restart", "ChangeSignal": "",
    "Splay": 5 * SECOND_NS, "Perms": "0644", "LeftDelim": "{{", "RightDelim": "}}", "Envvars": False,
    "Once": False, "ErrMissingKey": False,
}


def canonicalize(job: dict[str, Any]) -> dict[str, Any]:
    """Fill defaults in place, as ``api.Job.Canonicalize`` does before a job reaches the state store."""
    _fill(job, _JOB_DEFAULTS)
    if not job.get("Name"):
        job["Name"] = job.get("ID")
    job_type = job["Type"]
    if job["Periodic"] is not None:
        _fill(job["Periodic"], {"Enabled": True, "Spec": "", "SpecType": "cron", "ProhibitOverlap": False,
                                "TimeZone": "UTC", "Specs": None})
    if job["ParameterizedJob"] is not None:
        params = job["ParameterizedJob"]
        params.setdefault("MetaRequired", None)
        params.setdefault("MetaOptional", None)
        params["Payload"] = params.get("Payload") or "optional"
    for group in job.get("TaskGroups") or []:
        _fill(group, _GROUP_DEFAULTS)
        group["RestartPolicy"] = _merge(_restart_default(job_type), group.get("RestartPolicy"))
        group["ReschedulePolicy"] = _merge(_reschedule_default(job_type), group.get("ReschedulePolicy"))
        for task in group.get("Tasks") or []:
            _fill(task, _TASK_DEFAULTS)
            task["RestartPolicy"] = _merge(group["RestartPolicy"], task.get("RestartPolicy"))
            task["Resources"] = _merge({"CPU": 100, "Cores": 0, "MemoryMB": 300, "MemoryMaxMB": 0,
                                        "DiskMB": None, "Networks": None, "Devices": None},
                                       task.get("Resources"))
            task["LogConfig"] = _merge({"MaxFiles": 10, "MaxFileSizeMB": 10, "Disabled": False},
                                       task.get("LogConfig"))
            if task["Vault"] is not None:
                _fill(task["Vault"], _VAULT_DEFAULTS)
            for template in task["Templates"] or []:
                _fill(template, _TEMPLATE_DEFAULTS)
    return api_canonicalize(job)  # NodePool "", service names: the parse form (admission.py)


def validate_job(job: dict[str, Any]) -> list[str]:
    """The messages ``structs.Job.Validate`` gives for the rules this double enforces (empty when valid)."""
    errors: list[str] = []
    job_type = job.get("Type")
    if job_type not in JOB_TYPES:
        errors.append(f'Invalid job type: "{job_type}"')
    if not job.get("TaskGroups"):
        errors.append("Missing job task groups")
    if not isinstance(job.get("Priority"), int) or not 1 <= job["Priority"] <= 100:
        errors.append("Job priority must be between [1, 100]")
    params = job.get("ParameterizedJob")
    if params is not None and not job.get("Dispatched"):
        if job_type not in ("batch", "sysbatch"):
            errors.append('Parameterized job can only be used with "batch" or "sysbatch" scheduler')
        if params.get("Payload") not in PAYLOAD_MODES:
            errors.append(f'Unknown payload requirement: "{params.get("Payload")}"')
        both = sorted(set(params.get("MetaRequired") or []) & set(params.get("MetaOptional") or []))
        if both:
            errors.append("Required and optional meta keys should be disjoint. Following keys exist in both: "
                          f"[{' '.join(both)}]")
    if job.get("Periodic") is not None and job_type not in ("batch", "sysbatch"):
        errors.append('Periodic can only be used with "batch" or "sysbatch" scheduler')
    names: set[str] = set()
    for index, group in enumerate(job.get("TaskGroups") or [], start=1):
        name = group.get("Name") or ""
        if not name:
            errors.append(f"Job task group {index} missing name")
        elif name in names:
            errors.append(f"Job task group {index} redefines '{name}' from group {index - 1}")
        names.add(name)
        if not group.get("Tasks"):
            errors.append(f'Task group {name} validation failed: Missing tasks for task group')
        for task in group.get("Tasks") or []:
            if not task.get("Driver"):
                errors.append(f"Task group {name} validation failed: "
                              f'Task {task.get("Name")} validation failed: Missing task driver')
    return errors


def multierror(messages: list[str]) -> str:
    """hashicorp/go-multierror's text for a list of errors, as Nomad answers it."""
    head = "1 error occurred:" if len(messages) == 1 else f"{len(messages)} errors occurred:"
    return head + "".join(f"\n\t* {m}" for m in messages) + "\n\n"
