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

import abc
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .state import GatewayState

log = logging.getLogger("caravan.gateway")


class _Loop(threading.Thread, abc.ABC):
    """A thread that runs :meth:`step` until stopped, backing off after errors, and remembers them."""

    def __init__(self, name: str, *, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.min_backoff_s, self.max_backoff_s, self.on_error = min_backoff_s, max_backoff_s, on_error
        self.stopped = threading.Event()
        self.errors = 0
        self.last_error: str | None = None  # None once a step succeeds again
        self.steps = 0

    @abc.abstractmethod
    def step(self) -> float:
        """One unit of work; returns how long to wait before the next (0: at once)."""

    def run(self) -> None:
        backoff = self.min_backoff_s
        while not self.stopped.is_set():
            try:
                pause = self.step()
            except Exception as exc:  # whatever happened, the thread lives on: report, back off, retry
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:500]}"
                log.warning("%s failed, retrying in %.1f s: %s", self.name, backoff, self.last_error)
                if self.on_error is not None:
                    self.on_error(self.name.split("-")[0])
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                self.steps += 1
                self.last_error = None
                backoff = self.min_backoff_s
                if pause > 0:
                    self.stopped.wait(pause)

    def stop(self) -> None:
        self.stopped.set()


class ExperimentFollower(_Loop):
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


class BanditUpdater(_Loop):
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
