"""What ``caravan experiment start|status|stop`` and ``caravan models list`` do (the CLI only parses and prints).

- **start**: every arm is an artifact that passes the gate's soundness check (loaded and scored in a
  disposable probe process first) and whose serving schema does not break the current model's (clients
  send the current schema); then the document is created by check-and-set, old counters are cleared and
  the start is recorded in the model's history.
- **status**: per arm the traffic share (the document's for ``fixed``; the Thompson weights of the merged
  counters for ``thompson``), requests, rewards, success rate with its 95% interval, probability of being best.
- **stop**: the winner goes through the one promotion protocol (:func:`caravan.promotion.decide` under the
  promotion lock, judged by the gate against the model current now); only then does the experiment end,
  and the outcome is recorded in the history. A gate rejection leaves the experiment running.
- **statuses**: every version the model's history or experiment names is ``production`` (the pointer's),
  ``ab:<arm>`` (an arm of the running experiment), ``retired`` (was production once), ``rejected`` (refused
  by the gate, or lost an experiment) or ``candidate`` (known, not yet decided).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ..errors import CaravanError
from ..registry import ModelPointer
from ..registry.base import CHANGES, new_change_id, utc_now
from .bandit import period_seed, prob_best, success_interval, thompson_weights
from .document import Arm, Experiment, ExperimentStore, check_name

#: History actions this module records (they never move the pointer; lineage() ignores them).
START, STOP = "experiment-start", "experiment-stop"
DRAWS = 20000


def _artifact(uri: str, artifact_id: str | None = None) -> Any:
    from ..serving.probe import artifact_from_uri

    return artifact_from_uri(uri, artifact_id)


def parse_arms(specs: Sequence[str]) -> list[tuple[str, str]]:
    """``["control=current", "challenger=<URI>"]`` as (name, value) pairs; one clear line for a bad one."""
    arms: list[tuple[str, str]] = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not value:
            raise CaravanError(f"--arm {spec!r} must be NAME=current or NAME=<artifact URI>")
        check_name("arm name", name)
        if name in (n for n, _ in arms):
            raise CaravanError(f"--arm {name!r} is given twice")
        arms.append((name, value))
    if len(arms) < 2:
        raise CaravanError("an experiment needs at least two arms (--arm control=current --arm challenger=<URI>)")
    return arms


def parse_weights(text: str | None, count: int) -> list[float]:
    """``"50,50"`` as shares summing to 1 (default: equal); one clear line when it does not fit the arms."""
    if not text:
        return [1.0 / count] * count
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise CaravanError(f"--weights {text!r} must be numbers separated by commas, e.g. 50,50") from None
    if len(values) != count:
        raise CaravanError(f"--weights {text!r} has {len(values)} values for {count} arms")
    if any(not math.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise CaravanError(f"--weights {text!r} must be finite, >= 0, and not all 0")
    return [v / sum(values) for v in values]


def start(pointer: ModelPointer, store: ExperimentStore, model: str, arm_specs: Sequence[str], *,
          weights: str | None = None, policy: str = "thompson", unit: str = "user_id", reward: str = "reward",
          operator: str = "cli") -> Experiment:
    """Check every arm against the current model, then create the experiment (see the module docstring)."""
    from ..registry.gate import UnsoundModel, breaking_changes, check_sound
    from ..serving.probe import Probe

    arms = parse_arms(arm_specs)
    shares = parse_weights(weights, len(arms))
    state = pointer.read(model)  # a corrupt pointer is its own one-line error
    if state.document is None:
        raise CaravanError(f"model {model!r} has no current model: an experiment tests challengers against it; "
                           f"promote one first (caravan models promote {model} <artifact URI>)")
    existing, version = store.read(model)
    if existing is not None and existing.state == "running":
        raise CaravanError(f"model {model!r} already has a running experiment (started {existing.started_at}, arms "
                           f"{', '.join(a.name for a in existing.arms)}); stop it first")
    current = _artifact(state.document["artifact_uri"], state.document["artifact_id"])
    chosen: list[Arm] = []
    with Probe() as probe:
        try:
            current_schema = check_sound(current, probe=probe)
        except UnsoundModel as exc:
            raise CaravanError(f"model {model!r}: the current model is not sound, fix that first: {exc}") from None
        for (name, value), share in zip(arms, shares, strict=True):
            if value == "current":
                chosen.append(Arm(name, current.id, current.uri, share))
                continue
            candidate = _artifact(value)
            candidate.manifest()  # fails clearly when nothing is published there
            try:
                schema = check_sound(candidate, probe=probe)
            except UnsoundModel as exc:
                raise CaravanError(f"arm {name!r}: {exc}") from None
            breaking = breaking_changes(schema, current_schema)
            if breaking:
                raise CaravanError(f"arm {name!r} ({candidate.id}) breaks the serving schema of the current model "
                                   f"{current.id}: {', '.join(breaking)}; clients send the current schema")
            chosen.append(Arm(name, candidate.id, candidate.uri, share))
    exp = Experiment(model=model, arms=tuple(chosen), policy=policy, unit=unit, reward=reward)
    store.write(exp, version)  # check-and-set: a concurrent start loses with ExperimentConflict
    store.clear_stats(model)
    pointer.record(model, {"action": START, "change_id": new_change_id(), "promoted_at": exp.started_at,
                           "promoted_by": operator, "artifact_id": "", "salt": exp.salt, "policy": policy,
                           "arms": [_arm_entry(a) for a in exp.arms],
                           "reason": f"experiment started ({policy}): "
                           + ", ".join(f"{a.name}={a.artifact_id} {a.weight:.0%}" for a in exp.arms)})
    return exp


def _arm_entry(arm: Arm) -> dict[str, Any]:
    return {"name": arm.name, "artifact_id": arm.artifact_id, "artifact_uri": arm.artifact_uri,
            "weight": arm.weight}


@dataclass(frozen=True)
class ArmStatus:
    """One arm as ``experiment status`` shows it."""

    name: str
    artifact_id: str
    traffic: float
    requests: int
    rewards: int
    rate: float
    low: float
    high: float
    prob_best: float


def running(store: ExperimentStore, model: str) -> Experiment:
    exp, _ = store.read(model)
    if exp is None or exp.state != "running":
        raise CaravanError(f"model {model!r} has no running experiment"
                           + (f" (the last one ended with winner {exp.winner})" if exp is not None else ""))
    return exp


def status(store: ExperimentStore, model: str, exp: Experiment | None = None) -> list[ArmStatus]:
    """Per arm: traffic share, requests, rewards, success rate with its 95% interval, probability of being best."""
    exp = exp or running(store, model)
    counts = store.read_stats(model, salt=exp.salt)
    per_arm = {a.name: counts.get(a.name, (0, 0)) for a in exp.arms}
    best = prob_best(per_arm, DRAWS, rng=period_seed(exp.salt, -1))
    if exp.policy == "thompson" and any(s + f for s, f in per_arm.values()):
        traffic = thompson_weights(per_arm, draws=DRAWS, rng=period_seed(exp.salt, -1),
                                   min_weight=min(0.05, 1 / len(per_arm)))
    else:
        traffic = dict(exp.weights())
    out = []
    for arm in exp.arms:
        s, f = per_arm[arm.name]
        low, high = success_interval(s, f)
        out.append(ArmStatus(arm.name, arm.artifact_id, traffic[arm.name], s + f, s, s / (s + f) if s + f else 0.0,
                             low, high, best[arm.name]))
    return out


def stop(pointer: ModelPointer, store: ExperimentStore, model: str, winner: str, *, tolerance: float = 0.01,
         floor_window: int = 10, allow_schema_change: bool = False, lock_timeout_s: float = 60.0,
         operator: str = "cli") -> tuple[Experiment, str]:
    """Promote the winner through the gate, then end the experiment; (the ended experiment, what happened)."""
    from ..promotion import decide, is_current
    from ..registry.base import floor_models
    from ..registry.gate import judge

    exp = running(store, model)
    arm = exp.arm(winner)  # an unknown arm: one line naming the arms there are
    candidate = _artifact(arm.artifact_uri, arm.artifact_id)
    outcome = ""
    with pointer.lock(model, holder=operator, timeout_s=lock_timeout_s):
        for _ in range(5):
            state = pointer.read(model)
            if is_current(state, candidate):
                outcome = f"{candidate.id} is already the current model; nothing promoted"
                break
            current = _artifact(state.document["artifact_uri"], state.document["artifact_id"]) \
                if state.document else None
            verdict = judge(candidate, current, tolerance=tolerance, allow_schema_change=allow_schema_change,
                            floor=floor_models(pointer.history(model), floor_window))
            decision, _ = decide(pointer, model, candidate, state, verdict, promoted_by=operator)
            if decision == "moved":
                continue
            if decision == "reject":
                raise CaravanError(f"{model}: gate rejected the winner {winner!r} ({candidate.id}): "
                                   + "; ".join(verdict["reasons"]) + " (recorded in the history); the experiment "
                                   "keeps running")
            outcome = f"{candidate.id} promoted"
            break
        else:
            raise CaravanError(f"{model}: the pointer kept moving during 5 attempts to promote {candidate.id}")
    results = {s.name: {"requests": s.requests, "rewards": s.rewards, "prob_best": s.prob_best}
               for s in status(store, model, exp)}

    def end(current: Experiment | None) -> Experiment | None:
        if current is None or current.salt != exp.salt or current.state != "running":
            return None  # someone else ended (or replaced) it meanwhile: leave theirs alone
        return replace(current, state="stopped", winner=winner, updated_at=utc_now())

    ended = store.update(model, end) or exp
    pointer.record(model, {"action": STOP, "change_id": new_change_id(), "promoted_at": utc_now(),
                           "promoted_by": operator, "artifact_id": arm.artifact_id, "salt": exp.salt,
                           "winner": winner, "arms": [_arm_entry(a) for a in exp.arms], "results": results,
                           "reason": f"experiment stopped, winner {winner}: {outcome}"})
    return ended, outcome


@dataclass
class Version:
    """One model version as ``models list`` shows it."""

    artifact_id: str
    artifact_uri: str
    status: str = "candidate"
    since: str = ""
    metrics: dict[str, Any] | None = None
    experiment: str = ""


def versions(pointer: ModelPointer, store: ExperimentStore, model: str) -> list[Version]:
    """Every version the model's history and experiment name, with its status (see the module docstring)."""
    found: dict[str, Version] = {}
    was_current: set[str] = set()
    refused: set[str] = set()

    def seen(artifact_id: str, uri: str, when: str) -> Version:
        version = found.setdefault(artifact_id, Version(artifact_id, uri))
        version.since = when or version.since
        return version

    for entry in pointer.history(model):
        action, when = entry.get("action"), str(entry.get("promoted_at", ""))
        artifact_id, uri = str(entry.get("artifact_id") or ""), str(entry.get("artifact_uri") or "")
        if action in CHANGES and artifact_id:
            seen(artifact_id, uri, when).metrics = entry.get("metrics")
            was_current.add(artifact_id)
        elif action == "reject" and artifact_id:
            seen(artifact_id, uri, when)
            refused.add(artifact_id)
        elif action in (START, STOP):
            for arm in entry.get("arms") or []:
                version = seen(str(arm.get("artifact_id")), str(arm.get("artifact_uri")), when)
                result = (entry.get("results") or {}).get(arm.get("name"))
                if action == STOP and result:
                    won = arm.get("name") == entry.get("winner")
                    version.experiment = (f"{'won' if won else 'lost'} as {arm.get('name')}: {result['rewards']}/"
                                          f"{result['requests']} rewarded")
                    if not won:
                        refused.add(version.artifact_id)
    state = pointer.read(model)
    if state.document is not None:
        current = seen(str(state.artifact_id), str(state.document.get("artifact_uri")), "")
        current.metrics = state.document.get("metrics")
    exp, _ = store.read(model)
    live: dict[str, ArmStatus] = {}
    if exp is not None and exp.state == "running":
        live = {s.artifact_id: s for s in status(store, model, exp)}
    for version in found.values():
        if version.artifact_id == state.artifact_id:
            version.status = "production"
        elif version.artifact_id in live:
            version.status = f"ab:{live[version.artifact_id].name}"
        elif version.artifact_id in was_current:
            version.status = "retired"
        elif version.artifact_id in refused:
            version.status = "rejected"
        if version.artifact_id in live:
            arm = live[version.artifact_id]
            version.experiment = (f"ab:{arm.name} {arm.traffic:.0%} of traffic, {arm.rewards}/{arm.requests} "
                                  f"rewarded, P(best) {arm.prob_best:.2f}")
    order = {"production": 0, "ab": 1, "candidate": 2, "retired": 3, "rejected": 4}
    return sorted(found.values(), key=lambda v: (order[v.status.split(":")[0]], v.since), reverse=False)
