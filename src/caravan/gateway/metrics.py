"""The gateway's Prometheus metrics (its own registry, so tests can run several gateways in one process)."""

from __future__ import annotations

from typing import Any


class GatewayMetrics:
    """Requests by status and arm, latency, fallbacks, unit-less requests, feedback, follower errors."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("caravan_gateway_requests", "Prediction requests by status code and answering arm "
                                "(499: the client left)", ["status", "arm"], registry=self.registry)
        self.latency = Histogram("caravan_gateway_request_seconds", "Prediction request latency by status code",
                                 ["status"], registry=self.registry,
                                 buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
        self.fallbacks = Counter("caravan_gateway_fallbacks", "Requests of an arm with no healthy worker, answered "
                                 "by the production arm", ["arm"], registry=self.registry)
        self.random_arm = Counter("caravan_gateway_random_arm", "Requests without a unit (a random arm)",
                                  registry=self.registry)
        self.feedback = Counter("caravan_gateway_feedback", "Feedback by result (counted, refused, forged, stale, "
                                "duplicate)", ["result"], registry=self.registry)
        self.rewards = Counter("caravan_gateway_rewards", "Rewards counted by arm and reward", ["arm", "reward"],
                               registry=self.registry)
        self.worker_errors = Counter("caravan_gateway_worker_errors", "Failed worker calls by arm", ["arm"],
                                     registry=self.registry)
        self.background_errors = Counter("caravan_gateway_background_errors", "Errors of the experiment follower, "
                                         "the bandit updater and worker discovery", ["thread"],
                                         registry=self.registry)
        self.weight = Gauge("caravan_gateway_arm_weight", "Each arm's share of traffic in effect", ["arm"],
                            registry=self.registry)
        self._answered: dict[tuple[int, str], tuple[Any, Any]] = {}
        self.degraded = Gauge("caravan_gateway_degraded", "1 while /health says degraded or unavailable",
                              registry=self.registry)

    def answered(self, status: int, arm: str, seconds: float) -> None:
        """Count a /predict answer and its latency (the label children cached: labels() costs microseconds)."""
        children = self._answered.get((status, arm))
        if children is None:
            children = self._answered[status, arm] = (self.requests.labels(str(status), arm),
                                                      self.latency.labels(str(status)))
        children[0].inc()
        children[1].observe(seconds)
