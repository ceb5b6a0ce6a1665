"""Which arm answers a request: a snapshot of the routes (:class:`Routes`, replaced whole, never mutated) and the
choice of an arm for a unit (:func:`choose`).

* An experiment that runs: a unit's arm is :func:`caravan.experiments.assign` of the experiment's salt and the
  unit over the arms' weights (the document's with policy ``fixed``, the bandit's with ``thompson``): the same
  user sees the same arm while weights stay; a request without a unit gets a random arm by weight, flagged.
* An experiment that stopped: every request goes to its winner (until the workers are redeployed), or to the
  production arm when it ended without one.
* No experiment: every request goes to the production arm.

The production arm is ``--production-arm`` (default ``control``, what ``caravan experiment start --arm
control=current`` names the current model) when the experiment has an arm of that name, else its first arm.
It is also where a request goes when its own arm has no healthy worker (and when it has none either, any arm
that has one answers: see :mod:`.app`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .signing import experiment_tag


@dataclass(frozen=True)
class Routes:
    """Everything a request needs to pick its arm, as of one experiment document (and bandit update)."""

    production: str
    weights: tuple[tuple[str, float], ...] = ()  # (arm, weight) of a running experiment; empty: production only
    salt: str = ""
    experiment: str = "none"  # the tag in request ids (see signing.experiment_tag)
    artifacts: Mapping[str, str] = field(default_factory=dict)  # arm -> artifact id the document names
    policy: str | None = None
    state: str | None = None  # running, stopped, or None (no experiment)
    winner: str | None = None

    @property
    def arms(self) -> tuple[str, ...]:
        """The arms requests may be sent to."""
        return tuple(name for name, _ in self.weights) or (self.production,)

    def describe(self) -> dict[str, Any]:
        """What /health shows of the routes."""
        return {"state": self.state, "policy": self.policy, "production_arm": self.production,
                "winner": self.winner, "weights": dict(self.weights), "experiment": self.experiment}


def routes_of(experiment: Any, production_arm: str, weights: Mapping[str, float] | None = None) -> Routes:
    """The routes an experiment document gives (``None``: no experiment). ``weights``: the bandit's, for
    policy ``thompson``, when it has computed any for these arms; otherwise the document's."""
    if experiment is None:
        return Routes(production=production_arm)
    names = [arm.name for arm in experiment.arms]
    production = production_arm if production_arm in names else names[0]
    artifacts = {arm.name: arm.artifact_id for arm in experiment.arms}
    common: dict[str, Any] = {"salt": experiment.salt, "experiment": experiment_tag(experiment.salt),
                              "artifacts": artifacts, "policy": experiment.policy, "state": experiment.state,
                              "winner": experiment.winner}
    if experiment.state != "running":
        return Routes(production=experiment.winner if experiment.winner in names else production, **common)
    chosen = {arm.name: float(arm.weight) for arm in experiment.arms}
    if experiment.policy == "thompson" and weights and set(weights) == set(names):
        chosen = {name: float(weights[name]) for name in names}
    return Routes(production=production, weights=tuple((name, chosen[name]) for name in names), **common)


def choose(routes: Routes, unit: str | None, rng: random.Random) -> tuple[str, bool]:
    """The arm for a request, and whether the choice is sticky (a unit's assignment, not a random draw)."""
    if not routes.weights:
        return routes.production, unit is not None
    if unit is not None:
        from ..experiments.assign import assign

        return assign(routes.salt, unit, routes.weights), True
    names = [name for name, _ in routes.weights]
    total = sum(weight for _, weight in routes.weights)
    if total <= 0:
        return rng.choice(names), False
    return rng.choices(names, weights=[weight for _, weight in routes.weights])[0], False
