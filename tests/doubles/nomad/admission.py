"""Two forms of one job: what ``POST /v1/jobs/parse`` returns and what Nomad stores.

Parse returns the API-level canonical job (``api/jobs.go`` ``Job.Canonicalize``, ``api/services.go``
``Service.Canonicalize``): the node pool, a port's host network and a check's name stay ``""`` when the spec
says nothing. Register and plan first convert the job to ``structs.Job`` and run the admission hooks
(``nomad/job_endpoint_hooks.go``), which fill server-side defaults; that is the form a read returns:

- ``nomad/job_endpoint_hook_node_pool_ce.go`` ``jobNodePoolMutatingHook``: ``NodePool`` ``""`` → ``"default"``;
- ``nomad/structs/structs.go`` ``NetworkResource.Canonicalize``: each port's ``HostNetwork`` ``""`` →
  ``"default"``;
- ``nomad/structs/services.go`` ``Service.Canonicalize`` / ``ServiceCheck.Canonicalize``: a check without a
  name is named ``service: "<service name>" check``; a Consul service's namespace is ``"default"``;
- ``command/agent/job_endpoint.go`` ``ApiJobToStructJob``: the job-level update strategy keeps only
  ``Stagger`` and ``MaxParallel`` (each group holds its own, merged at parse time).

The HCL side (``network``, ``service`` and ``update`` blocks as ``api.NetworkResource`` / ``api.Service`` /
``api.UpdateStrategy`` JSON) lives here too, so that the parse form carries the fields that differ.
"""

from __future__ import annotations

import copy
from typing import Any


def _blocks(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    found = body.get(name)
    if isinstance(found, dict):
        return [found]
    return [b for b in found or [] if isinstance(b, dict)]


def _labelled(body: dict[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(label, inner) for block in _blocks(body, name) for label, inner in block.items()
            if isinstance(inner, dict)]


def _ns(value: Any) -> int:
    from .hcl import parse_duration_ns

    if value is None:
        return 0
    return int(value) if isinstance(value, int | float) else parse_duration_ns(str(value))


def _port(label: str, body: dict[str, Any]) -> dict[str, Any]:
    """``port "label" {}`` as ``api.Port``."""
    return {"Label": label, "Value": int(body.get("static") or 0), "To": int(body.get("to") or 0),
            "HostNetwork": body.get("host_network") or "", "IgnoreCollision": bool(body.get("ignore_collision"))}


def networks(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """A group's ``network`` blocks as ``api.NetworkResource`` (static ports reserved, others dynamic)."""
    out = []
    for block in _blocks(body, "network"):
        ports = [_port(label, inner) for label, inner in _labelled(block, "port")]
        out.append({"Mode": block.get("mode") or "", "Device": "", "CIDR": "", "IP": "", "DNS": None,
                    "ReservedPorts": [p for p in ports if p["Value"]] or None,
                    "DynamicPorts": [p for p in ports if not p["Value"]] or None,
                    "Hostname": block.get("hostname") or "", "MBits": None, "CNI": None})
    return out or None


def _check(body: dict[str, Any], on_update: str) -> dict[str, Any]:
    """A ``check`` block as ``api.ServiceCheck``, after ``api.Service.Canonicalize`` (OnUpdate inherited)."""
    return {"Name": body.get("name") or "", "Type": body.get("type") or "", "Command": body.get("command") or "",
            "Args": body.get("args"), "Path": body.get("path") or "", "Protocol": body.get("protocol") or "",
            "PortLabel": body.get("port") or "", "Expose": bool(body.get("expose")),
            "AddressMode": body.get("address_mode") or "", "Advertise": "", "Interval": _ns(body.get("interval")),
            "Timeout": _ns(body.get("timeout")), "InitialStatus": body.get("initial_status") or "",
            "Notes": "", "TLSServerName": "", "TLSSkipVerify": bool(body.get("tls_skip_verify")), "Header": None,
            "Method": body.get("method") or "", "CheckRestart": None, "GRPCService": "", "GRPCUseTLS": False,
            "TaskName": body.get("task") or "", "SuccessBeforePassing": 0, "FailuresBeforeCritical": 0,
            "FailuresBeforeWarning": 0, "Body": "", "OnUpdate": body.get("on_update") or on_update}


def services(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """``service`` blocks as ``api.Service`` with the API-level defaults (``api/services.go``): address mode
    ``auto``, ``require_healthy``, provider ``consul``, cluster ``default``; a missing name is filled by
    :func:`api_canonicalize` (``<job>-<group>``)."""
    out = []
    for block in _blocks(body, "service"):
        on_update = block.get("on_update") or "require_healthy"
        out.append({"Name": block.get("name") or "", "Tags": block.get("tags") or None,
                    "CanaryTags": block.get("canary_tags") or None,
                    "EnableTagOverride": bool(block.get("enable_tag_override")), "PortLabel": block.get("port") or "",
                    "AddressMode": block.get("address_mode") or "auto", "Address": block.get("address") or "",
                    "Checks": [_check(c, on_update) for c in _blocks(block, "check")] or None,
                    "CheckRestart": None, "Connect": None, "Meta": block.get("meta") or None, "CanaryMeta": None,
                    "TaggedAddresses": None, "TaskName": block.get("task") or "", "OnUpdate": on_update,
                    "Identity": None, "Weights": None, "Provider": block.get("provider") or "consul",
                    "Cluster": block.get("cluster") or "default", "Kind": ""})
    return out or None


_UPDATE_FIELDS = {"Stagger": "stagger", "MaxParallel": "max_parallel", "HealthCheck": "health_check",
                  "MinHealthyTime": "min_healthy_time", "HealthyDeadline": "healthy_deadline",
                  "ProgressDeadline": "progress_deadline", "Canary": "canary", "AutoRevert": "auto_revert",
                  "AutoPromote": "auto_promote"}
_DURATIONS = frozenset({"Stagger", "MinHealthyTime", "HealthyDeadline", "ProgressDeadline"})
SECOND_NS = 1_000_000_000
# api/jobs.go DefaultUpdateStrategy
DEFAULT_UPDATE = {"Stagger": 30 * SECOND_NS, "MaxParallel": 1, "HealthCheck": "checks",
                  "MinHealthyTime": 10 * SECOND_NS, "HealthyDeadline": 300 * SECOND_NS,
                  "ProgressDeadline": 600 * SECOND_NS, "Canary": 0, "AutoRevert": False, "AutoPromote": False}


def update(body: dict[str, Any]) -> dict[str, Any] | None:
    """An ``update`` block as ``api.UpdateStrategy`` (unset fields null until canonicalized)."""
    blocks = _blocks(body, "update")
    if not blocks:
        return None
    merged: dict[str, Any] = {}
    for block in blocks:
        merged.update(block)
    return {key: (None if merged.get(name) is None else _ns(merged[name]) if key in _DURATIONS else merged[name])
            for key, name in _UPDATE_FIELDS.items()}


def _update_empty(strategy: dict[str, Any]) -> bool:
    # api/jobs.go UpdateStrategy.Empty: nothing set to a non-zero value.
    return not any(value for value in strategy.values() if value is not None)


def _canonical_update(strategy: dict[str, Any]) -> dict[str, Any]:
    return {key: DEFAULT_UPDATE[key] if strategy.get(key) is None else strategy[key] for key in DEFAULT_UPDATE}


def api_canonicalize(job: dict[str, Any]) -> dict[str, Any]:
    """What ``api.Job.Canonicalize`` adds beyond the HCL conversion: ``NodePool`` ``""``, the update strategy
    (``api/jobs.go``: canonicalized, or the default for service and system jobs; ``api/tasks.go``: each group
    merges its own over the job's, or inherits a non-empty one) and a group service's default name
    ``<job>-<group>``. The parse form; in place, and idempotent."""
    if job.get("NodePool") is None:
        job["NodePool"] = ""  # api/jobs.go: pointerOf("")
    if job.get("Update") is not None:
        job["Update"] = _canonical_update(job["Update"])
    elif job.get("Type") in ("service", "system"):
        job["Update"] = dict(DEFAULT_UPDATE)
    for group in job.get("TaskGroups") or []:
        own, inherited = group.get("Update"), job.get("Update")
        if inherited is not None and own is not None:
            group["Update"] = {**inherited, **{k: v for k, v in own.items() if v is not None}}
        elif inherited is not None and not _update_empty(inherited):
            group["Update"] = dict(inherited)
        if group.get("Update") is not None:
            group["Update"] = _canonical_update(group["Update"])
        for service in group.get("Services") or []:
            if not service.get("Name"):
                service["Name"] = f"{job.get('Name') or job.get('ID')}-{group.get('Name')}"
    return job


def admit(job: dict[str, Any]) -> dict[str, Any]:
    """The server-side defaults register and plan fill in before storing or diffing (see the module
    docstring). The stored form; in place."""
    api_canonicalize(job)
    if not job["NodePool"]:
        job["NodePool"] = "default"
    if job.get("Update") is not None:
        job["Update"] = {key: job["Update"].get(key) if key in ("Stagger", "MaxParallel") else
                         ("" if key == "HealthCheck" else False if key.startswith("Auto") else 0)
                         for key in DEFAULT_UPDATE}
    for group in job.get("TaskGroups") or []:
        for network in group.get("Networks") or []:
            for port in (network.get("DynamicPorts") or []) + (network.get("ReservedPorts") or []):
                port["HostNetwork"] = port.get("HostNetwork") or "default"
        for service in group.get("Services") or []:
            if service.get("Provider") == "consul" and not service.get("Namespace"):
                service["Namespace"] = "default"
            service["Tags"] = service.get("Tags") or None
            for check in service.get("Checks") or []:
                check["Name"] = check.get("Name") or f'service: "{service["Name"]}" check'
    return job


def admitted(job: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``job`` in the stored form."""
    return admit(copy.deepcopy(job))
