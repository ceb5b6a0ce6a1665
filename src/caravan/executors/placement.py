"""Why a Nomad job is not placed yet: waiting for capacity, or never placeable.

When no node can take a job, the scheduler completes the evaluation with ``FailedTGAllocs`` (one
``AllocMetric`` per task group) and creates a ``blocked`` evaluation that is re-run when capacity frees
(``nomad/structs/structs.go`` ``AllocMetric``; ``scheduler/generic_sched.go``). The metric tells the two
cases apart:

- some node passed every filter but had no room (``NodesExhausted`` > 0, ``DimensionExhausted`` such as
  ``{"memory": 3}``, or a quota): **capacity** - Nomad places the job when room frees, so wait;
- every node was filtered out (``ConstraintFiltered``, ``ClassFiltered``, a missing driver, no node in the
  datacenters: ``NodesAvailable`` all 0): **impossible** - nothing will change that by waiting.

The original evaluation keeps its ``FailedTGAllocs`` after its blocked evaluation has placed the job, so a
child is judged by its *current* state: its allocations and its evaluations that are still ``blocked``.

An ask larger than every node is *not* told apart by Nomad: the bin-packer checks the node's resources against
its allocations plus the new one (``scheduler/feasible/rank.go`` ``BinPackIterator`` → ``structs.AllocsFit`` →
``ComparableResources.Superset``, which names ``cpu``, ``memory`` or ``disk``), so a node too small and a node
too full both count in ``NodesExhausted``/``DimensionExhausted``, and the blocked eval waits forever.
:func:`too_large` tells them apart from the nodes' total resources (``GET /v1/nodes?resources=true``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

PLACED, PENDING, CAPACITY, IMPOSSIBLE, FAILED = "placed", "pending", "capacity", "impossible", "failed"


@dataclass(frozen=True)
class Placement:
    """Where a child job stands: ``state`` is one of placed/pending/capacity/impossible/failed."""

    state: str
    reason: str = ""
    eval_id: str = ""


def _count(value: Any) -> int:
    if isinstance(value, Mapping):
        return sum(_count(v) for v in value.values())
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def _nodes(n: int) -> str:
    return f"{n} node" + ("" if n == 1 else "s")


def classify_group(group: str, metric: Mapping[str, Any] | None) -> tuple[str, str]:
    """(CAPACITY or IMPOSSIBLE, a reason naming the resource or the filter) for one task group's AllocMetric."""
    metric = metric or {}
    exhausted = _count(metric.get("NodesExhausted"))
    quota = [str(q) for q in (metric.get("QuotaExhausted") or [])]
    if exhausted > 0 or quota:
        dims = metric.get("DimensionExhausted") or {}
        parts = [f"{dim} exhausted on {_nodes(_count(n))}" for dim, n in sorted(dims.items()) if _count(n)]
        if quota:
            parts.append("quota exhausted: " + ", ".join(quota))
        if not parts:
            parts.append(f"no room on {_nodes(exhausted)}")
        return CAPACITY, f"group {group!r}: " + "; ".join(parts)
    parts = []
    for constraint, n in sorted((metric.get("ConstraintFiltered") or {}).items()):
        parts.append(f"constraint {constraint} filtered {_nodes(_count(n))}")
    for node_class, n in sorted((metric.get("ClassFiltered") or {}).items()):
        parts.append(f"node class {node_class!r} filtered {_nodes(_count(n))}")
    available = metric.get("NodesAvailable") or {}
    if not parts:
        if available and not _count(available):
            parts.append("no ready node in datacenter " + ", ".join(sorted(available)))
        elif not _count(metric.get("NodesEvaluated")):
            parts.append("no node to evaluate (no ready node in the job's datacenters and node pool)")
        else:
            parts.append(f"every node filtered ({_nodes(_count(metric.get('NodesFiltered')))} of "
                         f"{_nodes(_count(metric.get('NodesEvaluated')))})")
    return IMPOSSIBLE, f"group {group!r}: no eligible node: " + "; ".join(parts)


def classify_failures(failed: Mapping[str, Any]) -> tuple[str, str]:
    """(CAPACITY or IMPOSSIBLE, reason) for an evaluation's ``FailedTGAllocs``: one impossible group is enough
    to make the job impossible."""
    judged = [classify_group(group, metric) for group, metric in sorted(failed.items())]
    impossible = [reason for state, reason in judged if state == IMPOSSIBLE]
    if impossible:
        return IMPOSSIBLE, "; ".join(impossible)
    return CAPACITY, "; ".join(reason for _, reason in judged) or "no room"


def judge(evals: Sequence[Mapping[str, Any]], allocs: Sequence[Mapping[str, Any]]) -> Placement:
    """A child job's placement from its current evaluations and allocations (never from an old eval alone)."""
    by_id = {str(e.get("ID")): e for e in evals}
    blocked = sorted((e for e in evals if e.get("Status") == "blocked"), key=lambda e: _count(e.get("CreateIndex")))
    for ev in reversed(blocked):
        failed = ev.get("FailedTGAllocs") or {}
        if not failed:  # the blocked eval's metrics live on the eval that created it
            origin = by_id.get(str(ev.get("PreviousEval") or "")) or next(
                (e for e in evals if e.get("BlockedEval") == ev.get("ID")), {})
            failed = origin.get("FailedTGAllocs") or {}
        state, reason = classify_failures(failed) if failed else (CAPACITY, "blocked evaluation, no metrics")
        return Placement(state, reason, str(ev.get("ID", "")))
    if allocs:
        return Placement(PLACED)
    pending = [e for e in evals if e.get("Status") == "pending"]
    if pending:
        return Placement(PENDING, "evaluation pending", str(pending[-1].get("ID", "")))
    if not evals:
        return Placement(PENDING)
    newest = max(evals, key=lambda e: (_count(e.get("ModifyIndex")), _count(e.get("CreateIndex"))))
    if newest.get("Status") in ("failed", "canceled"):
        return Placement(FAILED, f"evaluation {newest.get('ID')} {newest.get('Status')}: "
                                 f"{newest.get('StatusDescription', '')}".rstrip(": "), str(newest.get("ID", "")))
    if newest.get("FailedTGAllocs") and not newest.get("BlockedEval"):
        state, reason = classify_failures(newest["FailedTGAllocs"])
        return Placement(state, reason, str(newest.get("ID", "")))
    return Placement(PENDING)


def _group_ask(group: Mapping[str, Any]) -> tuple[int, int]:
    tasks = group.get("Tasks") or []
    return (sum(_count((t.get("Resources") or {}).get("CPU")) for t in tasks),
            sum(_count((t.get("Resources") or {}).get("MemoryMB")) for t in tasks))


def _capacity(node: Mapping[str, Any]) -> tuple[int, int]:
    """A node's CPU (MHz) and memory (MB) for allocations: its resources less what it reserves."""
    have, reserved = node.get("NodeResources") or {}, node.get("ReservedResources") or {}
    return (_count((have.get("Cpu") or {}).get("CpuShares")) - _count((reserved.get("Cpu") or {}).get("CpuShares")),
            _count((have.get("Memory") or {}).get("MemoryMB"))
            - _count((reserved.get("Memory") or {}).get("MemoryMB")))


def too_large(job: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]]) -> str:
    """Why ``job`` can never be placed because some group asks more CPU or memory than any eligible node has
    in total; "" when every group fits on some empty eligible node (or no node is eligible: the scheduler's
    own metrics say that). Eligible: ready, eligible for scheduling, not draining, in the job's node pool and
    one of its datacenters (``scheduler/util.go`` ``readyNodesInDCsAndPool``)."""
    pool = job.get("NodePool") or "default"
    datacenters = job.get("Datacenters") or ["*"]
    eligible = [n for n in nodes if n.get("Status") == "ready" and n.get("SchedulingEligibility") == "eligible"
                and not n.get("Drain") and (pool == "all" or (n.get("NodePool") or "default") == pool)
                and any(fnmatch.fnmatchcase(str(n.get("Datacenter", "")), dc) for dc in datacenters)]
    if not eligible:
        return ""
    capacities = [_capacity(n) for n in eligible]
    reasons = []
    for group in job.get("TaskGroups") or []:
        cpu, memory = _group_ask(group)
        if any(cpu <= have_cpu and memory <= have_memory for have_cpu, have_memory in capacities):
            continue
        short = [what for what, want, most in (("memory", memory, max(c[1] for c in capacities)),
                                               ("cpu", cpu, max(c[0] for c in capacities))) if want > most]
        reasons.append(f"group {group.get('Name')!r} asks cpu {cpu} MHz and memory {memory} MB, more "
                       f"{' and '.join(short) or 'cpu and memory together'} than any of the {_nodes(len(eligible))} "
                       f"it may run on has (largest: cpu {max(c[0] for c in capacities)} MHz, memory "
                       f"{max(c[1] for c in capacities)} MB)")
    return "; ".join(reasons)
