"""Worker discovery from Consul's health API (the Consul double, driven through py-consul): passing instances
of caravan-<env>-worker tagged model=M, grouped by arm=NAME, followed with blocking queries; Consul away is
survived, counted and shown."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from caravan.gateway.workers import ConsulDiscovery, WorkerPool
from caravan.serving.worker_client import PredictorClient
from tests.doubles.consul import ConsulDouble
from tests.grpc_workers import FakeWorker
from tests.servers import poll_until


def call(pool, *args, **kwargs):
    """A request through the pool, on an event loop as the gateway sends it."""
    return asyncio.run(pool.call_async(*args, **kwargs))


@pytest.fixture
def consul(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConsulDouble]:
    double = ConsulDouble()
    monkeypatch.setenv("CONSUL_HTTP_ADDR", double.start())
    monkeypatch.setenv("CARAVAN_ENVIRONMENT", "staging")
    yield double
    double.stop()


def members(pool: WorkerPool) -> dict[str, list[str]]:
    return {arm: [w["target"] for w in workers] for arm, workers in pool.describe().items()}


def test_the_pool_follows_the_passing_workers_of_the_model(consul: ConsulDouble) -> None:
    a, b, c = FakeWorker("A"), FakeWorker("B", 100.0), FakeWorker("B", 100.0)
    service = "caravan-staging-worker"
    consul.register_service(service, "127.0.0.1", a.port, tags=["model=ranker", "arm=control"])
    b_id = consul.register_service(service, "127.0.0.1", b.port, tags=["model=ranker", "arm=challenger"])
    c_id = consul.register_service(service, "127.0.0.1", c.port, tags=["model=ranker", "arm=challenger"],
                                   passing=False)
    consul.register_service(service, "127.0.0.1", 1, tags=["model=other", "arm=control"])
    consul.register_service("caravan-production-worker", "127.0.0.1", 2, tags=["model=ranker", "arm=control"])
    pool = WorkerPool(PredictorClient)
    discovery = ConsulDiscovery(pool, "ranker", wait_s=5.0, min_backoff_s=0.05, max_backoff_s=0.1)
    assert discovery.service == service
    discovery.start()
    try:
        poll_until(discovery.synced.is_set, 10, "the first membership")
        assert members(pool) == {"control": [a.target], "challenger": [b.target]}
        assert call(pool, "challenger", [{"x": 1.0}], "r", 5.0).scores == [101.0]

        consul.set_service_passing(c_id, True)  # a blocking query returns at once
        poll_until(lambda: members(pool).get("challenger") == sorted([b.target, c.target]), 5, "c joins")
        consul.deregister_service(b_id)
        poll_until(lambda: members(pool).get("challenger") == [c.target], 5, "b leaves")
        assert call(pool, "challenger", [{"x": 1.0}], "r", 5.0).scores == [101.0]

        consul.set_down(True)  # Consul away: counted, shown, retried; the last members stay in use
        poll_until(lambda: discovery.errors > 0, 10, "an error")
        assert discovery.last_error and call(pool, "control", [{"x": 1.0}], "r", 5.0).scores == [1.0]
        consul.set_down(False)
        poll_until(lambda: discovery.last_error is None, 10, "recovery")
        assert members(pool) == {"control": [a.target], "challenger": [c.target]}
    finally:
        discovery.stop()
        consul.set_down(False)
        for worker in (a, b, c):
            worker.stop()


def test_the_catalog_lists_instances_without_health(consul: ConsulDouble) -> None:
    import consul as py_consul

    client = py_consul.Consul(host="127.0.0.1", port=consul.port)
    up = consul.register_service("caravan-staging-worker", "10.0.0.1", 9001, tags=["model=ranker", "arm=control"])
    consul.register_service("caravan-staging-worker", "10.0.0.2", 9002, tags=["model=ranker", "arm=b"],
                            passing=False)
    index, nodes = client.catalog.service("caravan-staging-worker", tag="model=ranker")
    assert [(n["ServiceAddress"], n["ServicePort"], n["ServiceTags"]) for n in nodes] == [
        ("10.0.0.1", 9001, ["model=ranker", "arm=control"]), ("10.0.0.2", 9002, ["model=ranker", "arm=b"])]
    assert {n["ServiceID"] for n in nodes} >= {up} and all(n["Node"] and n["Datacenter"] for n in nodes)
    _, only = client.catalog.service("caravan-staging-worker", tag="arm=b")
    assert [n["ServicePort"] for n in only] == [9002]
    consul.deregister_service(up)  # a blocking query on the index just read returns with the change
    later, nodes = client.catalog.service("caravan-staging-worker", index=index, wait="5s")
    assert int(later) > int(index) and [n["ServicePort"] for n in nodes] == [9002]
