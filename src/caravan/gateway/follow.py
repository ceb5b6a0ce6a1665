"""The gateway's two background threads, neither of which ever dies: on any error they log, count, show it in
``/health`` (degraded) and retry with backoff, as :mod:`caravan.serving.watcher` does for the pointer.

* :class:`ExperimentFollower` follows the model's experiment document (:meth:`ExperimentStore.watch`, a blocking
  query in Consul, a poll of the file locally) and applies each new version to the :class:`GatewayState`.
* :class:`BanditUpdater`, every ``update_s``: writes this gateway's reward counters
  (:meth:`ExperimentStore.put_stats`, its own key) and, under policy ``thompson``, reads every gateway's counters
  merged and (once any outcome has been reported: the document's weights are the starting split) makes each
  arm's weight its probability of being best (:func:`caravan.experiments.bandit.
  thompson_weights`, floored at ``min_weight``). The Monte Carlo draws are seeded by the salt and the merged
  counts, so gateways that read the same counters compute the same weights, and so send a user to the same arm.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from typing import Any

from .loop import RetryLoop
from .state import GatewayState

log = logging.getLogger("caravan.gateway")


class ExperimentFollower(RetryLoop):
    """Follows one model's experiment document and applies each version to the gateway's state."""

    def __init__(self, store: Any, model: str, state: GatewayState, *, wait_s: float = 30.0, **options: Any) -> None:
        super().__init__(f"experiment-{model}", **options)
        self.store, self.model, self.state, self.wait_s = store, model, state, wait_s
        self.version = -1  # nothing read yet
        self.synced = threading.Event()  # set once the first document (or its absence) is applied

    def step(self) -> float:
        if self.version < 0:
            experiment, version = self.store.read(self.model)
        else:
            experiment, version = self.store.watch(self.model, self.version, self.wait_s)
            if version == self.version:
                return 0.0
        routes = self.state.apply(experiment)
        if self.version >= 0 or experiment is not None:
            log.info("experiment of %s: %s", self.model, routes.describe())
        self.version = version
        self.synced.set()
        return 0.0


def _seed(salt: str, counts: dict[str, tuple[int, int]]) -> int:
    text = salt + "|" + ";".join(f"{arm}={s},{f}" for arm, (s, f) in sorted(counts.items()))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def thompson_for(salt: str, merged: dict[str, tuple[int, int]], arms: list[str], min_weight: float,
                 draws: int = 20_000) -> dict[str, float]:
    """The Thompson weights of ``arms`` from merged counters: the same for every gateway given the same inputs."""
    from ..experiments.bandit import thompson_weights

    counts = {arm: merged.get(arm, (0, 0)) for arm in arms}
    return dict(thompson_weights(counts, draws=draws, min_weight=min_weight, rng=_seed(salt, counts)))


class BanditUpdater(RetryLoop):
    """Shares this gateway's counters and, under policy ``thompson``, recomputes the weights from everyone's."""

    def __init__(self, store: Any, model: str, state: GatewayState, gateway_id: str, *, update_s: float = 60.0,
                 min_weight: float = 0.05, **options: Any) -> None:
        super().__init__(f"bandit-{model}", **options)
        self.store, self.model, self.state, self.gateway_id = store, model, state, gateway_id
        self.update_s, self.min_weight = update_s, min_weight
        self.updates = 0
        self.merged: dict[str, tuple[int, int]] = {}

    def step(self) -> float:
        self.update()
        return self.update_s

    def update(self) -> None:
        """One period: put our counters, read everyone's, recompute the weights (policy thompson)."""
        salt, counts = self.state.counts()
        experiment = self.state.experiment
        if salt is None or experiment is None or experiment.state != "running":
            return
        self.store.put_stats(self.model, self.gateway_id, counts, salt=salt)
        merged = self.store.read_stats(self.model, salt=salt)
        self.merged = dict(merged)
        if experiment.policy != "thompson" or not any(s + f for s, f in merged.values()):
            return  # until the first reward is reported, the document's starting weights hold
        weights = thompson_for(salt, merged, [arm.name for arm in experiment.arms], self.min_weight)
        if self.state.set_bandit_weights(salt, weights, time.time()):
            self.updates += 1
            log.info("bandit weights of %s: %s (from %s)", self.model,
                     {k: round(v, 4) for k, v in weights.items()}, merged)
