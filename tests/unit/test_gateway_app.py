"""The gateway's HTTP front end to end in one process: a file experiment store followed live, real gRPC
servers as workers (tests.grpc_workers), Starlette's test client."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from caravan.experiments import Arm, Experiment
from caravan.experiments.file import FileExperimentStore
from caravan.gateway.app import Gateway, create_app
from caravan.gateway.signing import RequestSigner
from caravan.gateway.workers import WorkerPool
from caravan.serving.worker_client import PredictorClient
from tests.grpc_workers import FakeWorker
from tests.servers import poll_until

KEY = b"test-signing-key-0123456789"


def document(policy: str = "fixed", weights: tuple[float, float] = (0.5, 0.5), salt: str = "salt-1",
             state: str = "running", winner: str | None = None) -> Experiment:
    arms = (Arm("control", "A", "/art/A", weights[0]), Arm("challenger", "B", "/art/B", weights[1]))
    return Experiment(model="ranker", arms=arms, policy=policy, salt=salt, state=state, winner=winner)


class Setup:
    def __init__(self, tmp: Path, **options: Any) -> None:
        self.store = FileExperimentStore(tmp / "pointers", poll_s=0.01)
        self.workers = {"control": [FakeWorker("A", 0.0)],
                        "challenger": [FakeWorker("B", 100.0), FakeWorker("B", 100.0)]}
        self.pool = WorkerPool(PredictorClient, cooldown_s=30.0)
        self.gateway = Gateway("ranker", self.pool, RequestSigner(KEY), store=self.store, wait_s=0.2,
                               static_workers={arm: [w.target for w in ws] for arm, ws in self.workers.items()},
                               timeout_s=5.0, **options)
        self.version = 0
        self.client = TestClient(create_app(self.gateway))

    def publish(self, exp: Experiment) -> None:
        self.version = self.store.write(exp, self.version)
        poll_until(lambda: self.gateway.follower is not None and self.gateway.follower.version == self.version, 5,
                   "the gateway follows the document")

    def stop(self) -> None:
        for group in self.workers.values():
            for worker in group:
                worker.stop()


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    made = Setup(tmp_path)
    with made.client:
        yield made
    made.stop()


def arm_of(setup: Setup, user: str) -> str:
    from caravan.experiments.assign import assign

    return assign("salt-1", user, [("control", 0.5), ("challenger", 0.5)])


def test_users_reach_their_arm_and_the_answer_says_which(setup: Setup) -> None:
    answer = setup.client.post("/predict", json={"user_id": "u1", "x": 1.0})
    assert answer.status_code == 200, answer.text
    # no experiment yet: everything goes to the production arm
    assert answer.json()["arm"] == "control" and answer.json()["model"] == "A"
    setup.publish(document())
    for i in range(40):
        user = f"user-{i}"
        body = setup.client.post("/predict", json={"user_id": user, "rows": [{"x": 1.0}, {"x": 2.0}]}).json()
        expected = arm_of(setup, user)
        assert body["arm"] == expected and body["model"] == {"control": "A", "challenger": "B"}[expected]
        assert body["predictions"] == ([1.0, 2.0] if expected == "control" else [101.0, 102.0])
        assert body["sticky"] is True and body["fallback"] is False
        assert setup.gateway.signer.verify(body["request_id"]).arm == expected
    unitless = setup.client.post("/predict", json={"x": 1.0})
    assert unitless.json()["sticky"] is False and unitless.headers["x-request-id"] == unitless.json()["request_id"]
    health = setup.client.get("/health").json()
    assert health["status"] == "ok" and health["random_arm_requests"] == 1
    assert {a["name"]: (a["healthy_workers"], a["serves"], a["artifact_id"]) for a in health["arms"]} == {
        "control": (1, ["A"], "A"), "challenger": (2, ["B"], "B")}


def test_a_dead_worker_loses_no_request_and_an_arm_without_workers_falls_back(setup: Setup) -> None:
    setup.publish(document())
    users = [f"user-{i}" for i in range(30)]
    setup.workers["challenger"][0].stop()
    for user in users:  # the arm's other worker answers every request of its users
        body = setup.client.post("/predict", json={"user_id": user, "x": 0.0}).json()
        assert body["arm"] == arm_of(setup, user) and body["fallback"] is False
    setup.workers["challenger"][1].stop()
    answers = [setup.client.post("/predict", json={"user_id": user, "x": 0.0}) for user in users]
    assert all(a.status_code == 200 for a in answers)
    challengers = [a.json() for u, a in zip(users, answers, strict=True) if arm_of(setup, u) == "challenger"]
    assert challengers and all(b["arm"] == "control" and b["fallback"] and b["model"] == "A"
                               and b["assigned_arm"] == "challenger" for b in challengers)
    health = setup.client.get("/health").json()
    assert health["status"] == "degraded" and "'challenger' has no healthy worker" in health["reason"]
    assert health["fallbacks"] == {"challenger": len(challengers)}
    metrics = setup.client.get("/metrics").text
    assert f'caravan_gateway_fallbacks_total{{arm="challenger"}} {float(len(challengers))}' in metrics
    # The experiment stops with the challenger as winner before its workers are back: the old control answers.
    setup.publish(document(state="stopped", winner="challenger"))
    body = setup.client.post("/predict", json={"user_id": "u", "x": 0.0}).json()
    assert (body["arm"], body["assigned_arm"], body["model"]) == ("control", "challenger", "A")
    reason = setup.client.get("/health").json()["reason"]
    assert "'challenger' has no healthy worker" in reason and "does not have" not in reason
    last_error = setup.client.get("/health").json()["workers"]["challenger"][0]["last_error"]
    assert "UNAVAILABLE" in last_error and "\n" not in last_error
    setup.workers["control"][0].stop()
    gone = setup.client.post("/predict", json={"user_id": "u", "x": 0.0})
    assert gone.status_code == 503 and "no worker of model 'ranker' answered" in gone.json()["error"]
    assert setup.client.get("/health").status_code == 503


def test_worker_refusals_and_bad_bodies_are_4xx_with_the_field(setup: Setup) -> None:
    refused = setup.client.post("/predict", json={"user_id": "u", "rows": [{"x": 1.0}, {"bad": 2.0}]})
    assert refused.status_code == 422 and refused.json() == {"error": "row 1: unknown fields ['bad']",
                                                             "field": "bad", "row": 1}
    too_many = setup.client.post("/predict", json=[{"x": 1.0}] * 1000)
    assert too_many.status_code == 413
    assert setup.client.post("/predict", content=b"{").status_code == 422
    assert setup.client.post("/predict", json=[{"user_id": "a"}, {"user_id": "b"}]).status_code == 422
    assert setup.client.get("/predict").status_code == 405


def test_feedback_is_counted_once_and_forgeries_are_refused(setup: Setup) -> None:
    setup.publish(document())
    body = setup.client.post("/predict", json={"user_id": "u1", "x": 1.0}).json()
    counted = setup.client.post("/feedback", json={"request_id": body["request_id"], "reward": 1})
    assert counted.status_code == 202 and counted.json() == {"counted": True, "arm": body["arm"], "reward": 1}
    again = setup.client.post("/feedback", json={"request_id": body["request_id"], "reward": 1})
    assert again.status_code == 409 and "counted already" in again.json()["error"]
    assert setup.gateway.state.counts()[1][body["arm"]] == (1, 0)

    forged = RequestSigner(b"another-key-0123456789abcdef").issue("challenger", body["request_id"].split(".")[2])
    refused = setup.client.post("/feedback", json={"request_id": forged, "reward": 1})
    assert refused.status_code == 403 and "signature does not match" in refused.json()["error"]
    parts = body["request_id"].split(".")
    other_arm = "Y2hhbGxlbmdlcg" if body["arm"] == "control" else "Y29udHJvbA"
    tampered = ".".join([parts[0], other_arm, *parts[2:]])
    assert setup.client.post("/feedback", json={"request_id": tampered, "reward": 1}).status_code == 403
    for bad in ({"request_id": "nope", "reward": 1}, {"request_id": body["request_id"], "reward": 2},
                {"request_id": body["request_id"]}, [1]):
        answer = setup.client.post("/feedback", json=bad)
        assert answer.status_code == 422 and answer.json()["error"]
    assert setup.client.post("/feedback", content=b"x" * 5000).status_code == 413

    setup.publish(document(salt="salt-2"))  # a new experiment: the old request's feedback is not counted
    later = setup.client.post("/predict", json={"user_id": "u2", "x": 1.0}).json()
    current = setup.client.post("/feedback", json={"request_id": later["request_id"], "reward": 0})
    assert current.status_code == 202
    stale = setup.client.post("/feedback", json={"request_id": body["request_id"], "reward": 0})
    assert stale.status_code == 409 and "not running" in stale.json()["error"]
    other = "control" if later["arm"] == "challenger" else "challenger"
    assert setup.gateway.state.counts()[1] == {later["arm"]: (0, 1), other: (0, 0)}  # counters started again


def test_thompson_feedback_moves_the_weights(tmp_path: Path) -> None:
    made = Setup(tmp_path, update_s=0.05, min_weight=0.05)
    try:
        with made.client:
            made.publish(document(policy="thompson"))
            ids: dict[str, list[str]] = {"control": [], "challenger": []}
            for i in range(200):
                body = made.client.post("/predict", json={"user_id": f"user-{i}", "x": 1.0}).json()
                ids[body["arm"]].append(body["request_id"])
            for arm, rate in (("control", 0.1), ("challenger", 0.6)):
                for n, request_id in enumerate(ids[arm]):
                    reward = 1 if n < rate * len(ids[arm]) else 0
                    assert made.client.post("/feedback", json={"request_id": request_id, "reward": reward}) \
                        .status_code == 202
            poll_until(lambda: dict(made.gateway.state.routes.weights).get("challenger", 0) > 0.9, 10,
                       "the challenger's weight rises")
            health = made.client.get("/health").json()
            assert health["bandit"]["updates"] >= 1 and health["experiment"]["weights"]["control"] >= 0.05
            assert made.store.read_stats("ranker", salt="salt-1")["challenger"][0] > 0
    finally:
        made.stop()


def test_the_follower_survives_errors_and_shows_them(setup: Setup, tmp_path: Path) -> None:
    setup.publish(document())
    garbled = next((tmp_path / "pointers").rglob("ranker.json"))
    garbled.write_text("{not json")
    poll_until(lambda: setup.gateway.follower is not None and setup.gateway.follower.errors > 0, 5, "an error")
    health = setup.client.get("/health").json()
    assert health["status"] == "degraded" and "corrupt" in health["reason"]
    assert setup.client.post("/predict", json={"user_id": "u", "x": 1.0}).status_code == 200  # still routing
    setup.version = -1  # the store's check-and-set reads a corrupt file as version -1
    setup.publish(document(salt="salt-3"))
    poll_until(lambda: setup.client.get("/health").json()["status"] == "ok", 5, "healthy again")
    assert 'caravan_gateway_background_errors_total{thread="experiment"}' in setup.client.get("/metrics").text


KEYS = st.sampled_from(["user_id", "rows", "x", "bad", "request_id", "reward"]) | st.text(max_size=5)
BODIES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
                      max_leaves=16)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=BODIES, raw=st.binary(max_size=64))
def test_no_body_gives_a_5xx(setup: Setup, value: Any, raw: bytes) -> None:
    if setup.gateway.follower is not None and setup.gateway.follower.version <= 0:
        setup.publish(document())
    text = json.dumps(value).encode()
    for path in ("/predict", "/feedback"):
        for body in (text, raw):
            answer = setup.client.post(path, content=body)
            assert answer.status_code < 500, (path, body, answer.text)


def test_the_enricher_adds_the_units_features_before_the_worker_call(tmp_path: Path) -> None:
    seen: list[str | None] = []

    def enrich(unit: str | None, rows: list[Any]) -> list[Any]:
        seen.append(unit)
        return [{"boost": 10.0, **row} for row in rows]

    made = Setup(tmp_path, enrich=enrich)
    try:
        with made.client:
            body = made.client.post("/predict", json={"user_id": "u7", "x": 1.0}).json()
            assert body["prediction"] == 11.0 and seen == ["u7"]
    finally:
        made.stop()


def test_workers_of_an_arm_the_experiment_lacks_are_named_in_health(setup: Setup) -> None:
    setup.publish(document())
    members = {arm: [w.target for w in ws] for arm, ws in setup.workers.items()}
    setup.gateway.pool.set_members({**members, "chalenger": members["challenger"]})  # a typo in --worker
    health = setup.client.get("/health").json()
    assert health["status"] == "degraded"
    assert "workers of arms the experiment does not have: chalenger" in health["reason"]


def test_the_documents_weights_hold_until_the_first_outcome(tmp_path: Path) -> None:
    made = Setup(tmp_path, update_s=0.02)
    try:
        with made.client:
            made.publish(document(policy="thompson", weights=(0.9, 0.1)))
            bandit = made.gateway.bandit
            assert bandit is not None
            steps = bandit.steps
            poll_until(lambda: bandit.steps >= steps + 3, 5, "three bandit periods")
            assert dict(made.gateway.state.routes.weights) == {"control": 0.9, "challenger": 0.1}
            body = made.client.post("/predict", json={"user_id": "u1", "x": 1.0}).json()
            assert made.client.post("/feedback", json={"request_id": body["request_id"], "reward": 1}) \
                .status_code == 202
            poll_until(lambda: bandit.updates > 0, 5, "the bandit takes over")
            assert dict(made.gateway.state.routes.weights) != {"control": 0.9, "challenger": 0.1}
    finally:
        made.stop()
