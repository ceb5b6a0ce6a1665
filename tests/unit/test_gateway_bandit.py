"""Two gateways' bandit updates through the Consul double: each writes its own counters, reads everyone's merged,
and both compute the same weights (so a user sees the same arm behind either)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from caravan.experiments import Arm, Experiment
from caravan.experiments.consul import ConsulExperimentStore
from caravan.gateway.follow import BanditUpdater, thompson_for
from caravan.gateway.signing import experiment_tag
from caravan.gateway.state import GatewayState
from tests.doubles.consul import ConsulDouble


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConsulExperimentStore]:
    double = ConsulDouble()
    monkeypatch.setenv("CONSUL_HTTP_ADDR", double.start())
    yield ConsulExperimentStore()
    double.stop()


def test_two_gateways_agree_on_the_weights(store: ConsulExperimentStore) -> None:
    exp = Experiment(model="ranker", policy="thompson", salt="s",
                     arms=(Arm("control", "A", "/x/A", 0.5), Arm("challenger", "B", "/x/B", 0.5)))
    store.write(exp, 0)
    gateways = []
    for name, (control, challenger) in (("gw-1", (3, 40)), ("gw-2", (1, 25))):
        state = GatewayState("control")
        state.apply(exp)
        for arm, rewarded in (("control", control), ("challenger", challenger)):
            for i in range(100):
                assert state.reward(experiment_tag("s"), arm, 1 if i < rewarded else 0)
        gateways.append((state, BanditUpdater(store, "ranker", state, name, min_weight=0.05)))
    for _ in range(2):  # the first round writes each gateway's counters; the second reads both
        for _, updater in gateways:
            updater.update()
    one, two = (dict(state.routes.weights) for state, _ in gateways)
    assert one == two and one["challenger"] > 0.9 and one["control"] >= 0.05
    assert gateways[0][1].merged == {"control": (4, 196), "challenger": (65, 135)}
    assert store.read_stats("ranker", salt="s") == gateways[1][1].merged
    # the same counters give the same weights anywhere; other counters, other draws
    merged = {"control": (4, 196), "challenger": (65, 135)}
    assert thompson_for("s", merged, ["control", "challenger"], 0.05) == one
    assert thompson_for("s", {"control": (5, 5), "challenger": (5, 5)}, ["control", "challenger"], 0.05) != \
        thompson_for("t", {"control": (5, 5), "challenger": (5, 5)}, ["control", "challenger"], 0.05)


def test_a_restarted_gateway_never_overwrites_its_previous_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    from caravan.experiments.document import check_name
    from caravan.gateway.app import Gateway
    from caravan.gateway.signing import RequestSigner
    from caravan.gateway.workers import WorkerPool

    monkeypatch.setenv("NOMAD_ALLOC_ID", "0123abcd-5678-90ab-cdef-0123456789ab")
    first, second = (Gateway("m", WorkerPool(lambda target: None), RequestSigner(b"k" * 32)).gateway_id
                     for _ in range(2))
    assert first != second and first.startswith("gw-0123abcd-") and check_name("gateway id", first) == first


def test_a_background_loop_outlives_its_errors() -> None:
    from caravan.gateway.loop import RetryLoop
    from tests.servers import poll_until

    kinds: list[str] = []

    class Flaky(RetryLoop):
        calls = 0

        def step(self) -> float:
            self.calls += 1
            if self.calls <= 2:
                raise RuntimeError(f"failure {self.calls}")
            if self.calls == 3:
                self.seen = (self.errors, self.last_error)
            return 0.01

    loop = Flaky("flaky-thing", min_backoff_s=0.01, max_backoff_s=0.02, on_error=kinds.append)
    loop.start()
    try:
        poll_until(lambda: loop.steps >= 2, 5, "steps after the errors")
    finally:
        loop.stop()
    loop.join(5)
    assert loop.seen == (2, "RuntimeError: failure 2") and loop.last_error is None and loop.errors == 2
    assert kinds == ["flaky", "flaky"] and not loop.is_alive()
