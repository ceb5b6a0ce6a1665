"""The event log: complete-or-absent files under kill -9, nothing lost on SIGTERM or a store outage, a bounded
spool that drops and counts, and day closing with two writers."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import requests

from bench.proxy import Proxy
from caravan.errors import BackendUnavailable
from caravan.events.log import EventLog, closed_days, read_events
from caravan.storage import open_store
from caravan.storage.local import LocalStore

from ..badmodels import ROW, publish_model
from ..servers import free_port, poll_until, process
from .test_serving import point

D = dt.date(2026, 11, 22)


def at(day: dt.date, hour: int, minute: int = 0) -> float:
    return dt.datetime.combine(day, dt.time(hour, minute), dt.timezone.utc).timestamp()


class SwitchableStore(LocalStore):
    """A local store that can be made unreachable: every call raises BackendUnavailable while ``down``."""

    def __init__(self, root_uri: str) -> None:
        super().__init__(root_uri)
        self.down = False

    def _check(self) -> None:
        if self.down:
            raise BackendUnavailable(f"{self.root_uri}: down for the test", backend="local")

    def create(self, key: str, data: bytes) -> bool:
        self._check()
        return super().create(key, data)

    def write(self, key: str, data: bytes) -> None:
        self._check()
        super().write(key, data)


def log_one(log: EventLog, request_id: str, ts: float | None = None) -> None:
    log.prediction(request_id, unit_id="7", arm=None, artifact_id="A", names=["price", "position"],
                   features=np.array([[1.5, 3.0]]), scores=[0.25], ts=ts)


# -- kill -9 ---------------------------------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time, numpy as np
    from caravan.storage import open_store
    from caravan.events.log import EventLog
    log = EventLog(open_store(sys.argv[1]), "ranker", sys.argv[2], flush_rows=200, flush_s=0.005, retry_s=0.01)
    log.start()
    i = 0
    while True:
        log.prediction(f"r{i}", unit_id=None, arm=None, artifact_id="A", names=[f"x{k}" for k in range(20)],
                       features=np.random.rand(50, 20), scores=np.random.rand(50).tolist())
        log.feedback(f"r{i}", 1.0)
        i += 1
        if i % 20 == 0:
            time.sleep(0.001)
""")


def test_kill_9_during_flushes_leaves_every_file_complete_or_absent(tmp_path):
    root, spool = tmp_path / "root", tmp_path / "spool"
    files_seen = []
    for _round in range(2):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root), str(spool)])
        try:
            # Kill it mid-stream, once files are being written (a flush is under way nearly all the time).
            poll_until(lambda n=len(files_seen) + 2: len(list(root.rglob("*.parquet"))) > n, 30,
                       "the writer never shipped a file")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        files_seen = list(root.rglob("*.parquet"))
    everything = [p for p in [*root.rglob("*"), *spool.rglob("*")] if p.is_file()]
    data = [p for p in everything if p.suffix == ".parquet"]
    assert len(data) > 4
    for path in data:
        table = pq.read_table(path)  # a torn file would fail here
        assert table.num_rows > 0, path
    leftovers = [p for p in everything if p.suffix not in (".parquet", ".open", ".closed", ".tmp")]
    assert not leftovers, leftovers


# -- a closed day, two writers ----------------------------------------------------------------------------------


def test_a_day_closes_when_every_writer_that_wrote_to_it_has_closed_it(tmp_path):
    store = LocalStore(str(tmp_path / "root"))
    clocks = {"w1": [at(D, 23)], "w2": [at(D, 23)]}
    logs = {name: EventLog(store, "ranker", tmp_path / name, flush_s=0.02, retry_s=0.02, writer_id=name,
                           clock=lambda c=clock: c[0]).start()
            for name, clock in clocks.items()}
    try:
        for name, log in logs.items():
            log_one(log, f"{name}-a")
        poll_until(lambda: all(log.health()["shipped_rows"]["predictions"] == 1 for log in logs.values()), 10,
                   "both writers ship their prediction")
        assert closed_days(store, "ranker") == []
        clocks["w1"][0] = at(D + dt.timedelta(days=1), 1, 30)  # past midnight plus the hour's delay
        poll_until(lambda: store.exists(f"_events/ranker/_days/date={D}/w1.closed"), 10, "w1 closes the day")
        assert closed_days(store, "ranker") == [], "w2 wrote to the day and has not closed it"
        # w2 still gets feedback after midnight (the next day's partition) before it shuts down.
        clocks["w2"][0] = at(D + dt.timedelta(days=1), 0, 20)
        logs["w2"].feedback("w1-a", 1.0)
        logs["w2"].close()
        assert closed_days(store, "ranker") == [D, D + dt.timedelta(days=1)]
        feedback = read_events(store, "ranker", "feedback", [D + dt.timedelta(days=1)], hours=[0])
        assert feedback.column("request_id").to_pylist() == ["w1-a"]
    finally:
        for log in logs.values():
            log.close()


def test_a_writer_does_not_close_a_day_while_rows_of_it_are_unshipped(tmp_path):
    store = SwitchableStore(str(tmp_path / "root"))
    clock = [at(D, 22)]
    log = EventLog(store, "ranker", tmp_path / "spool", flush_s=0.02, retry_s=0.02, clock=lambda: clock[0]).start()
    try:
        log_one(log, "first")
        poll_until(lambda: log.health()["shipped_rows"]["predictions"] == 1, 10, "the first row is shipped")
        store.down = True
        log_one(log, "second", ts=at(D, 23, 59))
        clock[0] = at(D + dt.timedelta(days=1), 2)
        poll_until(lambda: log.health()["store_errors"] > 2, 10, "the shipper tries the store")
        assert closed_days(store, "ranker") == [] and log.health()["spool_files"] == 1
        store.down = False
        poll_until(lambda: closed_days(store, "ranker") == [D], 10, "the day closes once its rows are shipped")
        assert sorted(read_events(store, "ranker", "predictions", [D]).column("request_id").to_pylist()) == \
            ["first", "second"]
    finally:
        log.close()


# -- the spool bound --------------------------------------------------------------------------------------------


def test_a_full_spool_drops_batches_and_counts_their_rows(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    from caravan.events.log import register_metrics

    store = SwitchableStore(str(tmp_path / "root"))
    store.down = True
    log = EventLog(store, "ranker", tmp_path / "spool", flush_rows=100, flush_s=0.01, retry_s=0.05,
                   spool_max_bytes=40_000, drain_s=0.2).start()
    registry = CollectorRegistry()
    register_metrics(log, registry)
    try:
        for i in range(4000):
            log_one(log, f"r{i}")
            if i % 100 == 99:
                poll_until(lambda: log.health()["buffered_rows"] < 100, 10, "the flusher keeps up")
        poll_until(lambda: log.health()["buffered_rows"] == 0, 10, "the buffer is flushed")
        state = log.health()
        assert state["dropped_rows"]["predictions"] > 0
        assert 0 < state["spool_bytes"] <= 40_000
        assert sum(p.stat().st_size for p in (tmp_path / "spool").glob("*.parquet")) == state["spool_bytes"]
        spooled = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "spool").glob("*.parquet"))
        assert spooled + state["dropped_rows"]["predictions"] == 4000
        text = generate_latest(registry).decode()
        dropped = float(state["dropped_rows"]["predictions"])
        assert f'caravan_event_log_dropped_rows_total{{kind="predictions"}} {dropped}' in text
        # When the store is back, what was spooled is shipped; what was dropped stays counted.
        store.down = False
        poll_until(lambda: log.health()["spool_files"] == 0, 10, "the spool empties")
        assert read_events(store, "ranker", "predictions", [dt.datetime.now(dt.timezone.utc).date()]).num_rows \
            == spooled
    finally:
        log.close()


# -- caravan serve: SIGTERM, and an S3 outage -------------------------------------------------------------------


@contextlib.contextmanager
def serving(model_name: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [sys.executable, "-m", "caravan.cli", "serve", "--model", model_name, "--host", "127.0.0.1",
            "--port", str(port), "--pointer", "file", "--no-isolation", *extra]
    with process(args, f"{url}/metrics", env={**os.environ, **(env or {})}) as proc:
        poll_until(lambda: requests.get(f"{url}/health", timeout=2).status_code == 200, 20, "the model is served")
        yield url, proc


def ask(session: requests.Session, url: str, request_id: str) -> float:
    started = time.perf_counter()
    answer = session.post(f"{url}/predict", json=ROW, headers={"x-request-id": request_id, "x-unit-id": "42"},
                          timeout=10)
    answer.raise_for_status()
    return time.perf_counter() - started


def test_sigterm_to_caravan_serve_loses_nothing_that_was_answered(model_name, local_root, tmp_path):
    point(model_name, publish_model(local_root, 1))
    answered = []
    with serving(model_name, "--log-flush-s", "60", "--log-flush-rows", "100000",
                 "--log-spool-dir", str(tmp_path / "spool")) as (url, proc), requests.Session() as session:
        for i in range(300):
            ask(session, url, f"q{i}")
            answered.append(f"q{i}")
            if i % 3 == 0:
                assert session.post(f"{url}/feedback", json={"request_id": f"q{i}", "reward": 1},
                                    timeout=10).status_code == 202
        assert session.post(f"{url}/feedback", json={"request_id": "q1", "reward": "yes"},
                            timeout=10).status_code == 422
        assert requests.get(f"{url}/health", timeout=5).json()["event_log"]["shipped_rows"]["predictions"] == 0
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully (the log drains in the lifespan's shutdown), then re-raises the signal
        # it caught (uvicorn/server.py, capture_signals): the exit status is -SIGTERM either way.
        assert proc.wait(timeout=30) == -signal.SIGTERM
    store = open_store(local_root)
    (day,) = closed_days(store, model_name)
    predictions = read_events(store, model_name, "predictions", [day])
    assert sorted(predictions.column("request_id").to_pylist()) == sorted(answered)
    assert set(predictions.column("unit_id").to_pylist()) == {"42"}
    assert predictions.column("f_price").to_pylist() == [ROW["price"]] * 300
    feedback = read_events(store, model_name, "feedback", [day])
    assert feedback.num_rows == 100
    assert not list((tmp_path / "spool").glob("*.parquet"))


def test_an_s3_outage_loses_nothing_and_does_not_slow_requests(model_name, local_root, s3_endpoint, tmp_path):
    point(model_name, publish_model(local_root, 1))
    host, port = s3_endpoint.rsplit("//", 1)[1].split(":")
    proxy = Proxy((host, int(port)), free_port())
    proxy.up()
    log_root = f"s3://caravan-test/events-{model_name}"
    latencies: dict[str, list[float]] = {"before": [], "outage": [], "after": []}
    try:
        with serving(model_name, "--log-root", log_root, "--log-flush-s", "0.2", "--log-spool-dir",
                     str(tmp_path / "spool"), env={"AWS_ENDPOINT_URL_S3": proxy.url}) as (url, proc), \
                requests.Session() as session:
            for i in range(200):
                latencies["before"].append(ask(session, url, f"b{i}"))
            poll_until(lambda: requests.get(f"{url}/health", timeout=5).json()["event_log"]["shipped_rows"]
                       ["predictions"] == 200, 20, "the first rows are shipped")
            proxy.down()
            outage_ends = time.monotonic() + 3.0
            i = 0
            while time.monotonic() < outage_ends:
                latencies["outage"].append(ask(session, url, f"o{i}"))
                i += 1
            state = requests.get(f"{url}/health", timeout=5).json()["event_log"]
            assert not state["store_ok"] and state["spool_files"] > 0, state
            proxy.up()
            for j in range(200):
                latencies["after"].append(ask(session, url, f"a{j}"))
            total = 400 + i
            poll_until(lambda: requests.get(f"{url}/health", timeout=5).json()["event_log"]["shipped_rows"]
                       ["predictions"] == total, 60, "the spool is shipped once the store is back")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == -signal.SIGTERM
    finally:
        proxy.down()
    store = open_store(log_root)
    (day,) = closed_days(store, model_name)
    ids = read_events(store, model_name, "predictions", [day]).column("request_id").to_pylist()
    assert len(ids) == len(set(ids)) == total
    p95 = {phase: float(np.percentile(values, 95)) for phase, values in latencies.items()}
    assert p95["outage"] <= 3 * p95["before"] + 0.02, p95  # generous: 2 shared cores


@pytest.mark.parametrize("body", [b"nope", b"[1]", b'{"request_id": "", "reward": 1}',
                                  b'{"request_id": "a", "reward": true}',
                                  b'{"request_id": "a", "reward": 1, "row": -1}'])
def test_serve_refuses_malformed_feedback(body, tmp_path):
    from starlette.testclient import TestClient

    from caravan.registry import open_pointer
    from caravan.serving.app import create_app

    log = EventLog(LocalStore(str(tmp_path / "root")), "m", tmp_path / "spool")
    with TestClient(create_app(open_pointer("file"), "m", watch=False, event_log=log)) as client:
        answer = client.post("/feedback", content=body)
        assert answer.status_code == 422, answer.text
        assert client.post("/feedback", json={"request_id": "a", "reward": 0.5, "row": 2}).status_code == 202
    assert log.health()["shipped_rows"]["feedback"] == 1


# -- a closed day as training data ------------------------------------------------------------------------------


def log_served_day(store, spool: Path, writer: str, rows: int, seed: int) -> None:
    """A day D of served predictions with the ranker's features as scored, and clicks on some of them."""
    clock = [at(D, 9)]
    names = ["user_id", "item_id", "item_price", "item_popularity", "user_activity", "position"]
    log = EventLog(store, "ranker", spool / writer, writer_id=writer, clock=lambda: clock[0])
    rng = np.random.default_rng(seed)
    for i in range(rows):
        clock[0] = at(D, 9) + i * 60
        position = float(rng.integers(1, 21))
        features = np.array([[1_000_000 + i % 37, 100_000 + i % 101, 10 + i % 50, 0.5, 1.0, position]])
        log.prediction(f"{writer}-{i}", unit_id=str(1_000_000 + i % 37), arm=None, artifact_id="A", names=names,
                       features=features, scores=[0.1])
        if rng.random() < 0.6 / position + 0.05:
            log.feedback(f"{writer}-{i}", 1.0, ts=clock[0] + 30)
    log.close()  # closes the day: nothing of it is left to ship


def test_a_closed_day_of_the_log_is_a_training_input(local_root, test_specs, tmp_path):
    from luigi.task_register import Register

    from caravan.events.tasks import JoinLoggedEvents
    from pipelines.ranker import PrepareDataset

    from ..servers import build

    store = open_store(local_root)
    task = PrepareDataset(date=D, window_days=1, events="logged", min_rows=5)
    (join,) = task.requires().values()
    assert isinstance(join, JoinLoggedEvents) and join.attribution_window_s == 1800.0
    assert not join.requires().complete(), "no log yet: the day is not closed"

    log_served_day(store, tmp_path, "w1", 400, seed=1)
    Register.clear_instance_cache()
    task = PrepareDataset(date=D, window_days=1, events="logged", min_rows=5)
    assert build([task])
    (join,) = task.requires().values()
    counts = join.output().metrics
    assert counts["rows"] == 400 and 0 < counts["positives"] < 400 and counts["orphan_feedback"] == 0
    joined = join.output().read_parquet("events.parquet")
    assert joined.num_rows == 400 and sorted(set(joined.column("user_id").to_pylist()))[0] == 1_000_000

    log_served_day(store, tmp_path, "w2", 50, seed=2)  # more traffic of that day lands: new data, new address
    Register.clear_instance_cache()
    again = PrepareDataset(date=D, window_days=1, events="logged", min_rows=5)
    assert again.output().id != task.output().id
    assert not again.complete()


# -- the gateway ------------------------------------------------------------------------------------------------


def test_the_gateway_logs_answered_predictions_and_counted_feedback(tmp_path):
    from caravan.events.join import join_events

    from ..unit.test_gateway_app import Setup, document

    store = LocalStore(str(tmp_path / "root"))
    setup = Setup(tmp_path, event_log=EventLog(store, "ranker", tmp_path / "spool"))
    try:
        with setup.client:  # leaving it stops the gateway, which drains the log
            setup.publish(document())
            answers = [setup.client.post("/predict", json={"user_id": f"u{i}", "x": float(i)}).json()
                       for i in range(20)]
            for answer in answers[:5]:
                assert setup.client.post("/feedback", json={"request_id": answer["request_id"], "reward": 1}) \
                    .status_code == 202
            forged = setup.client.post("/feedback", json={"request_id": "x" + answers[5]["request_id"], "reward": 1})
            assert forged.status_code in (403, 422)
            assert setup.client.get("/health").json()["event_log"]["logged_rows"] == {"predictions": 20,
                                                                                       "feedback": 5}
    finally:
        setup.stop()
    (day,) = closed_days(store, "ranker")
    predictions = read_events(store, "ranker", "predictions", [day])
    logged = {r["request_id"]: r for r in predictions.to_pylist()}
    assert {a["request_id"]: (a["arm"], a["model"]) for a in answers} == \
        {rid: (r["arm"], r["artifact_id"]) for rid, r in logged.items()}
    assert {r["unit_id"]: r["f_x"] for r in logged.values()} == {f"u{i}": float(i) for i in range(20)}
    table, counts = join_events(predictions, read_events(store, "ranker", "feedback", [day]))
    assert counts.positives == 5 and counts.orphan_feedback == 0
    clicked = dict(zip(table.column("event_id").to_pylist(), table.column("clicked").to_pylist(), strict=True))
    assert {rid for rid, c in clicked.items() if c} == {a["request_id"] for a in answers[:5]}
