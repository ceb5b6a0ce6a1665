"""A model file that kills the process loading it never reaches the server's process; a pointer that cannot be
read never stops the watcher.

Promoting a LightGBM file that aborts the loader (see ``tests/badmodels.py``) while requests run: no request
fails, the old model keeps serving, ``/health`` names the crash. A fresh ``caravan serve`` on that pointer serves
the newest earlier model that loads (degraded), or answers 503 with the reason; it never crash-loops. A truncated
pointer, a document of the wrong shape, Consul garbage: the server keeps serving, says degraded, and follows the
next good promotion.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import requests

from caravan import Artifact, open_store
from caravan.registry import open_pointer
from caravan.registry.base import current_key

from ..badmodels import ROW, publish_model
from .test_serving import Load, health, point, serving, wait_for


def crashed_metric(url: str) -> str:
    return requests.get(f"{url}/metrics", timeout=5).text


def test_a_model_that_kills_the_loader_is_refused_while_the_old_one_serves(model_name, local_root):
    good, crasher, after = publish_model(local_root, 1), publish_model(local_root, 2, crash="leaf_value_short"), \
        publish_model(local_root, 3)
    point(model_name, good)
    with serving(model_name, "file") as url:
        wait_for(url, lambda s: s.get("model") == good.id, "the good model never served")
        with Load(url) as load:
            point(model_name, crasher)
            state = wait_for(url, lambda s: s["details"]["reloads_crashed"] >= 1, "the crash was not reported")
            while len(load.outcomes) < 100:  # requests after the crash too
                time.sleep(0.01)
            metrics = crashed_metric(url)
            after_crash = health(url)
            point(model_name, after)
            recovered = wait_for(url, lambda s: s.get("model") == after.id, "the next promotion was not followed")
    load.check(at_least=100)
    assert {version for _, version, _ in load.outcomes} <= {good.id, after.id}
    assert state["model"] == good.id, "the old model keeps serving"
    assert after_crash["status"] == "degraded" and crasher.id in after_crash["reason"], after_crash
    assert "killed the probe process" in after_crash["last_error"] and "SIGABRT" in after_crash["last_error"]
    assert 'caravan_model_reloads_total{result="crashed"} 1.0' in metrics
    assert recovered["status"] == "ok" and recovered["reason"] is None


def test_a_fresh_server_on_a_crashing_pointer_serves_the_previous_good_model(model_name, local_root):
    older, good, crasher = publish_model(local_root, 1), publish_model(local_root, 2), \
        publish_model(local_root, 3, crash="num_leaves_zero")
    for artifact in (older, good, crasher):
        point(model_name, artifact)
    with serving(model_name, "file") as url:
        state = wait_for(url, lambda s: s.get("model") is not None, "nothing served")
        response = requests.post(f"{url}/predict", json=ROW, timeout=5)
        metrics = crashed_metric(url)
    assert state["model"] == good.id, "the newest earlier model in the history"
    assert state["status"] == "degraded", state
    assert crasher.id in state["reason"] and "from the history" in state["reason"], state["reason"]
    assert response.status_code == 200 and response.json()["model"] == good.id
    assert 'caravan_model_reloads_total{result="crashed"} 1.0' in metrics


def test_a_fresh_server_with_no_model_that_loads_answers_503_with_the_reason(model_name, local_root):
    crasher, good = publish_model(local_root, 2, crash="decision_type_bad"), publish_model(local_root, 4)
    point(model_name, crasher)
    with serving(model_name, "file") as url:
        deadline = time.monotonic() + 20
        while (answer := requests.get(f"{url}/health", timeout=5)).json()["status"] != "unavailable":
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.05)
        predict = requests.post(f"{url}/predict", json=ROW, timeout=5)
        point(model_name, good)  # the server is still there, and follows the next promotion
        recovered = wait_for(url, lambda s: s.get("model") == good.id, "the next promotion was not followed")
    assert answer.status_code == 503
    assert crasher.id in answer.json()["reason"] and "no earlier model" in answer.json()["reason"]
    assert predict.status_code == 503 and crasher.id in predict.json()["error"]
    assert recovered["status"] == "ok"


# -- the watcher, in process ------------------------------------------------------------------------------------

@pytest.fixture
def app_client(model_name, local_root):
    """A server following the file pointer of ``model_name`` in this process (the probe is still a child)."""
    from starlette.testclient import TestClient

    from caravan.serving.app import create_app

    app = create_app(open_pointer("file"), model_name, wait_s=1)
    app.state.watcher.min_backoff_s = app.state.watcher.max_backoff_s = 0.1  # retries every 0.1 s
    with TestClient(app) as client:
        yield client


def poll(client, condition, what: str, timeout_s: float = 20) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        state = client.get("/health").json()
        if condition(state):
            return state
        assert time.monotonic() < deadline, f"{what}: {state}"
        time.sleep(0.02)


def pointer_file(local_root: str, model: str) -> Path:
    return Path(local_root).parent / "pointers" / current_key(model)


@pytest.mark.parametrize("damage", ["truncated", "wrong shape", "not an object", "artifact_id a number"])
def test_a_bad_pointer_file_leaves_the_server_serving_and_degraded(app_client, model_name, local_root, damage):
    first, second = publish_model(local_root, 1), publish_model(local_root, 2)
    point(model_name, first)
    poll(app_client, lambda s: s.get("model") == first.id, "first model never served")
    path = pointer_file(local_root, model_name)
    stored = json.loads(path.read_bytes())
    version = stored["version"]
    bad = {"truncated": path.read_bytes()[: len(path.read_bytes()) // 2],
           "wrong shape": json.dumps({"version": version + 1, "doc": stored["document"]}).encode(),
           "not an object": json.dumps({"version": version + 1, "document": ["a", 1]}).encode(),
           "artifact_id a number": json.dumps({"version": version + 1,
                                               "document": {**stored["document"], "artifact_id": 7}}).encode()}
    path.write_bytes(bad[damage])
    state = poll(app_client, lambda s: s["status"] == "degraded", "the bad pointer was not reported")
    assert state["model"] == first.id and state["last_error"], state
    assert app_client.post("/predict", json=ROW).json()["model"] == first.id
    errors = app_client.get("/metrics").text
    assert "caravan_pointer_errors_total" in errors
    assert app_client.app.state.watcher.is_alive()
    good = {"version": version + 2, "document": {"artifact_uri": second.uri, "artifact_id": second.id}}
    path.write_bytes(json.dumps(good).encode())  # the repair, as `caravan models promote --force` writes it
    state = poll(app_client, lambda s: s.get("model") == second.id, "the next good pointer was not followed")
    assert state["status"] == "ok" and state["last_error"] is None


def test_consul_garbage_leaves_the_server_serving_and_degraded(model_name, local_root, consul_address):
    import consul
    from starlette.testclient import TestClient

    from caravan.registry.consul import ConsulPointer
    from caravan.serving.app import create_app

    first, second = publish_model(local_root, 1), publish_model(local_root, 2)
    host, port = consul_address.rsplit("//", 1)[-1].rsplit(":", 1)
    kv = consul.Consul(host=host, port=int(port)).kv
    pointer = ConsulPointer(address=consul_address)
    pointer.change(model_name, lambda s: {"artifact_uri": first.uri, "artifact_id": first.id})
    app = create_app(pointer, model_name, wait_s=1)
    app.state.watcher.min_backoff_s = app.state.watcher.max_backoff_s = 0.1
    with TestClient(app) as client:
        poll(client, lambda s: s.get("model") == first.id, "first model never served")
        for garbage in (b"\x00\xffnot json{", b'{"artifact_uri": 3}', b"[]"):
            assert kv.put(current_key(model_name), garbage)
            state = poll(client, lambda s: s["status"] == "degraded", f"garbage {garbage!r} not reported")
            assert state["model"] == first.id and state["last_error"]
            assert client.post("/predict", json=ROW).json()["model"] == first.id
        good = {"artifact_uri": second.uri, "artifact_id": second.id}
        assert kv.put(current_key(model_name), json.dumps(good).encode())
        state = poll(client, lambda s: s.get("model") == second.id, "the next good pointer was not followed")
        assert state["status"] == "ok"
        assert app.state.watcher.is_alive()


def test_the_same_id_at_another_uri_is_a_change(app_client, model_name, local_root, tmp_path):
    first = publish_model(local_root, 1)
    point(model_name, first)
    poll(app_client, lambda s: s.get("uri") == first.uri, "first model never served")
    other_root = tmp_path / "other-store"
    shutil.copytree(Path(local_root) / first.id, other_root / first.id)
    moved = Artifact(open_store(str(other_root)), first.id)
    assert moved.id == first.id and moved.uri != first.uri
    point(model_name, moved)
    state = poll(app_client, lambda s: s.get("uri") == moved.uri, "the move to another URI was ignored")
    assert state["model"] == first.id and state["status"] == "ok"
