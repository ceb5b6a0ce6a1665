"""One contract for both executors: local subprocesses and Nomad (the double, or a real agent)."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caravan import JobSpecError, StepFailed, open_store
from caravan.artifacts import LOGS_DIR
from pipelines.example import MakeNumbers, Summarize

from ..servers import build
from ..steps.tasks import Echo, Fail, Sleep, WithUnknownMeta

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 11, 22)


def dispatches(nomad_server, job: str) -> int:
    return sum(1 for d in nomad_server.double.dispatch_requests if d["job_id"] == job)


def step_runs(task) -> int:
    """How many times the step ran for ``task``'s artifact (each run keeps its stdout beside it)."""
    artifact = task.output()
    return sum(1 for k in artifact.store.list_keys(f"{artifact.key}/{LOGS_DIR}/") if k.endswith(".stdout.txt"))


def test_two_step_pipeline_runs_through_the_central_scheduler(executor, scheduler_url, request):
    # luigid remembers finished task ids for a while: each case gets task ids of its own.
    day = DAY + dt.timedelta(days=10 if executor == "nomad" else 20)
    tasks = [Summarize(date=day, power=p) for p in (1, 2)]
    assert build(tasks, scheduler_url)
    shared = MakeNumbers(date=day)
    assert shared.complete() and all(t.complete() for t in tasks)
    assert step_runs(shared) == 1, "the shared step ran exactly once"
    if executor == "nomad" and request.getfixturevalue("nomad_server").double is not None:
        assert dispatches(request.getfixturevalue("nomad_server"), "make-numbers") == 1
    manifest = tasks[1].output().manifest()
    assert manifest["executor"]["name"] == executor
    assert manifest["executor"]["job_id"].startswith("summarize/dispatch-")
    assert manifest["upstream"] == {"numbers": shared.output().id}
    assert tasks[1].output().read_json("summary.json")["power"] == 2
    assert build(tasks, scheduler_url), "a second run is a no-op"
    assert step_runs(shared) == 1


def test_artifacts_are_identical_across_executors_apart_from_executor_fields(
        monkeypatch, jobspecs, nomad_server, tmp_path):
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(jobspecs))
    monkeypatch.setenv("NOMAD_ADDR", nomad_server.address)
    manifests = {}
    for name in ("local", "nomad"):
        monkeypatch.setenv("CARAVAN_EXECUTOR", name)
        monkeypatch.setenv("CARAVAN_ARTIFACT_ROOT", str(tmp_path / name))
        task = Summarize(date=DAY, power=3)
        assert build([task])
        manifests[name] = task.output().manifest()
    local, remote = manifests["local"], manifests["nomad"]
    for field in ("artifact_id", "task_family", "params", "upstream", "code_version", "files", "metrics", "job"):
        assert local[field] == remote[field], field
    assert local["executor"]["name"] == "local" and remote["executor"]["name"] == "nomad"


def test_a_failing_step_raises_with_exit_code_and_stderr_and_publishes_nothing(executor):
    task = Fail(date=DAY, code=7)
    with pytest.raises(StepFailed) as info:
        task.run()
    error = info.value
    assert error.exit_code == 1
    assert "deliberate failure with code 7" in error.stderr_tail
    assert error.job_id.startswith("fail/dispatch-") and error.alloc_ids
    assert error.artifact == task.output().id
    assert "exit code: 1" in str(error) and "deliberate failure" in str(error)
    assert not task.output().exists()
    logs = [k for k in task.output().store.list_keys(task.output().key + "/") if "/_logs/" in k]
    assert any(k.endswith(".stderr.txt") for k in logs), "logs are kept beside the artifact even on failure"


def test_a_step_past_its_timeout_is_stopped(executor, request):
    task = Sleep(date=DAY, seconds=120, timeout_s=2)
    start = time.monotonic()
    with pytest.raises(StepFailed, match="timed out after 2 s") as info:
        task.run()
    assert time.monotonic() - start < 30
    assert not task.output().exists()
    if executor == "nomad":
        job = request.getfixturevalue("nomad_server").client().job.get_job(info.value.job_id)
        assert job["Stop"] is True


def test_meta_the_spec_does_not_allow_is_refused_before_any_request(executor, request):
    before = None
    if executor == "nomad" and request.getfixturevalue("nomad_server").double is not None:
        before = len(request.getfixturevalue("nomad_server").double.requests)
    with pytest.raises(JobSpecError, match=r"not_in_spec"):
        WithUnknownMeta(date=DAY, name="x").run()
    if before is not None:
        assert len(request.getfixturevalue("nomad_server").double.requests) == before


def test_inputs_and_hyperparameters_reach_the_step(executor):
    child = Echo(date=DAY, name="child", hyper={"lr": 0.05, "layers": [3, 2], "tag": "é/..", "deep": {"a": None}},
                 needs=["base"])
    assert build([child])
    out = child.output()
    assert out.read_json("params.json") == {"lr": 0.05, "layers": [3, 2], "tag": "é/..", "deep": {"a": None}}
    assert out.read_json("inputs.json") == {"base": Echo(date=DAY, name="base").output().id}
    env = out.read_json("env.json")
    assert env["NOMAD_JOB_PARENT_ID"] == "echo"
    assert env["NOMAD_JOB_ID"] == out.manifest()["executor"]["job_id"]
    assert env["NOMAD_ALLOC_ID"] == out.manifest()["executor"]["alloc_id"]


def test_a_failed_task_makes_luigi_exit_non_zero(local_root, jobspecs):
    env = {**os.environ, "CARAVAN_JOBSPEC_DIR": str(jobspecs), "CARAVAN_EXECUTOR": "local"}
    luigi_bin = Path(sys.executable).parent / "luigi"
    failed = subprocess.run([str(luigi_bin), "--module", "tests.steps.tasks", "Fail", "--date", "2026-11-22",
                             "--local-scheduler"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 30, failed.stderr[-2000:]
    ok = subprocess.run([str(luigi_bin), "--module", "tests.steps.tasks", "Echo", "--date", "2026-11-22",
                         "--name", "cli", "--local-scheduler"], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]


# -- faults only the Nomad double can stage ---------------------------------------------------------------

@pytest.fixture
def double(executor, request):
    if executor != "nomad":
        pytest.skip("fault injection is for the Nomad executor")
    server = request.getfixturevalue("nomad_server")
    if server.double is None:
        pytest.skip("fault injection needs the Nomad double")
    return server.double


def test_a_lost_allocation_is_rescheduled_and_the_step_succeeds(double):
    double.inject("echo", "lose")
    task = Echo(date=DAY, name="lost-once")
    task.run()
    assert task.output().exists()
    allocs = double_allocs(double, task)
    assert len(allocs) == 2
    assert {a["ClientStatus"] for a in allocs} == {"lost", "complete"}


def double_allocs(double, task):
    import nomad

    client = nomad.Nomad(address=double.address, timeout=10)
    child = task.output().manifest()["executor"]["job_id"]
    return client.job.get_allocations(child, all_=True)


def test_a_blocked_evaluation_fails_clearly_instead_of_waiting(double):
    double.inject("echo", "block")
    task = Echo(date=DAY, name="unplaceable", timeout_s=120)
    start = time.monotonic()
    with pytest.raises(StepFailed, match="can never be placed: group 'step': no eligible node") as info:
        task.run()
    assert time.monotonic() - start < 20
    assert info.value.job_id.startswith("echo/dispatch-")


def children_of(nomad_server, job: str, artifact_id: str) -> list[str]:
    """The ids of ``job``'s children dispatched for ``artifact_id`` (works on the double and a real agent)."""
    stubs = nomad_server.client().jobs.get_jobs(prefix=f"{job}/dispatch-", meta=True)
    return [s["ID"] for s in stubs if s.get("ParentID") == job
            and (s.get("Meta") or {}).get("caravan_artifact_id") == artifact_id]


def test_a_killed_worker_reattaches_instead_of_dispatching_again(executor, local_root, jobspecs, request):
    # No fault is needed, so this runs against a real agent (CARAVAN_TEST_NOMAD_ADDR) as well as the double.
    if executor != "nomad":
        pytest.skip("reattaching is the Nomad executor's")
    nomad_server = request.getfixturevalue("nomad_server")
    env = {**os.environ, "CARAVAN_JOBSPEC_DIR": str(jobspecs), "CARAVAN_EXECUTOR": "nomad",
           "NOMAD_ADDR": nomad_server.address}
    luigi_bin = Path(sys.executable).parent / "luigi"
    args = [str(luigi_bin), "--module", "tests.steps.tasks", "Sleep", "--date", "2026-11-22", "--seconds", "4",
            "--local-scheduler"]
    artifact_id = Sleep(date=DAY, seconds=4).output().id
    before = children_of(nomad_server, "sleep", artifact_id)  # a real agent keeps earlier runs' children
    worker = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while children_of(nomad_server, "sleep", artifact_id) == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children_of(nomad_server, "sleep", artifact_id)) == len(before) + 1
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    restarted = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert restarted.returncode == 0, restarted.stderr[-2000:]
    assert len(children_of(nomad_server, "sleep", artifact_id)) == len(before) + 1, "one dispatch in total"
    assert Sleep(date=DAY, seconds=4).output().exists(), restarted.stderr[-3000:]
    assert json.loads(open_store(local_root).read(Sleep(date=DAY, seconds=4).output().manifest_key))["files"]
