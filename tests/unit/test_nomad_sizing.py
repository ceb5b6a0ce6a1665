"""Sizing a step on Nomad, against the double through python-nomad: the default size dispatches the registered
job and registers nothing; another size registers the job's sized twin once (again when the parent changes) and
dispatches it; an ask larger than every node fails at once naming it (a token without node:read waits, as for a
full cluster); a token that may not register says so; two sizes of one artifact still run it once."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nomad
from caravan import StepFailed
from caravan.executors import sizing
from caravan.executors.base import reset_executors

from ..doubles.nomad import NomadDouble
from ..servers import poll_until
from ..steps.tasks import Echo, Sleep

DAY = dt.date(2026, 11, 22)
NODE = {"cpu": 4000, "memory": 2048}
MANAGEMENT, PIPELINE, DISPATCH_ONLY = "management-secret", "pipeline-secret", "dispatch-only-secret"
# The retrain policy's capabilities (terraform/policies/nomad/caravan-retrain.hcl.tftpl), in the default namespace,
# and the same without submit-job. Neither has node:read.
POLICIES = {
    PIPELINE: ['namespace "default" {\n  capabilities = ["list-jobs", "read-job", "dispatch-job", "submit-job", '
               '"read-logs"]\n}\n'],
    DISPATCH_ONLY: ['namespace "default" {\n  capabilities = ["list-jobs", "read-job", "dispatch-job", '
                    '"read-logs"]\n}\n'],
}


@pytest.fixture
def cluster(test_specs: Path, local_root: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start a Nomad double (keywords as given; one 4000 MHz / 2048 MB node by default) with every spec, and make
    it the executor's cluster; ``token`` is the executor's NOMAD_TOKEN."""
    started: list[NomadDouble] = []

    def make(token: str | None = None, **kwargs: Any) -> NomadDouble:
        kwargs.setdefault("nodes", [NODE])
        double = NomadDouble(env={"PYTHONPATH": os.environ["PYTHONPATH"]}, **kwargs)
        started.append(double)
        monkeypatch.setenv("NOMAD_ADDR", double.start())
        monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
        if token is not None:
            monkeypatch.setenv("NOMAD_TOKEN", token)
        double.load_specs(test_specs)
        reset_executors()
        return double

    yield make
    for double in started:
        double.stop()
    reset_executors()


def registers(double: NomadDouble) -> list[str]:
    """caravan's registrations (POST /v1/jobs; the test's own publish goes to /v1/job/<id>)."""
    return [path for method, path in double.requests if method in ("PUT", "POST") and path.split("?")[0] == "/v1/jobs"]


def client(double: NomadDouble, token: str | None = None) -> nomad.Nomad:
    return nomad.Nomad(address=double.address, token=token, timeout=10)


def memory_of(double: NomadDouble, child_id: str) -> int:
    allocs = client(double).job.get_allocations(child_id)
    alloc = client(double).allocation.get_allocation(allocs[0]["ID"])
    return int(alloc["AllocatedResources"]["Tasks"]["step"]["Memory"]["MemoryMB"])


def child_of(double: NomadDouble, artifact_id: str) -> dict[str, Any]:
    children = [j for j in client(double).jobs.get_jobs(prefix="echo", meta=True)
                if (j.get("Meta") or {}).get("caravan_artifact_id") == artifact_id]
    assert len(children) == 1, children
    return children[0]


def test_the_default_size_dispatches_the_registered_job_and_registers_nothing(cluster):
    double = cluster()
    for task in (Echo(date=DAY, name="plain"), Echo(date=DAY, name="same", memory_mb=256, cpu_mhz=200)):
        task.run()
        child = child_of(double, task.output().id)
        assert child["ParentID"] == "echo"
        assert memory_of(double, child["ID"]) == 256
    assert registers(double) == []
    assert [r["job_id"] for r in double.dispatch_requests] == ["echo", "echo"]


def test_a_sized_step_runs_as_the_sized_twin_registered_once_and_again_when_the_parent_changes(cluster):
    double = cluster()
    first = Echo(date=DAY, name="a", memory_mb=1024)
    first.run()
    child = child_of(double, first.output().id)
    assert child["ParentID"] == "echo@200c1024m"
    assert memory_of(double, child["ID"]) == 1024
    assert json.loads(first.output().read_text("env.json"))["NOMAD_MEMORY_LIMIT"] == "1024"
    sized = client(double).job.get_job("echo@200c1024m")
    parent = client(double).job.get_job("echo")
    assert sized["ParameterizedJob"] == parent["ParameterizedJob"]
    assert sized["TaskGroups"][0]["Tasks"][0]["Resources"]["CPU"] == 200
    assert sized["TaskGroups"][0]["Tasks"][0]["Config"] == parent["TaskGroups"][0]["Tasks"][0]["Config"]
    assert sized["Meta"]["caravan_sized_from_index"] == str(parent["JobModifyIndex"])
    assert registers(double) == ["/v1/jobs"]

    Echo(date=DAY, name="b", memory_mb=1024).run()
    assert registers(double) == ["/v1/jobs"], "a current sized job is dispatched, not registered again"

    parent["Meta"] = {**(parent.get("Meta") or {}), "release": "v2"}  # caravan publish registers a new version
    client(double).job.register_job("echo", {"Job": parent})
    Echo(date=DAY, name="c", memory_mb=1024).run()
    assert registers(double) == ["/v1/jobs", "/v1/jobs"], "the sized twin derived again from the new version"
    again = client(double).job.get_job("echo@200c1024m")
    assert again["Meta"]["release"] == "v2"
    assert again["Meta"]["caravan_sized_from_index"] == str(client(double).job.get_job("echo")["JobModifyIndex"])


def test_an_ask_larger_than_every_node_fails_at_once_naming_it(cluster):
    double = cluster()
    task = Sleep(date=DAY, seconds=0.1, memory_mb=65536, placement_timeout_s=600.0, timeout_s=120)
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"step sleep can never be placed: group 'step' asks cpu 200 MHz and memory "
                                         r"65536 MB, more memory than any of the 1 node .*largest: cpu 4000 MHz, "
                                         r"memory 2048 MB.*--memory-mb") as info:
        task.run()
    assert time.monotonic() - start < 5, "not a wait for the placement timeout"
    assert double.processes_started == 0
    child_id = info.value.job_id
    assert child_id.startswith("sleep@200c65536m/dispatch-")
    assert client(double).job.get_job(child_id)["Stop"] is True
    # What Nomad itself says (scheduler/generic_sched.go, nomad/structs/alloc.go): exhaustion, as on a full node.
    first = min(client(double).job.get_evaluations(child_id), key=lambda e: e["CreateIndex"])
    metric = first["FailedTGAllocs"]["step"]
    assert metric["NodesExhausted"] == 1 and metric["DimensionExhausted"] == {"memory": 1}
    assert metric["ResourcesExhausted"]["step"]["MemoryMB"] == 65536
    assert first["BlockedEval"]


def test_without_node_read_a_too_large_ask_waits_like_a_full_cluster_until_its_placement_timeout(cluster, caplog):
    double = cluster(token=PIPELINE, acl_token=MANAGEMENT, acl_policies=POLICIES)
    task = Sleep(date=DAY, seconds=0.1, memory_mb=65536, placement_timeout_s=1.0, timeout_s=120)
    with caplog.at_level(logging.WARNING, logger="caravan"), pytest.raises(
            StepFailed, match=r"not placed within placement_timeout_s = 1 s .*memory exhausted on 1 node"):
        task.run()
    assert any("cannot read the nodes" in r.getMessage() and "node:read" in r.getMessage() for r in caplog.records)
    assert ("GET", "/v1/nodes?resources=true") in [(m, p.split("&")[0]) for m, p in double.requests]
    assert double.processes_started == 0


def test_a_token_that_may_not_register_is_told_so_and_the_default_size_still_runs(cluster):
    cluster(token=DISPATCH_ONLY, acl_token=MANAGEMENT, acl_policies=POLICIES)
    with pytest.raises(StepFailed, match=r"step echo asks cpu 200 MHz, memory 1024 MB \(registered: cpu 200 MHz, "
                                         r"memory 256 MB\); registering its sized job echo@200c1024m \(not "
                                         r"registered\) was refused: .*403.*needs submit-job"):
        Echo(date=DAY, name="refused", memory_mb=1024).run()
    plain = Echo(date=DAY, name="refused")
    plain.run()
    assert plain.output().exists()


def test_two_sizes_of_one_artifact_run_it_once(cluster):
    double = cluster()
    outcomes: dict[str, Any] = {}

    def run(name: str, task: Sleep) -> None:
        try:
            task.run()
            outcomes[name] = "ok"
        except BaseException as exc:  # recorded, asserted in the main thread
            outcomes[name] = exc

    sized = threading.Thread(target=run, args=("sized", Sleep(date=DAY, seconds=1.0, memory_mb=512)))
    sized.start()
    poll_until(lambda: double.processes_started >= 1, 20, "the sized step runs")
    run("default", Sleep(date=DAY, seconds=1.0))
    sized.join(60)
    assert not sized.is_alive()
    assert outcomes == {"sized": "ok", "default": "ok"}
    assert double.processes_started == 1, "the default-size run attached to the sized child"
    assert Sleep(date=DAY, seconds=1.0).output().exists()


def test_a_step_above_its_memory_ask_on_nomad_is_oom_killed_and_the_error_says_so(cluster):
    double = cluster()
    task = Sleep(date=DAY, seconds=30.0, memory_mb=16, timeout_s=120)  # a Python step with caravan holds ~40 MB
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"step sleep failed \(.* failed; killed for memory \(OOM\) above its memory "
                                         r"ask of 16 MB: give it more with --memory-mb\)") as info:
        task.run()
    assert time.monotonic() - start < 20
    assert info.value.exit_code == 137
    # What a client with the docker driver reports (drivers/docker/handle.go, taskrunner emitExitResultEvent).
    alloc = client(double).job.get_allocations(info.value.job_id)[0]
    terminated = [e for e in alloc["TaskStates"]["step"]["Events"] if e["Type"] == "Terminated"][-1]
    assert terminated["Details"]["oom_killed"] == "true" and terminated["Details"]["exit_code"] == "137"
    assert terminated["DisplayMessage"] == 'Exit Code: 137, Exit Message: "OOM Killed"'
    assert not task.output().exists()


@pytest.fixture(scope="module")
def plain_double() -> Iterator[NomadDouble]:
    with NomadDouble(nodes=[NODE]) as double:
        double.load_specs(Path(__file__).resolve().parents[1] / "steps" / "nomad")
        yield double


@settings(max_examples=15, deadline=None)
@given(cpu=st.integers(1, 1_000_000), memory=st.integers(10, 4 * 1024 * 1024))
def test_a_derived_job_registers_and_reads_back_as_current_with_its_ask(plain_double, cpu, memory):
    api = client(plain_double)
    parent = api.job.get_job("echo")
    ask = sizing.Ask(cpu, memory)
    api.jobs.register_job({"Job": sizing.derive(parent, ask, "step")})
    stored = api.job.get_job(sizing.sized_job_id("echo", ask))
    assert sizing.task_ask(stored, "step") == ask
    assert stored["ParameterizedJob"] == parent["ParameterizedJob"] and stored["ParentID"] == ""
    assert sizing.stale(stored, parent) == "", "the stored form (server-side defaults added) is current"
    assert sizing.stale(stored, api.job.get_job("echo")) == ""
