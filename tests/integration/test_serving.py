"""The model server: hot reload under load with zero failed requests, and bad requests never crash it."""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import numpy as np
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan import Address, Artifact, open_store
from caravan.registry import open_pointer

from ..servers import free_port, process

FEATURES = [{"name": "price", "type": "double"}, {"name": "position", "type": "int32"},
            {"name": "popular", "type": "bool"}]
ROW = {"price": 12.5, "position": 3, "popular": True}


def publish_model(root: str, seed: int, corrupt: bool = False) -> Artifact:
    """A small real LightGBM model as a training artifact (or one whose model file is garbage)."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(1, 50, 2000), rng.integers(1, 20, 2000), rng.integers(0, 2, 2000)])
    y = (x[:, 0] / 50 + (x[:, 2] * 0.3) + rng.normal(0, 0.3, 2000) > 0.8).astype(float)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": seed},
                        lgb.Dataset(x, y, feature_name=[f["name"] for f in FEATURES]), num_boost_round=5 + seed)
    artifact = Artifact(open_store(root), Address("ServedModel", {"seed": str(seed), "corrupt": str(corrupt)}))
    with artifact.writer() as writer:
        writer.write_text("model.txt", "this is not a LightGBM model\n" if corrupt else booster.model_to_string())
        writer.write_json("features.json", {"label": "y", "features": FEATURES})
        writer.write_json("sample.json", [{"price": float(p), "position": int(q), "popular": bool(r)}
                                          for p, q, r in x[:16]])
    return artifact


def point(model: str, artifact: Artifact) -> None:
    pointer = open_pointer()
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
                "promoted_by": "test"}
    assert pointer.change(model, lambda state: document)[1] is not None


def health(url: str) -> dict:
    return requests.get(f"{url}/health", timeout=5).json()


def test_hot_reload_under_load_fails_no_request(pointer_kind, model_name, local_root):
    models = [publish_model(local_root, seed, corrupt=(seed == 10)) for seed in range(21)]
    point(model_name, models[0])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "caravan.cli", "serve", "--model", model_name, "--host", "127.0.0.1",
            "--port", str(port), "--pointer", pointer_kind]
    with process(args, f"{url}/metrics", env=dict(os.environ)):
        deadline = time.monotonic() + 20
        while health(url).get("model") != models[0].id:
            assert time.monotonic() < deadline, health(url)
            time.sleep(0.05)
        results: list[tuple[int, str | None]] = []
        stop = threading.Event()

        def load() -> None:
            session = requests.Session()
            while not stop.is_set():
                response = session.post(f"{url}/predict", json={"rows": [ROW, ROW]}, timeout=10)
                body = response.json()
                results.append((response.status_code, response.headers.get("x-model-version")))
                assert body["model"] == response.headers.get("x-model-version")

        generators = [threading.Thread(target=load) for _ in range(3)]
        for generator in generators:
            generator.start()
        served = [models[0].id]
        for model in models[1:]:
            before = health(url)["details"]["reloads_failed"]
            point(model_name, model)
            deadline = time.monotonic() + 15
            while True:
                state = health(url)
                if "corrupt=True" in model.id:
                    if state["details"]["reloads_failed"] > before:
                        assert state["model"] == served[-1], "the old model keeps serving"
                        break
                elif state["model"] == model.id:
                    served.append(model.id)
                    break
                assert time.monotonic() < deadline, f"server did not follow the pointer to {model.id}: {state}"
                time.sleep(0.02)
        stop.set()
        for generator in generators:
            generator.join()
        metrics = requests.get(f"{url}/metrics", timeout=5).text
    statuses = {status for status, _ in results}
    assert statuses == {200}, f"non-2xx responses: {statuses - {200}}"
    assert len(results) > 100
    versions = {version for _, version in results}
    assert versions <= set(served)
    assert len(versions) >= 10, "requests were served by the models as they changed"
    assert served[-1] == models[-1].id, "the server ends on the model the pointer names"
    assert 'caravan_model_reloads_total{result="failure"} 1.0' in metrics
    assert 'caravan_model_reloads_total{result="success"} 20.0' in metrics


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
