"""Stopping a retrain run stops the step jobs it started (issue 17, item 4).

A run-like luigi process drives a step that hangs (``Sleep``) through caravan's Nomad executor against the Nomad
double; the test sends SIGTERM to that process alone, as tini does to its child when Nomad stops the task, and
checks that the step's child job was stopped (``Stop`` set by ``DELETE /v1/job/:id``) and that the process exited
within the retrain spec's ``kill_timeout``. Plain ``luigi`` under the same signal is the control: it dies at once
and leaves the step running.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

from caravan.executors.jobspec import plain_hcl
from caravan.nomad_api import NomadAPI

from ..doubles.nomad import NomadDouble
from ..doubles.nomad.hcl import parse_duration_ns
from ..servers import poll_until

ROOT = Path(__file__).resolve().parents[2]
STEP_SPECS = ROOT / "tests" / "steps" / "nomad"


def kill_timeout_s() -> float:
    """The retrain task's kill_timeout: how long Nomad waits after SIGTERM before it sends SIGKILL."""
    doc = plain_hcl(hcl2.loads((ROOT / "nomad" / "retrain-ranker.nomad.hcl").read_text()))
    (job,) = doc["job"]
    (group,) = job["retrain-ranker"]["group"]
    (task,) = group["retrain"]["task"]
    return parse_duration_ns(task["retrain"]["kill_timeout"]) / 1e9


@pytest.fixture(scope="module")
def double() -> Iterator[NomadDouble]:
    with NomadDouble(env={"PYTHONPATH": str(ROOT)}) as nomad:
        nomad.load_hcl(STEP_SPECS / "sleep.nomad.hcl")
        yield nomad


def sleep_children(api: NomadAPI) -> list[dict[str, Any]]:
    return [job for job in api.get("jobs", {"prefix": "sleep/dispatch-"}) if job.get("ParentID") == "sleep"]


def start_run(command: list[str], double: NomadDouble, tmp_path: Path, workers: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CARAVAN_EXECUTOR": "nomad", "NOMAD_ADDR": double.address,
           "CARAVAN_JOBSPEC_DIR": str(STEP_SPECS), "CARAVAN_ARTIFACT_ROOT": str(tmp_path / "artifacts")}
    # A fresh identity every run (a new duration), so that no artifact already exists and the step really runs.
    seconds = f"{600 + uuid.uuid4().int % 10_000 / 1000:.3f}"
    luigi_args = ["--module", "tests.steps.tasks", "Sleep", "--date", "2026-01-02", "--seconds", seconds,
                  "--local-scheduler", "--no-lock", "--workers", str(workers)]
    # A session of its own: the cleanup below can kill whatever a failed run leaves behind, and nothing but
    # the run's own process gets the SIGTERM (as in a container, where tini signals only its child).
    return subprocess.Popen([*command, *luigi_args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def terminate_when_the_step_runs(run: subprocess.Popen[bytes], api: NomadAPI, before: set[str]) -> tuple[str, float]:
    """Wait until the run's step job is running, SIGTERM the run; (child job id, seconds until it exited)."""
    found: list[str] = []

    def step_running() -> bool:
        assert run.poll() is None, f"the run exited before its step ran: {run.communicate()[0].decode()[-2000:]}"
        fresh = [job for job in sleep_children(api) if job["ID"] not in before and job.get("Status") == "running"]
        found[:] = [job["ID"] for job in fresh]
        return bool(found)

    poll_until(step_running, 60, "the run's step job running")
    started = time.monotonic()
    run.send_signal(signal.SIGTERM)
    try:
        run.wait(timeout=kill_timeout_s() + 10)
    except subprocess.TimeoutExpired:
        pass
    return found[0], time.monotonic() - started


def cleanup(run: subprocess.Popen[bytes], api: NomadAPI, child: str | None) -> str:
    """Kill what is left of the run's session; stop its step job if it still runs. The run's output."""
    try:
        os.killpg(run.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    output = run.communicate()[0].decode(errors="replace")
    if child and not api.get(f"job/{child}").get("Stop"):
        api.delete(f"job/{child}")
    return output


@pytest.mark.parametrize("workers", [1, 2], ids=["step-in-main-process", "step-in-forked-task-process"])
def test_sigterm_stops_the_step_jobs_the_run_started(double, tmp_path, workers):
    api = NomadAPI(double.address)
    before = {job["ID"] for job in sleep_children(api)}
    stops = double.stats["stops"]
    run = start_run([sys.executable, "-m", "caravan.entrypoint", "--grace", "20s", "luigi"], double, tmp_path,
                    workers)
    child, stopped, stops_after = None, None, stops
    try:
        child, took = terminate_when_the_step_runs(run, api, before)
        code = run.poll()
        # Read before the clean-up, which stops a step the run left behind.
        stopped, stops_after = api.get(f"job/{child}")["Stop"], double.stats["stops"]
    finally:
        output = cleanup(run, api, child)
    limit = kill_timeout_s()
    assert code == 143, f"exit {code}, not 143 (terminated by SIGTERM, cleanly):\n{output[-3000:]}"
    assert took < limit, f"the run took {took:.1f} s to exit after SIGTERM; Nomad kills it after {limit:g} s"
    assert stopped is True, f"step job {child} still running after the run stopped:\n{output[-3000:]}"
    assert stops_after > stops
    assert f"stopped {child}" in output


def test_the_deadline_stops_the_run_and_its_steps_like_sigterm(double, tmp_path):
    """--deadline is the run's `timeout`: when it passes, the run stops its steps and exits 124."""
    api = NomadAPI(double.address)
    before = {job["ID"] for job in sleep_children(api)}
    deadline_s = 3.0
    started = time.monotonic()
    run = start_run([sys.executable, "-m", "caravan.entrypoint", "--deadline", f"{deadline_s:g}s", "--grace", "20s",
                     "luigi"], double, tmp_path, workers=2)
    mine: list[dict[str, Any]] = []
    try:
        code = run.wait(timeout=deadline_s + kill_timeout_s())
        took = time.monotonic() - started
        mine = [job for job in sleep_children(api) if job["ID"] not in before]
        live = [job["ID"] for job in mine if not api.get(f"job/{job['ID']}")["Stop"]]
    finally:
        output = cleanup(run, api, None)
        for job in mine:
            if not api.get(f"job/{job['ID']}")["Stop"]:
                api.delete(f"job/{job['ID']}")
    assert code == 124, f"exit {code}, not 124:\n{output[-3000:]}"
    assert deadline_s <= took < deadline_s + kill_timeout_s()
    assert "the run's deadline passed" in output
    assert live == [], f"steps left running after the deadline: {live}\n{output[-3000:]}"


def test_plain_luigi_leaves_the_step_running_under_the_same_signal(double, tmp_path):
    """The control: without the entrypoint the same SIGTERM orphans the step, which is what the test above catches."""
    api = NomadAPI(double.address)
    before = {job["ID"] for job in sleep_children(api)}
    run = start_run([sys.executable, "-m", "luigi"], double, tmp_path, workers=2)
    child = None
    try:
        child, _ = terminate_when_the_step_runs(run, api, before)
        code = run.poll()
        stopped = api.get(f"job/{child}")["Stop"]
    finally:
        cleanup(run, api, child)
    assert code == -signal.SIGTERM, "plain luigi has no SIGTERM handler: the default action kills it"
    assert stopped is False, "plain luigi stopped the step: the test above would not show what the entrypoint adds"


def test_an_interrupt_between_dispatch_and_confirmation_stops_the_dispatched_child(double, local_root, monkeypatch):
    """The window where the run knows what it dispatched but has not confirmed it yet (a SIGTERM there used to
    leave the step running: the executor stopped only a confirmed child)."""
    import datetime as dt

    from caravan.executors.base import StepRequest
    from caravan.executors.jobspec import load_spec
    from caravan.executors.nomad import NomadExecutor

    from ..steps.tasks import Sleep

    monkeypatch.setenv("NOMAD_ADDR", double.address)
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(STEP_SPECS))
    api = NomadAPI(double.address)
    before = {job["ID"] for job in sleep_children(api)}
    task = Sleep(date=dt.date(2026, 1, 3), seconds=600 + uuid.uuid4().int % 10_000 / 1000)
    executor = NomadExecutor()

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(executor, "_confirm", interrupted)  # caravan's own step, not a client library
    request = StepRequest(spec=load_spec("sleep"), artifact=task.output(), meta=task.meta(), run_id="test",
                          timeout_s=60.0, placement_timeout_s=None)
    with pytest.raises(KeyboardInterrupt):
        executor.run(request)
    (child,) = [job for job in sleep_children(api) if job["ID"] not in before]
    assert api.get(f"job/{child['ID']}")["Stop"] is True


@pytest.mark.parametrize(("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("6h", 21600.0),
                                               ("1d", 86400.0), ("0.5s", 0.5)])
def test_deadline_durations(text, seconds):
    from caravan.entrypoint import parse_duration

    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1s", "soon", "6x", "nan", "inf"])
def test_bad_deadlines_are_refused(text):
    import argparse

    from caravan.entrypoint import parse_duration

    with pytest.raises(argparse.ArgumentTypeError, match="duration"):
        parse_duration(text)
