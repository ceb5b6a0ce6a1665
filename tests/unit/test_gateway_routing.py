"""Routing determinism, the worker pool's failover and the production fallback, against real gRPC servers."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.errors import ConfigurationError
from caravan.experiments import Arm, Experiment
from caravan.gateway.routing import choose, routes_of
from caravan.gateway.workers import NoHealthyWorker, WorkerPool, WorkerRefused, members_of, parse_worker_flags
from caravan.serving.worker_client import PredictorClient
from tests.grpc_workers import FakeWorker


def call(pool, *args, **kwargs):
    """A request through the pool, on an event loop as the gateway sends it."""
    return asyncio.run(pool.call_async(*args, **kwargs))

UNITS = st.text(min_size=1, max_size=20)


def experiment(policy: str = "fixed", state: str = "running", winner: str | None = None,
               weights: tuple[float, float] = (0.5, 0.5), salt: str = "s1") -> Experiment:
    arms = tuple(Arm(name, f"TrainRanker-{name}", f"/art/TrainRanker-{name}", weight)
                 for name, weight in zip(("control", "challenger"), weights, strict=True))
    return Experiment(model="ranker", arms=arms, policy=policy, salt=salt, state=state, winner=winner)


@given(unit=UNITS)
def test_a_unit_always_gets_the_same_arm_and_it_is_sticky(unit: str) -> None:
    routes = routes_of(experiment(), "control")
    first = choose(routes, unit, random.Random(1))
    assert first == choose(routes, unit, random.Random(2)) == choose(routes_of(experiment(), "control"), unit,
                                                                     random.Random(3))
    assert first[1] is True and first[0] in ("control", "challenger")


def test_the_split_follows_the_weights_and_unitless_requests_are_random_and_flagged() -> None:
    routes = routes_of(experiment(weights=(0.2, 0.8)), "control")
    arms = [choose(routes, f"user-{i}", random.Random(0))[0] for i in range(4000)]
    assert 0.17 < arms.count("control") / len(arms) < 0.23
    rng = random.Random(7)
    drawn = [choose(routes, None, rng) for _ in range(2000)]
    assert all(not sticky for _, sticky in drawn)
    assert 0.17 < sum(arm == "control" for arm, _ in drawn) / len(drawn) < 0.23


def test_stopped_experiments_and_no_experiment_route_to_one_arm() -> None:
    assert choose(routes_of(None, "control"), "u", random.Random()) == ("control", True)
    stopped = routes_of(experiment(state="stopped", winner="challenger"), "control")
    assert {choose(stopped, f"u{i}", random.Random())[0] for i in range(50)} == {"challenger"}
    no_winner = routes_of(experiment(state="stopped"), "control")
    assert {choose(no_winner, f"u{i}", random.Random())[0] for i in range(50)} == {"control"}
    # --production-arm names an arm the experiment lacks: its first arm is production
    assert routes_of(experiment(), "main").production == "control"


def test_thompson_weights_replace_the_documents_only_under_policy_thompson() -> None:
    bandit = {"control": 0.1, "challenger": 0.9}
    assert dict(routes_of(experiment(policy="thompson"), "control", bandit).weights) == bandit
    assert dict(routes_of(experiment(policy="fixed"), "control", bandit).weights) == {"control": 0.5,
                                                                                      "challenger": 0.5}
    assert dict(routes_of(experiment(policy="thompson"), "control", {"control": 1.0}).weights)["control"] == 0.5


def test_worker_flags_and_consul_entries() -> None:
    assert parse_worker_flags(["a=127.0.0.1:1", "a=h:2", "b=[::1]:3"]) == {"a": ["127.0.0.1:1", "h:2"],
                                                                           "b": ["[::1]:3"]}
    for bad in ("a", "a=host", "=h:1", "a=h:0", "a=h:x"):
        with pytest.raises(ConfigurationError, match="ARM=host:port"):
            parse_worker_flags([bad])
    entry = {"Node": {"Address": "10.0.0.9"}, "Service": {"Address": "", "Port": 9001,
                                                          "Tags": ["model=ranker", "arm=control"]}}
    other = {"Node": {"Address": "10.0.0.9"}, "Service": {"Address": "10.1.1.1", "Port": 9002,
                                                          "Tags": ["model=other", "arm=control"]}}
    assert members_of([entry, other], "ranker") == {"control": ["10.0.0.9:9001"]}


@pytest.fixture
def workers() -> Iterator[dict[str, list[FakeWorker]]]:
    found = {"control": [FakeWorker("A", 0.0), FakeWorker("A", 0.0)], "challenger": [FakeWorker("B", 100.0)]}
    yield found
    for group in found.values():
        for worker in group:
            worker.stop()


def _pool(workers: dict[str, list[FakeWorker]]) -> WorkerPool:
    pool = WorkerPool(PredictorClient, cooldown_s=30.0)
    pool.set_members({arm: [w.target for w in group] for arm, group in workers.items()})
    return pool


def test_calls_rotate_over_an_arms_workers_and_skip_a_dead_one(workers: dict[str, list[FakeWorker]]) -> None:
    pool = _pool(workers)
    for _ in range(6):
        assert call(pool, "control", [{"x": 1.0}], "r", 5.0).scores == [1.0]
    assert [w.calls for w in workers["control"]] == [3, 3]  # round robin over one channel each
    workers["control"][0].stop()
    for _ in range(6):  # every request answered: the dead worker is tried at most once, then cooled down
        assert call(pool, "control", [{"x": 2.0}], "r", 5.0).artifact_id == "A"
    assert pool.healthy_count("control") == 1
    described = {w["target"]: w for w in pool.describe()["control"]}
    dead = described[workers["control"][0].target]
    assert not dead["healthy"] and dead["errors"] == 1 and "UNAVAILABLE" in dead["last_error"]
    workers["control"][1].stop()
    with pytest.raises(NoHealthyWorker, match="'control' has no healthy worker"):
        call(pool, "control", [{"x": 1.0}], "r", 5.0)
    with pytest.raises(NoHealthyWorker, match="'nothing' has no healthy worker"):
        call(pool, "nothing", [{"x": 1.0}], "r", 5.0)


def test_a_refusal_is_the_clients_and_no_other_worker_is_tried(workers: dict[str, list[FakeWorker]]) -> None:
    pool = _pool(workers)
    with pytest.raises(WorkerRefused, match=r"unknown fields \['bad'\]") as refused:
        call(pool, "control", [{"x": 1.0}, {"bad": 1.0}], "r", 5.0)
    assert (refused.value.field_name, refused.value.row, refused.value.too_large) == ("bad", 1, False)
    with pytest.raises(WorkerRefused, match="at most 999 rows") as large:
        call(pool, "control", [{"x": 1.0}] * 1000, "r", 5.0)
    assert large.value.too_large
    with pytest.raises(WorkerRefused, match="row 0 must be a JSON object"):  # refused before it is sent
        call(pool, "control", [3], "r", 5.0)
    assert pool.healthy_count("control") == 2 and sum(w["errors"] for w in pool.describe()["control"]) == 0


def test_membership_changes_keep_the_channels_of_workers_that_stay(workers: dict[str, list[FakeWorker]]) -> None:
    made: list[str] = []

    def connect(target: str) -> PredictorClient:
        made.append(target)
        return PredictorClient(target)

    pool = WorkerPool(connect)
    a, b = (w.target for w in workers["control"])
    pool.set_members({"control": [a]})
    pool.set_members({"control": [a, b]})
    pool.set_members({"control": [b]})
    assert made == [a, b]
    assert [w["target"] for w in pool.describe()["control"]] == [b]
    assert call(pool, "control", [{"x": 1.0}], "r", 5.0).scores == [1.0]


@settings(max_examples=25, deadline=None)
@given(weights=st.tuples(st.floats(0.05, 1), st.floats(0.05, 1)), salt=st.text(min_size=1, max_size=8),
       units=st.lists(UNITS, min_size=1, max_size=20))
def test_routing_is_a_function_of_salt_unit_and_weights(weights: tuple[float, float], salt: str,
                                                        units: list[str]) -> None:
    one = routes_of(experiment(weights=weights, salt=salt), "control")
    two = routes_of(experiment(weights=weights, salt=salt), "challenger")  # another gateway's flags
    assert [choose(one, u, random.Random())[0] for u in units] == [choose(two, u, random.Random())[0] for u in units]
