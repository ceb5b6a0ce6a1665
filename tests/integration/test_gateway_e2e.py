"""End to end: two workers' arms (two different trained models), one `caravan gateway` process, an experiment
started, followed and stopped from the CLI. Users reach their arm, feedback moves the Thompson weights, a
dead worker loses no request of its arm's users, and the stopped experiment's winner is promoted through the
gate and takes every user."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.cli import main as caravan
from caravan.experiments import experiment_store
from caravan.experiments.assign import assign
from caravan.registry import open_pointer
from caravan.serving.worker import ArmPointer, Worker

from ..servers import free_port, poll_until, process
from ..tiny_models import make_dataset, make_model

SIGNAL = {"s1": 1.0, "s2": 0.6, "s3": 0.3}
ROW = {"s1": 0.3, "s2": -1.2, "s3": 0.5}
KEY = "e2e-signing-key-0123456789abcdef"
VALUES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6)
BODIES = st.recursive(VALUES | st.fixed_dictionaries({"user_id": VALUES, "s1": VALUES, "s2": VALUES, "s3": VALUES}),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                          st.sampled_from(["user_id", "rows", "s1", "request_id", "reward"]), inner, max_size=4),
                      max_leaves=10)


@contextlib.contextmanager
def workers(model: str, arms: list[str]) -> Iterator[list[Worker]]:
    """One in-process `caravan worker` per entry of ``arms`` (real gRPC), each following its experiment arm."""
    started = []
    try:
        for arm in arms:
            worker = Worker(ArmPointer(experiment_store("file"), arm), model, arm=arm, host="127.0.0.1",
                            grpc_port=0, http_port=0, isolate=False)
            started.append(worker.start())
        poll_until(lambda: all(w.holder.current is not None for w in started), 30, "every worker loads its arm")
        yield started
    finally:
        for worker in started:
            worker.stop(0.2)


class Gateway:
    def __init__(self, url: str) -> None:
        self.url = url

    def predict(self, user: str | None) -> dict[str, Any]:
        body = {"user_id": user, **ROW} if user is not None else ROW
        answer = requests.post(f"{self.url}/predict", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    def feedback(self, request_id: str, reward: Any) -> requests.Response:
        return requests.post(f"{self.url}/feedback", json={"request_id": request_id, "reward": reward}, timeout=10)

    def health(self) -> dict[str, Any]:
        return requests.get(f"{self.url}/health", timeout=10).json()  # type: ignore[no-any-return]


def test_an_experiment_through_the_gateway(local_root: str, model_name: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(local_root, "d", SIGNAL)
    a, b = (make_model(local_root, data, list(SIGNAL), name=n, iterations=i) for n, i in (("a", 20), ("b", 22)))
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"challenger={b.uri}",
                    "--weights", "50,50", "--policy", "thompson"]) == 0
    salt = experiment_store("file").read(model_name)[0].salt  # type: ignore[union-attr]
    port = free_port()
    with workers(model_name, ["control", "challenger", "challenger"]) as running:
        control, challenger, spare = running
        flags = [f"--worker=control=127.0.0.1:{control.grpc_port}",
                 f"--worker=challenger=127.0.0.1:{challenger.grpc_port}",
                 f"--worker=challenger=127.0.0.1:{spare.grpc_port}"]
        args = [sys.executable, "-m", "caravan.cli", "gateway", "--model", model_name, "--host", "127.0.0.1",
                "--port", str(port), "--update-s", "0.2", "--min-weight", "0.05", *flags]
        url = f"http://127.0.0.1:{port}"
        with process(args, f"{url}/health", env={**os.environ, "CARAVAN_SECRET_GATEWAY_SIGNING_KEY": KEY}):
            gateway = Gateway(url)
            poll_until(lambda: gateway.health()["experiment"]["state"] == "running", 20, "the gateway follows")
            health = gateway.health()
            assert KEY not in str(health) and health["signing_key_configured"] is True
            weights = list(health["experiment"]["weights"].items())

            # Users reach their arm, and the arm's model answers.
            users = [f"user-{i}" for i in range(60)]
            answers = {user: gateway.predict(user) for user in users}
            artifact = {"control": a.id, "challenger": b.id}
            for user, body in answers.items():
                assert body["arm"] == assign(salt, user, weights) and body["model"] == artifact[body["arm"]]
                assert body["sticky"] is True and body["fallback"] is False
            assert gateway.predict("user-1")["arm"] == answers["user-1"]["arm"]  # sticky
            assert gateway.predict(None)["sticky"] is False

            # Errors: malformed feedback, forged request id, a request id's arm changed: clear 4xx.
            some = answers["user-1"]["request_id"]
            assert gateway.feedback(some, 2).status_code == 422
            assert gateway.feedback(some, True).status_code == 422
            forged = some.rsplit(".", 1)[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
            assert gateway.feedback(forged, 1).status_code == 403
            assert "signature" in gateway.feedback(forged, 1).json()["error"]

            # Whatever a client sends, the real workers behind the gateway answer it or refuse it: never a 5xx.
            outcomes: list[tuple[Any, Any, int]] = []

            @settings(max_examples=60, deadline=None, database=None)
            @given(value=BODIES)
            def any_body(value: Any) -> None:
                for path in ("/predict", "/feedback"):
                    answer = requests.post(f"{url}{path}", data=json.dumps(value), timeout=10)
                    outcomes.append((path, value, answer.status_code))

            any_body()
            assert [o for o in outcomes if o[2] >= 500] == []

            # Feedback: the challenger's users click, the control's do not; the weights follow.
            for body in answers.values():
                reward = 1 if body["arm"] == "challenger" else 0
                assert gateway.feedback(body["request_id"], reward).status_code == 202
            poll_until(lambda: gateway.health()["experiment"]["weights"]["challenger"] > 0.9, 20,
                       "the challenger's weight rises")
            assert gateway.health()["experiment"]["weights"]["control"] >= 0.05  # the floor

            # Killing one of the challenger's workers under load loses none of its users' requests.
            moved = [u for u in users if gateway.predict(u)["arm"] == "challenger"]
            assert moved
            outcomes.clear()
            done = threading.Event()

            def load() -> None:
                with requests.Session() as session:
                    while not done.is_set():
                        for user in moved:
                            try:  # recorded, never raised: the main thread asserts on what every thread saw
                                answer = session.post(f"{url}/predict", json={"user_id": user, **ROW}, timeout=10)
                                body = answer.json()
                                outcome = (answer.status_code, body.get("arm"), body.get("model"), body.get("fallback"))
                            except Exception as exc:
                                outcome = ("error", repr(exc), None, None)
                            outcomes.append((user, outcome, 0))

            threads = [threading.Thread(target=load) for _ in range(3)]
            for thread in threads:
                thread.start()
            poll_until(lambda: len(outcomes) >= 30, 20, "requests under way")
            challenger.stop(0)  # calls in flight are cut
            running.remove(challenger)  # stopped for good: not again at the end
            seen = len(outcomes)
            poll_until(lambda: len(outcomes) >= seen + 60, 20, "requests after the kill")
            done.set()
            for thread in threads:
                thread.join(20)
            assert {outcome for _, outcome, _ in outcomes} == {(200, "challenger", b.id, False)}
            arms = {arm["name"]: arm for arm in gateway.health()["arms"]}
            assert arms["challenger"]["healthy_workers"] == 1 and arms["challenger"]["fallbacks"] == 0

            # The CLI sees the gateway's counters; stop promotes the winner through the gate.
            clicks = sum(1 for body in answers.values() if body["arm"] == "challenger")

            def status() -> dict[str, Any]:
                capsys.readouterr()
                assert caravan(["experiment", "status", model_name, "--json"]) == 0
                return {arm["name"]: arm for arm in json.loads(capsys.readouterr().out)["arms"]}

            poll_until(lambda: status()["challenger"]["rewards"] == clicks, 20, "the counters reach the store")
            assert status()["control"]["requests"] == len(users) - clicks and status()["control"]["rewards"] == 0
            assert caravan(["experiment", "stop", model_name, "--winner", "challenger", "--tolerance", "1"]) == 0
            assert open_pointer().read(model_name).artifact_id == b.id
            poll_until(lambda: gateway.health()["experiment"]["state"] == "stopped", 20, "the gateway sees the stop")
            assert {gateway.predict(u)["arm"] for u in users[:20]} == {"challenger"}
            late = gateway.feedback(answers["user-2"]["request_id"], 1)
            assert late.status_code == 409 and "not running" in late.json()["error"]


def test_the_gateway_finds_its_workers_in_consul(local_root: str, model_name: str) -> None:
    """`caravan gateway` without --worker: the workers of the model come from Consul's health API."""
    from caravan.serving.worker import FixedPointer

    from ..doubles.consul import ConsulDouble

    data = make_dataset(local_root, "d", SIGNAL)
    model = make_model(local_root, data, list(SIGNAL), name="a")
    consul = ConsulDouble()
    address = consul.start()
    worker = Worker(FixedPointer(model.uri), model_name, arm="control", host="127.0.0.1", grpc_port=0, http_port=0,
                    isolate=False).start()
    try:
        poll_until(lambda: worker.holder.current is not None, 30, "the worker loads its model")
        consul.register_service("caravan-dev-worker", "127.0.0.1", worker.grpc_port,
                                tags=[f"model={model_name}", "arm=control"])
        consul.register_service("caravan-dev-worker", "127.0.0.1", 1, tags=["model=another", "arm=control"])
        port = free_port()
        args = [sys.executable, "-m", "caravan.cli", "gateway", "--model", model_name, "--host", "127.0.0.1",
                "--port", str(port)]
        env = {**os.environ, "CONSUL_HTTP_ADDR": address, "CARAVAN_ENVIRONMENT": "dev"}
        with process(args, f"http://127.0.0.1:{port}/health", env=env):
            gateway = Gateway(f"http://127.0.0.1:{port}")
            poll_until(lambda: gateway.health()["status"] == "ok", 20, "the gateway finds the worker")
            body = gateway.predict("u-1")
            assert (body["arm"], body["model"]) == ("control", model.id)
            health = gateway.health()
            assert health["discovery"]["service"] == "caravan-dev-worker"
            assert health["workers"] == {"control": [{"target": f"127.0.0.1:{worker.grpc_port}", "healthy": True,
                                                      "calls": 1, "errors": 0, "last_error": None,
                                                      "serves": model.id, "sent": 1}]}
    finally:
        worker.stop(0.2)
        consul.stop()
