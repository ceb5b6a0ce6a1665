"""What a gateway knows between requests: the experiment document it follows, the routes in effect, its own
reward counters, and the bandit's weights. One lock guards the changes; requests read :attr:`GatewayState.routes`
once (one reference, replaced whole), so a document change never gives a request half of each.
"""

from __future__ import annotations

import threading
from typing import Any

from .routing import Routes, routes_of
from .signing import experiment_tag


class GatewayState:
    """The routes, the experiment and the reward counters of one gateway."""

    def __init__(self, production_arm: str) -> None:
        self.production_arm = production_arm
        self._lock = threading.Lock()
        self.experiment: Any = None
        self.routes: Routes = routes_of(None, production_arm)
        self.bandit_weights: dict[str, float] | None = None
        self.bandit_updated_at: float | None = None
        self._counts: dict[str, list[int]] = {}  # arm -> [successes, failures] of this gateway, this experiment
        self._tag = "none"

    def apply(self, experiment: Any) -> Routes:
        """Follow a new experiment document (None: there is none). Counters and bandit weights start again
        when the experiment is a new one (a new salt)."""
        with self._lock:
            tag = experiment_tag(experiment.salt) if experiment is not None else "none"
            if tag != self._tag:
                self._counts, self.bandit_weights, self.bandit_updated_at, self._tag = {}, None, None, tag
            self.experiment = experiment
            self.routes = routes_of(experiment, self.production_arm, self.bandit_weights)
            return self.routes

    def set_bandit_weights(self, salt: str, weights: dict[str, float], now: float) -> bool:
        """Use the bandit's weights if they are for the experiment followed now; whether they were used."""
        with self._lock:
            if self.experiment is None or self.experiment.salt != salt:
                return False
            self.bandit_weights, self.bandit_updated_at = dict(weights), now
            self.routes = routes_of(self.experiment, self.production_arm, self.bandit_weights)
            return True

    def reward(self, experiment: str, arm: str, reward: int) -> bool:
        """Count a reward for ``arm`` if it is an arm of the experiment tagged ``experiment`` (the one followed)."""
        with self._lock:
            if experiment != self._tag or arm not in self.routes.artifacts:
                return False
            pair = self._counts.setdefault(arm, [0, 0])
            pair[0 if reward else 1] += 1
            return True

    def counts(self) -> tuple[str | None, dict[str, tuple[int, int]]]:
        """(the followed experiment's salt, this gateway's counters for every arm of it)."""
        with self._lock:
            if self.experiment is None:
                return None, {}
            return self.experiment.salt, {arm.name: tuple(self._counts.get(arm.name, (0, 0)))  # type: ignore[misc]
                                          for arm in self.experiment.arms}
