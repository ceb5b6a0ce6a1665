"""Bounded requests, in process: no body gets a 5xx, errors quote the client short and escaped, the byte limit
holds before parsing, a client that leaves is a 499, request ids are printable, and the type-signature cache
stays bounded however many kinds of rows arrive."""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caravan.registry import open_pointer
from caravan.serving import limits
from caravan.serving.model import SIGNATURES_KEPT, Feature, LoadedModel

from ..badmodels import FEATURES, ROW, publish_model

SMALL_LIMIT = 4096  # bytes, for the app that shows oversize bodies cheaply


def make_app(root: str, **options: Any) -> Any:
    from caravan.serving.app import create_app
    from caravan.serving.model import load_model

    app = create_app(open_pointer("file"), "unused", watch=False, isolate=False, **options)
    app.state.holder.swap(load_model(publish_model(root, 3)))
    return app


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from starlette.testclient import TestClient

    app = make_app(str(tmp_path_factory.mktemp("limits")), max_body_bytes=SMALL_LIMIT)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


# -- any body ---------------------------------------------------------------------------------------------------

surrogates = st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3)
nasty_text = st.text(max_size=20) | surrogates | st.text(st.characters(codec="utf-8"), max_size=20)
deep = st.integers(1, 3000).flatmap(lambda n: st.sampled_from([
    b"[" * n + b"]" * n, b'{"a":' * n + b"1" + b"}" * n, b"[" * n, b'{"rows":' + b"[" * n + b"]" * n + b"}"]))
huge_numbers = st.integers(300, 50_000).flatmap(lambda n: st.sampled_from([
    b'{"price": 1' + b"0" * n + b', "position": 1, "popular": true}',
    b'{"price": 1e' + str(n).encode() + b', "position": 1, "popular": true}',
    b'{"price": 1.5, "position": -' + b"9" * n + b', "popular": true}',
    b'{"price": 0.' + b"0" * n + b'1, "position": 1, "popular": true}']))


def encode(value: Any) -> st.SearchStrategy[bytes]:
    """A JSON value as bytes three ways: ASCII with escapes, UTF-8, and UTF-8 letting lone surrogates through
    (invalid UTF-8, as a careless client writes it)."""
    return st.sampled_from([json.dumps(value).encode(),
                            json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | nasty_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(nasty_text, inner, max_size=4), max_leaves=8)
rows = st.fixed_dictionaries({}, optional={"price": json_values, "position": json_values, "popular": json_values,
                                           **{"x": json_values}}) | st.dictionaries(nasty_text, json_values)
bodies = (json_values | rows | st.lists(rows, max_size=3) | st.fixed_dictionaries({"rows": st.lists(rows)})) \
    .flatmap(encode) | deep | huge_numbers | st.binary(max_size=300) \
    | st.integers(SMALL_LIMIT + 1, 3 * SMALL_LIMIT).map(lambda n: b'{"' + b"k" * n + b'": 1}')


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(body=bodies)
@example(body=b"[" * 1000 + b"]" * 1000)
@example(body=b'{"\\ud800": 1}')
@example(body='{"\ud800": 1}'.encode("utf-8", "surrogatepass"))
@example(body=b'{"price": 1e999, "position": 1, "popular": true}')
@example(body=b'{"price": 1, "position": 1' + b"0" * 5000 + b', "popular": true}')
@example(body=b"\xff\xfe\x00")
def test_no_body_gets_a_5xx_and_errors_stay_short(client, body):
    response = client.post("/predict", content=body)
    assert response.status_code < 500, response.text[:500]
    payload = response.json()
    if response.status_code == 200:
        assert "prediction" in payload or "predictions" in payload
    else:
        assert isinstance(payload["error"], str) and payload["error"]
        assert len(response.content) < 2000, "an error quotes the client's input only briefly"
        response.content.decode("ascii")  # escaped: a lone surrogate or a control byte comes back as \\u....


def test_a_huge_unknown_key_is_quoted_briefly(client):
    response = client.post("/predict", json={**ROW, "k" * 3000: 1})
    assert response.status_code in (413, 422) and len(response.content) < 500
    response = client.post("/predict", content=json.dumps({**ROW, "\x00\u202e\ud800x": 1}))
    assert response.status_code == 422
    assert "\\x00" in response.json()["error"] and "\\ud800" in response.json()["error"], response.json()


def test_deep_nesting_is_a_4xx_that_says_so(client):
    response = client.post("/predict", content=b"[" * 100_000 + b"]" * 100_000)
    assert response.status_code == 413  # over the small limit: refused before parsing


@pytest.fixture(scope="module")
def roomy(tmp_path_factory):
    """The app with its default byte limit (room for the row limit)."""
    from starlette.testclient import TestClient

    with TestClient(make_app(str(tmp_path_factory.mktemp("roomy"))), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.mark.parametrize("body", [b"[" * 1000 + b"]" * 1000, b'{"a":' * 5000 + b"1" + b"}" * 5000])
def test_nesting_deeper_than_the_parser_allows_is_a_4xx(roomy, body):
    response = roomy.post("/predict", content=body)
    assert response.status_code == 422 and "deeply" in response.json()["error"]


def test_the_byte_limit_holds_before_any_parsing(client, roomy):
    not_json = b"{" + b"x" * (SMALL_LIMIT + 10)
    response = client.post("/predict", content=not_json)  # parsed, it would be a 422
    assert response.status_code == 413 and str(SMALL_LIMIT) in response.json()["error"]
    health = roomy.get("/health").json()
    limit = health["max_body_bytes"]
    assert limit == limits.max_body_bytes([f["name"] for f in FEATURES], health["max_rows"])
    assert roomy.post("/predict", content=b" " * (limit + 1)).status_code == 413
    assert "10000 rows" in roomy.post("/predict", content=b" " * (limit + 1)).json()["error"]


@settings(max_examples=50, deadline=None)
@given(names=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=20, unique=True))
def test_the_default_limit_fits_the_row_limit_written_the_long_way(names):
    """A request of max_rows rows, every value a full-precision double, indented: it fits."""
    row = dict.fromkeys(names, -1.2345678901234567e-308)
    one = json.dumps({"rows": [row]}, indent=4, ensure_ascii=True)
    per_row = len(json.dumps({"rows": [row, row]}, indent=4, ensure_ascii=True)) - len(one)
    assert len(one) + (limits.MAX_ROWS - 1) * per_row <= limits.max_body_bytes(names)


def test_a_batch_at_the_row_limit_is_answered(roomy):
    body = json.dumps({"rows": [{"price": 1.2345678901234567, "position": 3, "popular": True}] * limits.MAX_ROWS},
                      indent=2)
    response = roomy.post("/predict", content=body)
    assert response.status_code == 200, response.text[:300]
    assert len(response.json()["predictions"]) == limits.MAX_ROWS


# -- the ASGI edge: disconnects and request ids --------------------------------------------------------------------

def call(app: Any, messages: list[dict[str, Any]], headers: list[tuple[bytes, bytes]] | None = None) -> list[dict]:
    """POST /predict straight through the ASGI interface; what the app sent."""
    scope = {"type": "http", "method": "POST", "path": "/predict", "headers": headers or []}
    sent: list[dict] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


@pytest.fixture(scope="module")
def raw_app(tmp_path_factory):
    return make_app(str(tmp_path_factory.mktemp("raw")))


def test_a_client_that_leaves_mid_upload_is_a_499_not_a_422(raw_app):
    sent = call(raw_app, [{"type": "http.request", "body": b'{"price": 1', "more_body": True},
                          {"type": "http.disconnect"}])
    assert sent == [], "nobody to answer"
    metrics = raw_app.state.metrics
    assert metrics.requests.labels("499")._value.get() == 1
    assert metrics.requests.labels("422")._value.get() == 0


@pytest.mark.parametrize(("given_id", "kept"), [(b"abc-123", True), (b"a" * 128, True), (b"a" * 129, False),
                                                (b"bad\nid", False), (b"bad\x00", False), (b"caf\xc3\xa9", False),
                                                (b"", False), (b"with space", True)])
def test_a_request_id_is_kept_only_when_short_and_printable(raw_app, given_id, kept):
    sent = call(raw_app, [{"type": "http.request", "body": json.dumps(ROW).encode()}],
                headers=[(b"x-request-id", given_id)])
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 200
    if kept:
        assert headers[b"x-request-id"] == given_id
    else:
        assert headers[b"x-request-id"] != given_id
        assert headers[b"x-request-id"].isascii() and headers[b"x-request-id"].decode().isprintable()


# -- the type-signature cache ---------------------------------------------------------------------------------

class ConstantBooster:
    def predict(self, matrix: np.ndarray) -> np.ndarray:
        return np.zeros(len(matrix))


WIDE = [Feature(f"f{i}", "double") for i in range(12)]
VALUES = (1, 1.5, None)  # int, float, missing: 3**12 distinct signatures


@settings(max_examples=60, deadline=None)
@given(batches=st.lists(st.lists(st.lists(st.sampled_from(VALUES), min_size=12, max_size=12), min_size=1,
                                 max_size=40), min_size=1, max_size=30))
def test_the_signature_cache_stays_bounded_and_changes_no_answer(batches):
    model = LoadedModel("m", "u", ConstantBooster(), WIDE)
    for batch in batches:
        rows = [{f"f{i}": v for i, v in enumerate(values)} for values in batch]
        matrix = model.matrix(rows)
        expected = np.array([[np.nan if v is None else v for v in values] for values in batch], dtype=np.float64)
        assert np.array_equal(matrix, expected, equal_nan=True)
        assert len(model._valid_signatures) <= SIGNATURES_KEPT


def test_memory_stays_flat_over_many_distinct_signatures():
    model = LoadedModel("m", "u", ConstantBooster(), WIDE)
    rng = np.random.default_rng(0)

    def rows(n: int) -> list[dict[str, Any]]:
        picks = rng.integers(0, 3, (n, 12))
        return [{f"f{i}": VALUES[k] for i, k in enumerate(pick)} for pick in picks]

    for _ in range(20):  # fill the cache
        model.matrix(rows(100))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100):  # 10,000 more rows, thousands of signatures never seen before
            model.matrix(rows(100))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Unbounded, the cache would keep every signature: some 500 bytes each, megabytes for these rows.
    assert grown < 256 * 1024, f"memory grew by {grown} bytes"
    assert len(model._valid_signatures) == SIGNATURES_KEPT
