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
"""

from __future__ import annotations

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
