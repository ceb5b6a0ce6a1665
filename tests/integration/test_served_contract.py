"""The model server's HTTP contract, as black-box checks against one base URL (``requests`` only).

With ``CARAVAN_TEST_SERVING_URL`` set (CI's staging-test job sets it), the checks run against that deployed
server. Otherwise a small model is published and a real ``python -m caravan.cli serve`` is started on a free
port, following a file pointer, so ``make test`` holds the code to the contract the deployed server is held to.

Every request is built from what ``GET /health`` says is served (the features, their types, the row limit),
never from what this file knows about a model: the same checks hold for whatever model staging serves.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ..badmodels import publish_model
from ..servers import free_port, process

URL_ENV = "CARAVAN_TEST_SERVING_URL"
MODEL = "served-contract"
TIMEOUT_S = 30.0
INTEGER_PREFIXES = ("int", "uint")
NUMBER_PREFIXES = ("float", "double", "half")


# -- the server under test ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the server under test: the deployed one named by the environment, or one started here."""
    deployed = os.environ.get(URL_ENV, "").strip()
    if deployed:
        if not deployed.startswith(("http://", "https://")):
            pytest.fail(f"{URL_ENV}={deployed!r} must start with http:// or https://")
        wait_healthy(deployed.rstrip("/"))
        yield deployed.rstrip("/")
        return
    from caravan.registry.file import FilePointer

    root = tmp_path_factory.mktemp("served-contract")
    artifacts, pointers = root / "artifacts", root / "pointers"
    artifact = publish_model(str(artifacts), seed=3)
    document = {"artifact_uri": artifact.uri, "artifact_id": artifact.id, "metrics": {}, "action": "promote",
                "promoted_by": "test"}
    FilePointer(pointers).change(MODEL, lambda state: document)
    port = free_port()
    local = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "caravan.cli", "serve", "--model", MODEL, "--host", "127.0.0.1",
            "--port", str(port), "--pointer", "file"]
    env = {"CARAVAN_POINTER": "file", "CARAVAN_POINTER_ROOT": str(pointers), "CARAVAN_ARTIFACT_ROOT": str(artifacts)}
    with process(args, f"{local}/metrics", env=env):
        wait_healthy(local)
        yield local


def wait_healthy(base: str, timeout_s: float = 30.0) -> None:
    """Wait until ``/health`` is 200 (the server loads its model after it starts listening)."""
    deadline = time.monotonic() + timeout_s
    said = ""
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{base}/health", timeout=5)
            if response.status_code == 200:
                return
            said = f"{response.status_code}: {response.text[:300]}"
        except requests.RequestException as exc:
            said = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    pytest.fail(f"{base}/health not 200 after {timeout_s:.0f} s; last answer {said}")


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def health(url: str, http: requests.Session) -> dict[str, Any]:
    response = http.get(f"{url}/health", timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.fixture(scope="module")
def schema(health: dict[str, Any]) -> list[dict[str, str]]:
    """The served features and their types, in model order."""
    assert isinstance(health.get("schema"), list), f"/health gives no feature types ('schema'): {health}"
    return list(health["schema"])


def value_for(kind: str, i: int = 0) -> Any:
    """A JSON value the server accepts for a feature of this type (null, a missing value, for any other type)."""
    if kind == "bool":
        return i % 2 == 0
    if kind.startswith(INTEGER_PREFIXES):
        return i % 7
    if kind.startswith(NUMBER_PREFIXES):
        return round(0.5 + 1.25 * i, 3)
    return None


def wrong_value_for(kind: str) -> Any:
    """A JSON value of the wrong type for a feature of this type (a string is wrong for every one)."""
    if kind == "bool":
        return 1
    if kind.startswith(INTEGER_PREFIXES):
        return 0.5
    if kind.startswith(NUMBER_PREFIXES):
        return True
    return "not a number"


def row(schema: list[dict[str, str]], i: int = 0) -> dict[str, Any]:
    return {feature["name"]: value_for(feature["type"], i) for feature in schema}


def post(http: requests.Session, url: str, body: Any = None, *, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> requests.Response:
    data = raw if raw is not None else json.dumps(body).encode()
    return http.post(f"{url}/predict", data=data, timeout=TIMEOUT_S,
                     headers={"Content-Type": "application/json", **(headers or {})})


def served_model(http: requests.Session, url: str) -> str:
    return str(http.get(f"{url}/health", timeout=TIMEOUT_S).json()["model"])


# -- GET /health ----------------------------------------------------------------------------------------------

def test_health_names_the_model_and_its_features(health, schema):
    assert health["status"] == "ok"
    assert isinstance(health["model"], str) and health["model"]
    features = health["features"]
    assert isinstance(features, list) and features and all(isinstance(name, str) and name for name in features)
    assert len(set(features)) == len(features), f"a feature is listed twice: {features}"
    assert [feature["name"] for feature in schema] == features
    assert all(isinstance(feature["type"], str) and feature["type"] for feature in schema), schema
    if "max_rows" in health:
        assert isinstance(health["max_rows"], int) and health["max_rows"] >= 1


# -- POST /predict --------------------------------------------------------------------------------------------

def test_a_row_gets_a_finite_prediction_from_the_model_health_names(url, http, schema):
    request_id = f"contract-{uuid.uuid4().hex[:12]}"
    before = served_model(http, url)
    response = post(http, url, row(schema), headers={"x-request-id": request_id})
    after = served_model(http, url)  # a promotion between the three requests must not fail the check
    assert response.status_code == 200, response.text
    payload = response.json()
    prediction = payload["prediction"]
    assert isinstance(prediction, (int, float)) and not isinstance(prediction, bool), payload
    assert math.isfinite(prediction), payload
    version = response.headers.get("x-model-version")
    assert version in {before, after}, f"x-model-version {version!r}, /health said {before!r} then {after!r}"
    assert payload["model"] == version
    # A proxy in front of a deployed server may set its own request id; the server must answer one either way.
    assert response.headers.get("x-request-id")


@pytest.mark.parametrize("shape", ["list", "rows"])
def test_a_batch_gets_one_prediction_per_row(url, http, schema, shape):
    rows = [row(schema, i) for i in range(7)]
    response = post(http, url, rows if shape == "list" else {"rows": rows})
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == len(rows)
    assert all(isinstance(p, float) and math.isfinite(p) for p in predictions), predictions


def test_null_is_a_missing_value_for_every_feature(url, http, schema):
    response = post(http, url, dict.fromkeys((feature["name"] for feature in schema), None))
    assert response.status_code == 200, response.text
    assert math.isfinite(response.json()["prediction"])


def assert_refused(response: requests.Response, field: str | None = None, mentions: str | None = None) -> str:
    """A 4xx with an error message (naming ``field`` when given); returns the message."""
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    payload = response.json()
    error = payload["error"]
    assert isinstance(error, str) and error
    if field is not None:
        assert payload.get("field") == field, payload
        assert field in error, payload
    if mentions is not None:
        assert mentions.lower() in error.lower(), payload
    return error


def test_an_unknown_field_is_refused_by_name(url, http, schema):
    assert_refused(post(http, url, {**row(schema), "no_such_feature": 1.0}), field="no_such_feature")


def test_a_missing_field_is_refused_by_name(url, http, schema):
    for feature in (schema[0], schema[-1]):
        body = {name: value for name, value in row(schema).items() if name != feature["name"]}
        assert_refused(post(http, url, body), field=feature["name"])


def test_a_value_of_the_wrong_type_is_refused_by_name(url, http, schema):
    for feature in schema:
        for wrong in ("three", wrong_value_for(feature["type"])):
            response = post(http, url, {**row(schema), feature["name"]: wrong})
            assert_refused(response, field=feature["name"])


def test_a_bad_row_in_a_batch_is_refused_by_name(url, http, schema):
    rows = [row(schema, i) for i in range(3)]
    rows[2] = {**rows[2], schema[0]["name"]: "three"}
    assert_refused(post(http, url, rows), field=schema[0]["name"], mentions="row 2")


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe", b"[1, 2", b'"a string"', b"42", b"[]"])
def test_a_body_that_is_not_rows_is_refused(url, http, raw):
    assert_refused(post(http, url, raw=raw))


def test_more_rows_than_the_limit_are_refused(url, http, health, schema):
    if "max_rows" not in health:
        pytest.skip("the server names no row limit")
    limit = int(health["max_rows"])
    one = json.dumps(row(schema), separators=(",", ":")).encode()
    response = post(http, url, raw=b'{"rows":[' + b",".join([one] * (limit + 1)) + b"]}")
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    if response.headers.get("content-type", "").startswith("application/json"):  # else a proxy's own size limit
        assert_refused(response, mentions=str(limit))


# -- GET /metrics ---------------------------------------------------------------------------------------------

def test_metrics_expose_the_request_counter(url, http, schema):
    assert post(http, url, row(schema)).status_code == 200
    response = http.get(f"{url}/metrics", timeout=TIMEOUT_S)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    # The family, not a sample: behind a load balancer this scrape may reach an instance no request reached.
    assert re.search(r"^# TYPE caravan_requests_total counter$", text, re.M), text[:2000]
    assert re.search(r"^# TYPE caravan_model_info gauge$", text, re.M), text[:2000]


# -- any body: a prediction or a clear 4xx, never a 5xx -------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


def valid_values(kind: str) -> st.SearchStrategy[Any]:
    if kind == "bool":
        return st.booleans()
    if kind.startswith(INTEGER_PREFIXES):
        return st.integers(-(2**31), 2**31 - 1)
    if kind.startswith(NUMBER_PREFIXES):
        return st.floats(allow_nan=False, allow_infinity=False)
    return st.none()


@pytest.fixture(scope="module")
def bodies(schema: list[dict[str, str]]) -> st.SearchStrategy[bytes]:
    """Request bodies: valid rows, rows close to valid ones (a value may be anything, a field missing or extra),
    batches of both, any JSON, any bytes."""
    valid = st.fixed_dictionaries({f["name"]: st.none() | valid_values(f["type"]) for f in schema})
    values = {f["name"]: st.none() | valid_values(f["type"]) | JSON_VALUES for f in schema}
    near = st.fixed_dictionaries(values, optional={"extra": JSON_VALUES}) | \
        st.fixed_dictionaries({}, optional={**values, "extra": JSON_VALUES})
    rows = valid | near
    json_bodies = (rows | st.lists(rows, max_size=4) | st.fixed_dictionaries({"rows": st.lists(rows, max_size=4)})
                   | st.fixed_dictionaries({"rows": JSON_VALUES}) | JSON_VALUES)
    return json_bodies.map(lambda body: json.dumps(body).encode()) | st.binary(max_size=200)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_body_gets_a_prediction_or_a_clear_4xx(url, http, bodies, data):
    raw = data.draw(bodies, label="body")
    response = post(http, url, raw=raw)
    event(f"status {response.status_code}")
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"
    payload = response.json()
    if response.status_code == 200:
        scores = [payload["prediction"]] if "prediction" in payload else payload["predictions"]
        assert all(math.isfinite(score) for score in scores), payload
    else:
        assert_refused(response)
