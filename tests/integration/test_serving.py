"""The model server: hot reload under load with zero failed requests, and bad requests never crash it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan import Artifact
from caravan.registry import open_pointer

from ..badmodels import FEATURES, ROW, publish_model
from ..servers import free_port, process

__all__ = ["FEATURES", "ROW", "Load", "publish_model", "serving", "serving_process"]


def point(model: str, artifact: Artifact) -> None:
    pointer = open_pointer()
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
                "promoted_by": "test"}
    assert pointer.change(model, lambda state: document)[1] is not None


def health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=5).json()


@dataclass
class Load:
    """Threads posting valid requests until stopped. Every outcome is recorded — a status code, or the name of
    the exception a request raised — with the model the header and the body name; the test judges them in
    its own thread (an assert in a load thread would only kill that thread)."""

    url: str
    threads: int = 3
    outcomes: list[tuple[int | str, str | None, str | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _running: list[threading.Thread] = field(default_factory=list)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            try:
                response = session.post(f"{self.url}/predict", json={"rows": [ROW, ROW]}, timeout=10)
                try:
                    body = response.json()
                    model = body.get("model") if isinstance(body, dict) else "<not an object>"
                except ValueError:
                    model = "<not JSON>"
                self.outcomes.append((response.status_code, response.headers.get("x-model-version"), model))
            except Exception as exc:  # a timeout, a reset: an outcome like any other
                self.outcomes.append((type(exc).__name__, None, None))

    def __enter__(self) -> Load:
        self._running = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]
        for thread in self._running:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._running:
            thread.join(timeout=30)

    def failures(self) -> list[tuple[int | str, str | None, str | None]]:
        """Outcomes that are not a 200 whose header and body name the same model."""
        return [o for o in self.outcomes if o[0] != 200 or o[1] is None or o[1] != o[2]]

    def check(self, at_least: int = 50) -> None:
        """In the test's thread: every load thread ended, enough requests ran, and none failed."""
        assert not any(thread.is_alive() for thread in self._running), "a load thread did not stop"
        assert len(self.outcomes) >= at_least, f"only {len(self.outcomes)} requests ran"
        failures = self.failures()
        assert not failures, f"{len(failures)} of {len(self.outcomes)} requests failed, e.g. {failures[:5]}"


@contextlib.contextmanager
def serving_process(model_name: str, pointer_kind: str) -> Iterator[tuple[str, int]]:
    """``caravan serve`` in its own process, following ``model_name``'s pointer; yields its base URL and pid."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "caravan.cli", "serve", "--model", model_name, "--host", "127.0.0.1",
            "--port", str(port), "--pointer", pointer_kind]
    with process(args, f"{url}/metrics", env=dict(os.environ)) as proc:
        yield url, proc.pid


@contextlib.contextmanager
def serving(model_name: str, pointer_kind: str) -> Iterator[str]:
    """``caravan serve`` in its own process, following ``model_name``'s pointer; yields its base URL."""
    with serving_process(model_name, pointer_kind) as (url, _):
        yield url


def wait_for(url: str, condition, what: str, timeout_s: float = 20) -> dict:
    """Poll /health until ``condition(health)``; the last answer on a timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = health(url)
        if condition(state):
            return state
        assert time.monotonic() < deadline, f"{what}: {state}"
        time.sleep(0.02)


def test_hot_reload_under_load_fails_no_request(pointer_kind, model_name, local_root):
    """21 promotions under load, one of a model LightGBM refuses and one of a model that kills the process
    loading it: no request fails, each refused model leaves the previous one serving."""
    models = [publish_model(local_root, seed, corrupt=(seed == 10), crash="tree_sizes_wrong" if seed == 15 else None)
              for seed in range(21)]
    refused = {models[10].id, models[15].id}
    point(model_name, models[0])
    with serving(model_name, pointer_kind) as url:
        wait_for(url, lambda state: state.get("model") == models[0].id, "the first model never served")
        served = [models[0].id]
        with Load(url) as load:
            for model in models[1:]:
                before = health(url)["details"]["reloads_failed"]
                point(model_name, model)
                if model.id in refused:
                    state = wait_for(url, lambda s, b=before: s["details"]["reloads_failed"] > b,
                                     f"server did not refuse {model.id}")
                    assert state["model"] == served[-1], "the old model keeps serving"
                    assert state["status"] == "degraded" and model.id in state["reason"], state
                else:
                    wait_for(url, lambda s, m=model: s.get("model") == m.id,
                             f"server did not follow the pointer to {model.id}")
                    served.append(model.id)
            deadline = time.monotonic() + 10  # some load on the last model too
            while sum(1 for o in load.outcomes if o[1] == models[-1].id) < 20 and time.monotonic() < deadline:
                time.sleep(0.02)
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        final = health(url)
    load.check(at_least=100)
    versions = {version for _, version, _ in load.outcomes}
    assert versions <= set(served)
    assert len(versions) >= 10, "requests were served by the models as they changed"
    assert served[-1] == models[-1].id and final["status"] == "ok", "the server ends on the model the pointer names"
    assert 'caravan_model_reloads_total{result="failure"} 1.0' in metrics
    assert 'caravan_model_reloads_total{result="crashed"} 1.0' in metrics
    assert 'caravan_model_reloads_total{result="success"} 19.0' in metrics


# -- bad requests, in process -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
near_rows = st.fixed_dictionaries({}, optional={"price": json_values, "position": json_values,
                                                "popular": json_values, "extra": json_values})


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    from caravan.serving.app import create_app
    from caravan.serving.model import load_model

    root = str(tmp_path_factory.mktemp("served"))
    app = create_app(open_pointer("file"), "unused", watch=False)
    app.state.holder.swap(load_model(publish_model(root, 3)))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=json_values | near_rows | st.lists(near_rows, max_size=3) | st.fixed_dictionaries({"rows": json_values}))
def test_any_json_body_gets_a_prediction_or_a_clear_4xx(client, body):
    response = client.post("/predict", content=json.dumps(body))
    assert response.status_code < 500, response.text
    payload = response.json()
    if response.status_code == 200:
        assert "prediction" in payload or "predictions" in payload
    else:
        assert 400 <= response.status_code < 500
        assert payload["error"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_any_bytes_get_a_clear_4xx_or_a_prediction(client, raw):
    response = client.post("/predict", content=raw)
    assert response.status_code < 500
    assert response.status_code == 200 or response.json()["error"]


def test_errors_name_the_field(client):
    wrong_type = client.post("/predict", json={**ROW, "position": "three"})
    assert wrong_type.status_code == 422
    assert wrong_type.json()["field"] == "position" and "position" in wrong_type.json()["error"]
    unknown = client.post("/predict", json={**ROW, "colour": 1})
    assert unknown.status_code == 422 and "colour" in unknown.json()["error"]
    missing = client.post("/predict", json={"price": 1.0, "popular": False})
    assert missing.status_code == 422 and "position" in missing.json()["error"]
    ok = client.post("/predict", json=[ROW, {**ROW, "price": None}])
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 2
    assert client.get("/health").json()["status"] == "ok"
    assert "caravan_requests_total" in client.get("/metrics").text


def test_health_is_503_before_a_model_is_loaded_and_names_the_release(tmp_path, monkeypatch):
    from starlette.testclient import TestClient

    from caravan.serving.app import create_app

    monkeypatch.setenv("CARAVAN_RELEASE", "v9.9.9")
    with TestClient(create_app(open_pointer("file"), "nothing-yet", watch=False)) as fresh:
        health = fresh.get("/health")
        assert health.status_code == 503 and health.json()["release"] == "v9.9.9"
        assert fresh.post("/predict", json=ROW).status_code == 503


def test_serving_survives_losing_consul(model_name, local_root):
    from starlette.testclient import TestClient

    from caravan.registry.consul import ConsulPointer
    from caravan.serving.app import create_app

    from ..doubles.consul import ConsulDouble

    first, second = publish_model(local_root, 1), publish_model(local_root, 2)
    double = ConsulDouble(lock_delay_s=0.0)
    pointer = ConsulPointer(address=double.start())
    try:
        pointer.change(model_name, lambda s: {"artifact_uri": first.uri, "artifact_id": first.id})
        app = create_app(pointer, model_name, wait_s=2)
        with TestClient(app) as client:
            wait_until(lambda: client.get("/health").json().get("model") == first.id)
            double.set_down(True)
            wait_until(lambda: client.get("/health").json()["details"]["pointer_backend_error"])
            for _ in range(20):
                response = client.post("/predict", json=ROW)
                assert response.status_code == 200 and response.json()["model"] == first.id
            double.set_down(False)
            pointer.change(model_name, lambda s: {"artifact_uri": second.uri, "artifact_id": second.id})
            wait_until(lambda: client.get("/health").json().get("model") == second.id, timeout_s=40)
            assert client.get("/health").json()["details"]["pointer_backend_error"] is None
    finally:
        double.stop()


def wait_until(condition, timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)
