"""Client nodes with finite resources, and the feasibility and bin-packing checks that place allocations.

Copied from the scheduler (v1.11 line): ``scheduler/util.go`` ``readyNodesInDCsAndPool`` (the nodes in the job's
datacenters and pool; ``NodesAvailable`` counts ready nodes per datacenter that has any), ``scheduler/feasible/
stack.go`` (job constraints first, then the task group's and its tasks' constraints), ``scheduler/feasible/
feasible.go`` ``resolveTarget``/``checkConstraint`` (what an operand means, unresolvable targets),
``nomad/structs/alloc.go`` ``AllocMetric.FilterNode``/``ExhaustedNode`` (the metrics' counters) and
``nomad/structs/structs.go`` ``Constraint.String`` (the ``ConstraintFiltered`` key) and
``ComparableResources.Superset`` (the exhausted dimension: ``cpu``, then ``memory``, then ``disk``). An
allocation uses its tasks' ``CPU`` and ``MemoryMB`` and its group's ephemeral disk while it is not terminal.
"""

from __future__ import annotations

import copy
import fnmatch
import re
import sys
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

from .common import DATACENTER, NODE_ID, NODE_NAME, AllocRec, alloc_terminal

# One node big enough that tests which do not ask for capacity never meet its limits.
DEFAULT_CPU_MHZ, DEFAULT_MEMORY_MB, DEFAULT_DISK_MB = 256_000, 1_048_576, 1_048_576
NODE_KEYS = ("cpu", "memory", "disk", "datacenter", "class", "pool", "name", "attributes", "meta")
ALLOCATION_TIME_NS = 25_000


def make_nodes(specs: list[dict[str, Any]] | None, nomad_version: str) -> list[dict[str, Any]]:
    """Nodes as ``GET /v1/node/:id`` shows them, from the double's ``nodes`` argument (None: one large node).

    Each spec: ``{"cpu": MHz, "memory": MB, "disk": MB, "datacenter": "dc1", "class": "", "pool": "default",
    "name": ..., "attributes": {...}, "meta": {...}}``, every key optional. The first node keeps the double's
    historical id and name, so single-node tests read the same ``NodeID`` as before.
    """
    nodes = []
    for number, spec in enumerate(specs if specs is not None else [{}]):
        unknown = sorted(set(spec) - set(NODE_KEYS))
        if unknown:
            raise ValueError(f"node {number}: unknown keys {unknown}; expected some of {NODE_KEYS}")
        name = str(spec.get("name") or (NODE_NAME if number == 0 else f"{NODE_NAME}-{number}"))
        node_id = NODE_ID if number == 0 else str(uuid.uuid5(uuid.UUID(NODE_ID), name))
        cpu, memory = int(spec.get("cpu", DEFAULT_CPU_MHZ)), int(spec.get("memory", DEFAULT_MEMORY_MB))
        disk = int(spec.get("disk", DEFAULT_DISK_MB))
        attributes = {"kernel.name": sys.platform, "unique.hostname": name, "nomad.version": nomad_version,
                      "driver.raw_exec": "1", "driver.exec": "1", "driver.docker": "1",
                      "cpu.totalcompute": str(cpu), "memory.totalbytes": str(memory * 1024 * 1024)}
        attributes.update({str(k): str(v) for k, v in (spec.get("attributes") or {}).items()})
        nodes.append({
            "ID": node_id, "Name": name, "Datacenter": str(spec.get("datacenter") or DATACENTER),
            "NodeClass": str(spec.get("class") or ""), "NodePool": str(spec.get("pool") or "default"),
            "Status": "ready", "SchedulingEligibility": "eligible", "Attributes": attributes,
            "Meta": {str(k): str(v) for k, v in (spec.get("meta") or {}).items()},
            "NodeResources": {"Cpu": {"CpuShares": cpu}, "Memory": {"MemoryMB": memory},
                              "Disk": {"DiskMB": disk}},
        })
    if not nodes:
        raise ValueError("a cluster needs at least one node")
    return nodes


def new_metric() -> dict[str, Any]:
    """An empty ``structs.AllocMetric`` as the API shows it."""
    return {"NodesInPool": 0, "NodesEvaluated": 0, "NodesFiltered": 0, "NodesAvailable": {},
            "ClassFiltered": None, "ConstraintFiltered": None, "NodesExhausted": 0, "ClassExhausted": None,
            "DimensionExhausted": None, "QuotaExhausted": None, "ResourcesExhausted": None, "Scores": None,
            "ScoreMetaData": None, "AllocationTime": ALLOCATION_TIME_NS, "CoalescedFailures": 0}


def _count(metric: dict[str, Any], name: str, key: str) -> None:
    metric[name] = metric[name] or {}
    metric[name][key] = metric[name].get(key, 0) + 1


def constraint_text(constraint: dict[str, Any]) -> str:
    """``Constraint.String()``: the key of ``ConstraintFiltered``."""
    return f"{constraint.get('LTarget') or ''} {constraint.get('Operand') or '='} {constraint.get('RTarget') or ''}"


def resolve_target(target: str, node: dict[str, Any]) -> tuple[str, bool]:
    """``resolveTarget``: a literal, or a node field/attribute/meta value (and whether it exists)."""
    if not target.startswith("${"):
        return target, True
    fields = {"${node.unique.id}": "ID", "${node.datacenter}": "Datacenter", "${node.unique.name}": "Name",
              "${node.class}": "NodeClass", "${node.pool}": "NodePool"}
    if target in fields:
        return str(node[fields[target]]), True
    for prefix, table in (("${attr.", "Attributes"), ("${meta.", "Meta")):
        if target.startswith(prefix):
            key = target[len(prefix):].removesuffix("}")
            return (node[table][key], True) if key in node[table] else ("", False)
    return "", False


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def check_constraint(operand: str, left: str, right: str, left_found: bool, right_found: bool) -> bool:
    """``checkConstraint`` for the operands the project's specs use (anything else: not satisfied)."""
    if operand in ("distinct_hosts", "distinct_property"):
        return True  # checked by other iterators; one allocation per job never meets them here
    if operand in ("=", "==", "is"):
        return left_found and right_found and left == right
    if operand in ("!=", "not"):
        return left != right
    if operand in ("<", "<=", ">", ">="):
        if not (left_found and right_found):
            return False
        a, b = _number(left), _number(right)
        pair: tuple[Any, Any] = (a, b) if a is not None and b is not None else (left, right)
        return {"<": pair[0] < pair[1], "<=": pair[0] <= pair[1], ">": pair[0] > pair[1],
                ">=": pair[0] >= pair[1]}[operand]
    if operand == "is_set":
        return left_found
    if operand == "is_not_set":
        return not left_found
    if operand == "regexp":
        try:
            return left_found and right_found and re.search(right, left) is not None
        except re.error:
            return False
    if operand in ("set_contains", "set_contains_all", "set_contains_any"):
        if not (left_found and right_found):
            return False
        have = {part.strip() for part in left.split(",")}
        want = {part.strip() for part in right.split(",")}
        return bool(have & want) if operand == "set_contains_any" else want <= have
    return False


def first_unmet(constraints: list[dict[str, Any]], node: dict[str, Any]) -> str | None:
    """The first constraint ``node`` does not satisfy, as ``Constraint.String()`` (None: all are met)."""
    for constraint in constraints:
        left, left_found = resolve_target(str(constraint.get("LTarget") or ""), node)
        right, right_found = resolve_target(str(constraint.get("RTarget") or ""), node)
        if not check_constraint(str(constraint.get("Operand") or "="), left, right, left_found, right_found):
            return constraint_text(constraint)
    return None


def group_ask(group: dict[str, Any]) -> tuple[int, int, int]:
    """(CPU MHz, memory MB, disk MB) an allocation of ``group`` reserves on its node."""
    cpu = sum(int((t.get("Resources") or {}).get("CPU") or 0) for t in group["Tasks"])
    memory = sum(int((t.get("Resources") or {}).get("MemoryMB") or 0) for t in group["Tasks"])
    disk = int((group.get("EphemeralDisk") or {}).get("SizeMB") or 0)
    return cpu, memory, disk


@dataclass
class Choice:
    """The outcome of placing one allocation: the node (None: nothing fits) and the AllocMetric."""

    node: dict[str, Any] | None
    metric: dict[str, Any]


def select_node(job: dict[str, Any], group: dict[str, Any], nodes: list[dict[str, Any]],
                allocs: list[AllocRec]) -> Choice:
    """Run the feasibility checks and bin-packing over every node for one allocation of ``group``."""
    metric = new_metric()
    pool = job.get("NodePool") or "default"
    datacenters = job.get("Datacenters") or ["*"]
    candidates = [n for n in nodes if n["Status"] == "ready"
                  and (pool == "all" or n["NodePool"] == pool)
                  and any(fnmatch.fnmatchcase(n["Datacenter"], dc) for dc in datacenters)]
    metric["NodesInPool"] = len(candidates)
    metric["NodesAvailable"] = dict(Counter(n["Datacenter"] for n in candidates))
    job_constraints = list(job.get("Constraints") or [])
    group_constraints = list(group.get("Constraints") or [])
    for task in group["Tasks"]:
        group_constraints.extend(task.get("Constraints") or [])
    used: dict[str, list[int]] = {}
    for rec in allocs:
        if not alloc_terminal(rec.alloc):
            usage = used.setdefault(rec.alloc["NodeID"], [0, 0, 0])
            for i, amount in enumerate(group_ask(rec.group)):
                usage[i] += amount
    ask = group_ask(group)
    best: tuple[float, dict[str, Any]] | None = None
    for node in candidates:
        metric["NodesEvaluated"] += 1
        unmet = first_unmet(job_constraints, node) or first_unmet(group_constraints, node)
        if unmet is not None:
            metric["NodesFiltered"] += 1
            if node["NodeClass"]:
                _count(metric, "ClassFiltered", node["NodeClass"])
            _count(metric, "ConstraintFiltered", unmet)
            continue
        have = node["NodeResources"]
        total = (have["Cpu"]["CpuShares"], have["Memory"]["MemoryMB"], have["Disk"]["DiskMB"])
        usage = used.get(node["ID"], [0, 0, 0])
        exhausted = next((dim for dim, cap, now, want in zip(("cpu", "memory", "disk"), total, usage, ask,
                                                             strict=True) if now + want > cap), None)
        if exhausted is not None:
            metric["NodesExhausted"] += 1
            if node["NodeClass"]:
                _count(metric, "ClassExhausted", node["NodeClass"])
            _count(metric, "DimensionExhausted", exhausted)
            continue
        # Bin-packing (rank.go): prefer the node that is fullest after this placement.
        score = sum((now + want) / cap for cap, now, want in zip(total, usage, ask, strict=True) if cap)
        if best is None or score > best[0]:
            best = (score, node)
    if best is None:
        exhaust_resources(metric, group)
    return Choice(best[1] if best else None, metric)


def exhaust_resources(metric: dict[str, Any], group: dict[str, Any]) -> None:
    """``AllocMetric.ExhaustResources`` (``nomad/structs/alloc.go``; ``scheduler/generic_sched.go`` calls it when a
    group is not placed): each task's ask, counted per exhausted dimension (memory, cpu). A node too small and a
    node too full look the same here: ``ComparableResources.Superset`` compares the node with its allocations plus
    the new one."""
    dimensions = metric.get("DimensionExhausted")
    if not dimensions:
        return
    metric["ResourcesExhausted"] = metric["ResourcesExhausted"] or {}
    for task in group["Tasks"]:
        spent = metric["ResourcesExhausted"].setdefault(task["Name"], {
            "CPU": 0, "Cores": 0, "MemoryMB": 0, "MemoryMaxMB": 0, "DiskMB": 0, "IOPS": 0, "Networks": None,
            "Devices": None, "NUMA": None})
        resources = task.get("Resources") or {}
        if dimensions.get("memory"):
            spent["MemoryMB"] += int(resources.get("MemoryMB") or 0)
        if dimensions.get("cpu"):
            spent["CPU"] += int(resources.get("CPU") or 0)


def node_stub(node: dict[str, Any], resources: bool) -> dict[str, Any]:
    """A ``GET /v1/nodes`` entry (``structs.Node.Stub``); ``?resources=true`` adds ``NodeResources`` and
    ``ReservedResources`` (``command/agent/http.go`` ``parseNodeListStubFields``)."""
    stub = {"Address": "127.0.0.1", "ID": node["ID"], "Datacenter": node["Datacenter"], "Name": node["Name"],
            "NodeClass": node["NodeClass"], "NodePool": node["NodePool"],
            "Version": node["Attributes"].get("nomad.version", ""), "Drain": False,
            "SchedulingEligibility": node["SchedulingEligibility"], "Status": node["Status"],
            "StatusDescription": "", "Drivers": {}, "HostVolumes": None, "LastDrain": None,
            "CreateIndex": 1, "ModifyIndex": 1}
    if resources:
        stub["NodeResources"] = copy.deepcopy(node["NodeResources"])
        stub["ReservedResources"] = {"Cpu": {"CpuShares": 0, "ReservedCpuCores": None},
                                     "Memory": {"MemoryMB": 0}, "Disk": {"DiskMB": 0},
                                     "Networks": {"ReservedHostPorts": ""}}
    return stub
