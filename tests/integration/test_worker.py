"""``caravan worker`` over real gRPC: predictions, refusals identical to ``caravan serve``, hot reload of an
experiment arm's artifact, and a model that kills its loader never replacing a good one.

The workers run in this process (real gRPC and HTTP servers on loopback ports, the real probe process),
following an experiment document in the file store; one test runs the ``caravan worker`` command itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan import Artifact
from caravan.experiments import Arm, Experiment, experiment_store
from caravan.serving.app import _answer
from caravan.serving.model import load_model
from caravan.serving.worker import ArmPointer, FixedPointer, Worker
from caravan.serving.worker_client import PredictorClient, refusal

from ..badmodels import FEATURES, ROW, publish_model
from ..servers import free_port, poll_until, process


def start_experiment(model: str, arms: dict[str, Artifact]) -> None:
    """Write (or replace) ``model``'s experiment with one arm per artifact, as `caravan experiment start` would."""
    store = experiment_store("file")
    document = Experiment(model=model, arms=tuple(Arm(name, a.id, a.uri, 1.0) for name, a in arms.items()))
    store.update(model, lambda old: document if old is None else
                 Experiment(**{**document.__dict__, "salt": old.salt, "started_at": old.started_at}))


@contextlib.contextmanager
def worker_of(model: str, arm: str | None = None, artifact: Artifact | None = None, **options: Any) -> Iterator[
        tuple[Worker, PredictorClient]]:
    source = ArmPointer(experiment_store("file"), arm) if arm else FixedPointer(artifact.uri)  # type: ignore[union-attr]
    worker = Worker(source, model, arm=arm, host="127.0.0.1", grpc_port=0, http_port=0, wait_s=1.0, **options)
    worker.start()
    client = PredictorClient(f"127.0.0.1:{worker.grpc_port}")
    try:
        yield worker, client
    finally:
        client.close()
        worker.stop(0.5)


def health(worker: Worker) -> tuple[int, dict]:
    answer = requests.get(f"http://127.0.0.1:{worker.http_port}/health", timeout=5)
    return answer.status_code, answer.json()


def serving_model(worker: Worker, artifact_id: str) -> bool:
    return worker.holder.current is not None and worker.holder.current.artifact_id == artifact_id


def test_a_worker_scores_its_arm_over_grpc_and_health_names_what_it_serves(model_name, local_root):
    control, challenger = publish_model(local_root, 1), publish_model(local_root, 2)
    start_experiment(model_name, {"control": control, "challenger": challenger})
    rows = [ROW, {"price": 40.0, "position": 1, "popular": False}, {"price": None, "position": 7, "popular": True}]
    with worker_of(model_name, "challenger") as (worker, client):
        poll_until(lambda: worker.holder.current is not None, 30, "the arm's model never loaded")
        one = client.predict([ROW], "r-1", 5.0)
        many = client.predict(rows, "r-2", 5.0)
        status, body = health(worker)
    expected = load_model(challenger).predict(rows)
    assert (one.artifact_id, one.model) == (challenger.id, model_name)
    assert one.scores == expected[:1] and many.scores == expected
    assert status == 200
    assert (body["status"], body["name"], body["arm"], body["model"]) == ("ok", model_name, "challenger",
                                                                          challenger.id)
    assert body["schema"] == FEATURES and body["uri"] == challenger.uri


def serve_outcome(model: Any, rows: Any) -> tuple[str, Any]:
    """What `caravan serve` answers for this JSON body: ("ok", scores) or ("refused", (error, field, row))."""
    status, data = _answer(model, json.dumps(rows).encode(), 10_000)
    body = json.loads(data)
    if status == 200:
        return "ok", body["predictions"]
    assert status == 422, body
    return "refused", (body["error"], body["field"], body["row"])


def worker_outcome(client: PredictorClient, rows: Any) -> tuple[str, Any]:
    try:
        return "ok", client.predict(rows, "r", 5.0).scores
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
        return "refused", refusal(exc)


values = st.none() | st.booleans() | st.integers(-5, 60) | st.floats(allow_nan=True, allow_infinity=True) | \
    st.sampled_from(["12", "", "é"]) | st.just([1]) | st.just({"a": 1})
names = st.sampled_from(["price", "position", "popular", "prize", "Position", "é\u0301", "a\x00b"])
body_rows = st.lists(st.dictionaries(names, values, max_size=4) | st.fixed_dictionaries(
    {"price": values, "position": values, "popular": values}), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, PredictorClient]]:
    root = str(tmp_path_factory.mktemp("artifacts"))
    artifact = publish_model(root, 5)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARAVAN_ARTIFACT_ROOT", root)
        with worker_of("m-refusals", artifact=artifact, isolate=False) as (worker, client):
            poll_until(lambda: worker.holder.current is not None, 30, "the model never loaded")
            yield worker, client


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=body_rows)
def test_every_body_is_answered_as_caravan_serve_answers_it(one_worker, rows):
    worker, client = one_worker
    served = worker.holder.current
    assert worker_outcome(client, rows) == serve_outcome(served, rows)


@pytest.mark.parametrize("rows, field", [
    ([{"price": 1.0, "position": 2}], "popular"),
    ([ROW, {**ROW, "colour": "red"}], "colour"),
    ([{**ROW, "position": 1.5}], "position"),
    ([{**ROW, "price": "12"}], "price"),
    ([{**ROW, "popular": 1}], "popular"),
    ([{**ROW, "price": [1, 2]}], "price"),
    ([{**ROW, "position": 10**400 // 10**399 * 10**30}], None),  # a big integer is a valid int32 value for serve
])
def test_invalid_rows_are_invalid_argument_naming_the_field_and_the_worker_keeps_serving(one_worker, rows, field):
    worker, client = one_worker
    outcome = worker_outcome(client, rows)
    assert outcome == serve_outcome(worker.holder.current, rows)
    if field is None:
        assert outcome[0] == "ok"
    else:
        message, named, row = outcome[1]
        assert named == field and f"'{field}'" in message and row == len(rows) - 1
    assert client.predict([ROW], "after", 5.0).scores, "a bad request never stops the worker"


def test_the_asyncio_client_gets_the_same_answers_and_refusals(one_worker):
    _, client = one_worker
    bad = [ROW, {**ROW, "position": 1.5}]

    async def both() -> tuple[Any, Any]:
        answer = await client.predict_async([ROW, ROW], "a-1", 5.0)
        try:
            await client.predict_async(bad, "a-2", 5.0)
        except grpc.RpcError as exc:
            return answer, (exc.code(), refusal(exc))
        return answer, None

    answer, refused = asyncio.run(both())
    assert answer == client.predict([ROW, ROW], "s-1", 5.0)
    assert refused == (grpc.StatusCode.INVALID_ARGUMENT, worker_outcome(client, bad)[1])


def test_too_many_rows_and_no_rows_are_refused_like_serve(one_worker):
    worker, client = one_worker
    with pytest.raises(grpc.RpcError) as empty:
        client.predict([], "r", 5.0)
    assert (empty.value.code(), empty.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "no rows to predict")
    limit = worker.max_rows
    worker.max_rows = 3
    try:
        with pytest.raises(grpc.RpcError) as many:
            client.predict([ROW] * 4, "r", 5.0)
    finally:
        worker.max_rows = limit
    assert many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert many.value.details() == "at most 3 rows per request, got 4"


class Load:
    """Predictions in a background thread until stopped; outcomes recorded, checked in the test's thread."""

    def __init__(self, client: PredictorClient) -> None:
        self.client, self.outcomes, self._stop = client, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.outcomes.append(("ok", self.client.predict([ROW], "load", 5.0).artifact_id))
            except grpc.RpcError as exc:
                self.outcomes.append((exc.code().name, exc.details()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def test_a_new_artifact_for_the_arm_is_swapped_in_while_requests_run(model_name, local_root):
    first, second, other = publish_model(local_root, 1), publish_model(local_root, 2), publish_model(local_root, 3)
    start_experiment(model_name, {"control": other, "challenger": first})
    with worker_of(model_name, "challenger") as (worker, client):
        poll_until(lambda: serving_model(worker, first.id), 30, "the arm's first artifact never loaded")
        with Load(client) as load:
            poll_until(lambda: any(o[1] == first.id for o in load.outcomes), 10, "no prediction from the first one")
            start_experiment(model_name, {"control": other, "challenger": second})
            poll_until(lambda: any(o[1] == second.id for o in load.outcomes), 30, "the new artifact was not followed")
        status, body = health(worker)
    assert load.outcomes and all(kind == "ok" for kind, _ in load.outcomes), \
        [o for o in load.outcomes if o[0] != "ok"][:5]
    assert {artifact for _, artifact in load.outcomes} == {first.id, second.id}, "never the other arm's model"
    assert (status, body["model"], body["status"]) == (200, second.id, "ok")


def test_a_model_that_kills_its_loader_never_replaces_the_good_one(model_name, local_root):
    good, crasher, after = publish_model(local_root, 1), publish_model(local_root, 2, crash="leaf_value_short"), \
        publish_model(local_root, 3)
    start_experiment(model_name, {"challenger": good})
    with worker_of(model_name, "challenger") as (worker, client):
        poll_until(lambda: serving_model(worker, good.id), 30, "the good model never loaded")
        with Load(client) as load:
            start_experiment(model_name, {"challenger": crasher})
            poll_until(lambda: worker.holder.reloads_crashed >= 1, 30, "the crash was never reported")
            seen = len(load.outcomes)
            poll_until(lambda: len(load.outcomes) >= seen + 20, 10, "no predictions after the crash")
            _, degraded = health(worker)
            start_experiment(model_name, {"challenger": after})
            poll_until(lambda: serving_model(worker, after.id), 30, "the next artifact was not followed")
    assert all(kind == "ok" for kind, _ in load.outcomes), [o for o in load.outcomes if o[0] != "ok"][:5]
    assert {artifact for _, artifact in load.outcomes} <= {good.id, after.id}
    assert degraded["status"] == "degraded" and degraded["model"] == good.id
    assert crasher.id in degraded["reason"] and "killed the probe process" in degraded["last_error"]
    assert worker.probe is not None and os.getpid() != worker.probe.pid  # it died elsewhere


def test_an_arm_the_experiment_lacks_is_unavailable_with_the_reason(model_name, local_root):
    start_experiment(model_name, {"control": publish_model(local_root, 1)})
    with worker_of(model_name, "challenger", isolate=False) as (worker, client):
        poll_until(lambda: worker.watcher.state.version >= 0, 10, "the experiment was never read")
        status, body = health(worker)
        with pytest.raises(grpc.RpcError) as caught:
            client.predict([ROW], "r", 5.0)
    assert status == 503 and body["model"] is None
    assert "has no arm 'challenger'" in body["reason"], body
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE and "no model is served" in caught.value.details()


def test_the_worker_command_serves_an_artifact_and_stops_cleanly_on_sigterm(local_root):
    artifact = publish_model(local_root, 4)
    grpc_port, http_port = free_port(), free_port()
    args = [sys.executable, "-m", "caravan.cli", "worker", "--model", "ranker", "--artifact", artifact.uri,
            "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
    url = f"http://127.0.0.1:{http_port}/health"
    with process(args, url, env=dict(os.environ)) as proc:
        poll_until(lambda: requests.get(url, timeout=5).status_code == 200, 30, "the worker never became healthy")
        with PredictorClient(f"127.0.0.1:{grpc_port}") as client:
            answer = client.predict([ROW], "cli", 5.0)
        body = requests.get(url, timeout=5).json()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=20)
    assert answer.artifact_id == artifact.id and answer.model == "ranker" and len(answer.scores) == 1
    assert (body["name"], body["arm"], body["model"]) == ("ranker", None, artifact.id)
    assert code == 0
