"""A real worker's ``PredictStream`` (what the gateway sends on): every request gets the answer unary ``Predict``
gives it, scores or the same refusal naming the same field and row, and the stream goes on after a refusal;
several requests' rows sent side by side come back as each request's scores."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.serving.worker_client import PredictorClient, encode, refusal

from ..badmodels import ROW, publish_model
from ..servers import poll_until
from .test_worker import body_rows, worker_of, worker_outcome


@pytest.fixture(scope="module")
def stream_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PredictorClient]]:
    root = str(tmp_path_factory.mktemp("artifacts"))
    artifact = publish_model(root, 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARAVAN_ARTIFACT_ROOT", root)
        with worker_of("m-stream", artifact=artifact, isolate=False) as (worker, client):
            poll_until(lambda: worker.holder.current is not None, 30, "the model never loaded")
            yield worker, client


async def _on_stream(client: PredictorClient, bodies: list[Any]) -> list[tuple[str, Any]]:
    """Each body sent on the client's stream, one after the other, as ``worker_outcome`` reads an answer."""
    outcomes: list[tuple[str, Any]] = []
    for n, rows in enumerate(bodies):
        try:
            reply = await client.predict_encoded_async([encode(rows)], f"s-{n}", 5.0)
            outcomes.append(("ok", list(reply.scores)))
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            outcomes.append(("refused", refusal(exc)))
    return outcomes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(body_rows, min_size=1, max_size=4))
def test_the_stream_answers_every_body_as_predict_does(stream_worker: Any, bodies: list[Any]) -> None:
    _, client = stream_worker
    assert asyncio.run(_on_stream(client, bodies)) == [worker_outcome(client, rows) for rows in bodies]


def test_rows_of_several_requests_side_by_side_are_each_requests_scores(stream_worker: Any) -> None:
    _, client = stream_worker
    bodies = [[ROW], [{**ROW, "price": 40.0}, {**ROW, "position": 9}], [{**ROW, "popular": False}]]

    async def together() -> list[float]:
        reply = await client.predict_encoded_async([encode(rows) for rows in bodies], "a,b,c", 5.0)
        return list(reply.scores)

    alone = [score for rows in bodies for score in client.predict(rows, "alone", 5.0).scores]
    assert asyncio.run(together()) == alone
