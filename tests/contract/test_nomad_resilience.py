"""The Nomad executor on a bad day: leader elections, a full cluster, impossible constraints, racing
workers on either side of Nomad 1.11.2, job GC between retries, UTF-8 output.

Each fault test gets a Nomad double of its own (its nodes, its faults, its counters). The tests that need
no fault (an impossible constraint, a placement timeout, UTF-8 output) run unchanged against a real agent
when ``CARAVAN_TEST_NOMAD_ADDR`` is set.
"""

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

from caravan import StepFailed
from caravan.artifacts import LOGS_DIR
from caravan.executors.base import StepRequest, reset_executors
from caravan.executors.jobspec import load_spec
from caravan.executors.nomad import NomadExecutor
from caravan.nomad_api import NomadAPI

from ..conftest import register_for_real_agent
from ..servers import poll_until
from ..steps.tasks import Echo, Fail, Sleep

DAY = dt.date(2026, 11, 22)
STEPS = Path(__file__).resolve().parents[1] / "steps" / "nomad"
# Room for one step (cpu 200 / memory 256 each) on a one-node cluster, or two.
ONE_STEP = {"cpu": 300, "memory": 400, "datacenter": "dc1", "class": "", "attributes": {"kernel.name": "linux"},
            "meta": {}}
TWO_STEPS = {**ONE_STEP, "cpu": 500, "memory": 600}


def _spec_variant(source: str, job: str, *, extra: str = "", memory: int | None = None) -> str:
    text = (STEPS / f"{source}.nomad.hcl").read_text().replace(f'job "{source}"', f'job "{job}"')
    text = text.replace('  type        = "batch"\n', '  type        = "batch"\n' + extra, 1)
    if memory is not None:
        text = text.replace("memory = 256", f"memory = {memory}")
    return text


EXTRA_SPECS = {
    # No node runs Plan 9: the scheduler filters every node by this constraint.
    "echo-plan9": _spec_variant("echo", "echo-plan9",
                                extra='  constraint {\n    attribute = "${attr.kernel.name}"\n'
                                      '    value     = "plan9"\n  }\n'),
    # More memory than any node has: every node is exhausted, so Nomad blocks the eval and waits.
    "sleep-huge": _spec_variant("sleep", "sleep-huge", memory=4_000_000),
}


class ImpossibleEcho(Echo):
    job = "echo-plan9"


class HugeSleep(Sleep):
    job = "sleep-huge"


class FailUTF8(Fail):
    """The fail step, with a non-ASCII message in its stderr."""

    def hyperparameters(self) -> dict[str, Any]:
        return {"code": f"«{self.code}» é ✓ 日本"}


@pytest.fixture
def spec_dir(jobspecs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The project's and test specs plus this module's variants, made the configured spec folder."""
    folder = tmp_path / "specs"
    folder.mkdir()
    for spec in jobspecs.iterdir():
        (folder / spec.name).symlink_to(spec.resolve())
    for name, text in EXTRA_SPECS.items():
        (folder / f"{name}.nomad.hcl").write_text(text)
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(folder))
    monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
    return folder


@pytest.fixture
def make_double(spec_dir: Path, local_root: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Start a Nomad double of this test's own (constructor keywords as given), with every spec loaded."""
    from ..doubles.nomad import NomadDouble

    started: list[Any] = []

    def make(**kwargs: Any) -> Any:
        double = NomadDouble(env={"PYTHONPATH": os.environ["PYTHONPATH"]}, **kwargs)
        started.append(double)
        monkeypatch.setenv("NOMAD_ADDR", double.start())
        double.load_specs(spec_dir)
        reset_executors()
        return double

    yield make
    for double in started:
        double.stop()


@pytest.fixture
def nomad_target(request: pytest.FixtureRequest, spec_dir: Path, local_root: str,
                 monkeypatch: pytest.MonkeyPatch) -> Any:
    """A real agent (CARAVAN_TEST_NOMAD_ADDR) with this module's specs registered, else a two-step double."""
    real = os.environ.get("CARAVAN_TEST_NOMAD_ADDR")
    if real:
        only_extra = spec_dir.parent / "extra-specs"
        only_extra.mkdir(exist_ok=True)
        for name, text in EXTRA_SPECS.items():
            (only_extra / f"{name}.nomad.hcl").write_text(text)
        register_for_real_agent(real, only_extra)
        monkeypatch.setenv("NOMAD_ADDR", real)
        return None
    return request.getfixturevalue("make_double")(nodes=[TWO_STEPS])


def stops_sent(double: Any) -> list[str]:
    """The child jobs caravan stopped (DELETE /v1/job/<parent>/dispatch-...)."""
    return [path for method, path in double.requests if method == "DELETE" and "/dispatch-" in path]


def run_in_threads(*calls: Callable[[], Any]) -> list[Any]:
    """Run each call in its own thread; each one's result or exception, in order (asserted by the caller)."""
    outcomes: list[Any] = [None] * len(calls)

    def one(i: int, call: Callable[[], Any]) -> None:
        try:
            outcomes[i] = call()
        except BaseException as exc:  # recorded, asserted in the main thread
            outcomes[i] = exc

    threads = [threading.Thread(target=one, args=(i, c)) for i, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads), "a step did not end within 120 s"
    return outcomes


def step_request(task: Any) -> StepRequest:
    return StepRequest(spec=load_spec(task.job), artifact=task.output(), meta=task.meta(), run_id="test",
                       timeout_s=float(task.timeout_s), placement_timeout_s=task.placement_timeout_s)


# -- leader elections ------------------------------------------------------------------------------------

# "running" opens the window when the step's process starts; it outlasts the step (a Python start-up and a
# 0.1 s sleep), so the step ends inside it and caravan's next requests (the wait, the logs) meet the election.
@pytest.mark.parametrize(("after", "drop", "window_s"), [(None, False, 0.8), ("dispatch", True, 0.8),
                                                         ("placement", False, 0.8), ("running", False, 2.0),
                                                         ("running", True, 2.0)])
def test_a_step_survives_a_leader_election(make_double, after, drop, window_s, caplog):
    double = make_double(nodes=[TWO_STEPS])
    task = Sleep(date=DAY, seconds=0.1)
    double.leader_loss(window_s, drop_connections=drop, after=after)
    with caplog.at_level(logging.WARNING, logger="caravan"):
        task.run()
    assert task.output().exists()
    assert double.stats["no_leader_answers"] + double.stats["dropped_connections"] > 0, "the election happened"
    assert double.processes_started == 1, "exactly one process ran"
    assert stops_sent(double) == [], "caravan stopped nothing"
    # An unanswered dispatch is followed by a look-up of the artifact's children, not by a second dispatch.
    assert len(double.dispatch_requests) == 1, double.dispatch_requests
    outages = [r for r in caplog.records if "Nomad unavailable" in r.getMessage()]
    assert len(outages) <= 3, [r.getMessage() for r in outages]  # once per outage, not once per request


# -- a full cluster, an impossible one -------------------------------------------------------------------

def test_a_step_on_a_full_node_waits_and_runs_when_the_other_finishes(make_double, caplog):
    double = make_double(nodes=[ONE_STEP])
    first, second = Sleep(date=DAY, seconds=1.0), Sleep(date=DAY, seconds=0.2)
    executor = NomadExecutor()
    with caplog.at_level(logging.WARNING, logger="caravan"):
        outcomes = run_in_threads(lambda: executor.run(step_request(first)),
                                  lambda: (poll_until(lambda: double.processes_started >= 1, 20, "first step runs"),
                                           executor.run(step_request(second))))
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert first.output().exists() and second.output().exists()
    assert double.processes_started == 2 and stops_sent(double) == []
    waiting = [r.getMessage() for r in caplog.records if "waiting for capacity" in r.getMessage()]
    assert len(waiting) == 1 and "exhausted on 1 node" in waiting[0], waiting


def test_an_impossible_constraint_fails_at_once_naming_it(nomad_target):
    task = ImpossibleEcho(date=DAY, name="plan9", timeout_s=120)
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"can never be placed: .*constraint .*kernel\.name.*plan9") as info:
        task.run()
    assert time.monotonic() - start < 1.0
    assert info.value.job_id.startswith("echo-plan9/dispatch-")
    assert NomadAPI.from_config().get(f"job/{info.value.job_id}")["Stop"] is True
    if nomad_target is not None:
        assert nomad_target.processes_started == 0


def test_a_placement_timeout_stops_the_child_and_fails_cleanly(make_double, monkeypatch):
    # Nomad reports a step larger than every node as exhaustion, like a full one; a token without node:read
    # cannot tell them apart, so the step waits for capacity until its placement timeout.
    double = make_double(nodes=[TWO_STEPS], acl_token="management", acl_policies={"no-node-read": [
        'namespace "default" {\n  capabilities = ["list-jobs", "read-job", "dispatch-job", "submit-job", '
        '"read-logs"]\n}\n']})
    monkeypatch.setenv("NOMAD_TOKEN", "no-node-read")
    task = HugeSleep(date=DAY, seconds=0.1, timeout_s=120, placement_timeout_s=1.0)
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"not placed within placement_timeout_s = 1 s .*memory exhausted") as info:
        task.run()
    assert 1.0 <= time.monotonic() - start < 10
    assert NomadAPI.from_config().get(f"job/{info.value.job_id}")["Stop"] is True
    assert not task.output().exists()
    assert double.processes_started == 0
    assert stops_sent(double) == [f"/v1/job/{info.value.job_id}"]


def test_a_step_larger_than_every_node_fails_at_once_naming_its_ask(nomad_target):
    task = HugeSleep(date=DAY, seconds=0.1, timeout_s=120, placement_timeout_s=600.0)
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"can never be placed: group 'step' asks cpu 200 MHz and memory 4000000 MB, "
                                         r"more memory than any of the .*--memory-mb") as info:
        task.run()
    assert time.monotonic() - start < 5
    assert NomadAPI.from_config().get(f"job/{info.value.job_id}")["Stop"] is True
    if nomad_target is not None:
        assert nomad_target.processes_started == 0


# -- idempotency on both sides of Nomad 1.11.2 -----------------------------------------------------------

@pytest.mark.parametrize("behaviour", ["1.11.1", "1.11.2"])
def test_two_workers_racing_one_artifact_run_the_step_once(make_double, behaviour):
    double = make_double(nodes=[TWO_STEPS], dispatch_idempotency=behaviour, dispatch_race_window_s=0.5)
    task = Sleep(date=DAY, seconds=0.5)
    workers = [NomadExecutor(), NomadExecutor()]  # two processes' executors: nothing shared but Nomad
    outcomes = run_in_threads(*(lambda w=w: w.run(step_request(task)) for w in workers))
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    assert outcomes[0].job_id == outcomes[1].job_id, "both workers followed the same child"
    assert task.output().exists()
    completed = [k for k in task.output().store.list_keys(f"{task.output().key}/{LOGS_DIR}/")
                 if k.endswith(".stdout.txt")]
    assert len({k.rsplit("/", 1)[-1] for k in completed}) == 1, "one allocation ran the step to its end"
    if behaviour == "1.11.2":
        assert double.processes_started == 1 and stops_sent(double) == []
    else:  # both dispatches made a child: the later one is stopped, so one child runs the step to its end
        api = NomadAPI(double.address)
        children = [s for s in api.get("jobs", {"prefix": "sleep/dispatch-", "meta": "true"})
                    if (s.get("Meta") or {}).get("caravan_artifact_id") == task.output().id]
        assert len(children) == 2, "the race happened: both dispatches made a child"
        kept = [c["ID"] for c in children if not c.get("Stop")]
        assert kept == [outcomes[0].job_id], children
        assert task.output().manifest()["executor"]["job_id"] == outcomes[0].job_id
        for extra in (c["ID"] for c in children if c.get("Stop")):  # killed, not run to its end
            allocs = api.get(f"job/{extra}/allocations")
            assert all(a["DesiredStatus"] == "stop" for a in allocs), allocs
        assert set(stops_sent(double)) == {f"/v1/job/{c['ID']}" for c in children if c.get("Stop")}


def test_a_racing_worker_whose_child_was_stopped_as_the_duplicate_before_it_looked_attaches_to_the_kept_one(
        make_double):
    """Pre-1.11.2, both dispatches make a child. The loser's dispatch answer is held (as a loaded machine can)
    until the winner has stopped the loser's child as the duplicate and it is dead: the loser's first look at
    its own child finds it stopped, which is no failure of the step but a reason to attach to the kept one."""
    double = make_double(nodes=[TWO_STEPS], dispatch_idempotency="1.11.1", dispatch_race_window_s=0.5)
    task = Sleep(date=DAY, seconds=0.5)
    api = NomadAPI(double.address)
    held: list[str] = []  # the loser's child, held back until it was dead (recorded here, asserted below)

    def children() -> list[dict[str, Any]]:
        return sorted((s for s in api.get("jobs", {"prefix": "sleep/dispatch-", "meta": "true"})
                       if (s.get("Meta") or {}).get("caravan_artifact_id") == task.output().id),
                      key=lambda s: s["CreateIndex"])

    def until(condition: Callable[[], bool]) -> bool:  # in the server's thread: record, never assert
        deadline = time.monotonic() + 30
        while not condition():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def hold_the_loser(method: str, path: str, status: int, body: bytes) -> None:
        if method != "POST" or not path.startswith("/v1/job/sleep/dispatch") or status != 200:
            return
        mine = json.loads(body)["DispatchedJobID"]
        if not until(lambda: len(children()) == 2) or children()[0]["ID"] == mine:
            return  # the winner's answer goes at once: its confirmation stops the loser's child
        if until(lambda: any(c["ID"] == mine and c["Stop"] and c["Status"] == "dead" for c in children())):
            held.append(mine)

    double.response_hook = hold_the_loser
    try:
        outcomes = run_in_threads(*(lambda: NomadExecutor().run(step_request(task)) for _ in range(2)))
    finally:
        double.response_hook = None
    assert len(held) == 1, "the loser's dispatch answer was held until the winner had stopped its child"
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    kept = [c["ID"] for c in children() if not c["Stop"]]
    assert len(kept) == 1 and held[0] not in kept
    assert [o.job_id for o in outcomes] == kept * 2, "both workers followed the kept child"
    assert task.output().exists() and task.output().manifest()["executor"]["job_id"] == kept[0]
    assert set(stops_sent(double)) == {f"/v1/job/{held[0]}"}


# -- job GC between retries ------------------------------------------------------------------------------

def test_gc_between_retries_never_replays_a_stale_failure(make_double):
    double = make_double(nodes=[TWO_STEPS])
    task = Fail(date=DAY, code=5)
    failed_children = []
    for attempt in range(4):
        with pytest.raises(StepFailed, match="deliberate failure") as info:
            task.run()
        failed_children.append(info.value.job_id)
        assert double.processes_started == attempt + 1, "every retry ran the step again"
        if attempt == 1:
            _gc_oldest(double, failed_children)  # the survivor holds the token a child count would compute
        if attempt == 2:
            double.gc(threshold_s=0)  # every dead child: the next attempt must still run
    assert len(set(failed_children)) == 4, failed_children


def _gc_oldest(double: Any, children: list[str]) -> None:
    """GC only the oldest surviving child: a threshold between its age and the next one's."""
    api = NomadAPI(double.address)
    alive = [c for c in children if api.read(f"job/{c}") is not None]
    assert len(alive) >= 2, alive
    times = [api.get(f"job/{c}")["SubmitTime"] / 1e9 for c in alive[:2]]
    double.gc(threshold_s=time.time() - (times[0] + times[1]) / 2)
    assert api.read(f"job/{alive[0]}") is None and api.read(f"job/{alive[1]}") is not None


# -- output encoding -------------------------------------------------------------------------------------

def test_utf8_step_output_survives_in_the_error_and_the_copied_logs(nomad_target):
    task = FailUTF8(date=DAY, code=9)
    with pytest.raises(StepFailed) as info:
        task.run()
    assert "«9» é ✓ 日本" in info.value.stderr_tail
    stderr_logs = [k for k in task.output().store.list_keys(task.output().key + "/") if k.endswith(".stderr.txt")]
    assert stderr_logs
    assert "«9» é ✓ 日本" in task.output().store.read(stderr_logs[-1]).decode("utf-8")


# -- definitive answers end the wait, and say which ------------------------------------------------------

@pytest.mark.parametrize("purge", [False, True])
def test_a_child_stopped_or_purged_by_someone_else_fails_the_step_saying_so(nomad_target, purge):
    task = Sleep(date=DAY, seconds=60, timeout_s=120)
    api = NomadAPI.from_config()

    def running_child() -> str | None:
        stubs = api.get("jobs", {"prefix": "sleep/dispatch-", "meta": "true"})
        live = [s["ID"] for s in stubs if s["Status"] == "running" and not s.get("Stop")
                and (s.get("Meta") or {}).get("caravan_artifact_id") == task.output().id]
        return live[0] if live else None

    def operator() -> str:
        poll_until(running_child, 30, "the step's child runs")
        child = str(running_child())
        api.delete(f"job/{child}", {"purge": "true" if purge else "false"})
        return child

    start = time.monotonic()
    outcome, child = run_in_threads(lambda: NomadExecutor().run(step_request(task)), operator)
    assert isinstance(outcome, StepFailed), outcome
    assert ("purged by someone else" if purge else "stopped by someone else") in str(outcome)
    assert outcome.job_id == child
    assert time.monotonic() - start < 30
    if nomad_target is not None:
        assert stops_sent(nomad_target) == [f"/v1/job/{child}" + ("?purge=true" if purge else "?purge=false")]


def test_a_refused_request_fails_the_step_naming_it_without_stopping_anything(make_double, monkeypatch):
    double = make_double(nodes=[TWO_STEPS], acl_token="the-right-token")
    monkeypatch.setenv("NOMAD_TOKEN", "a-wrong-token")
    with pytest.raises(StepFailed, match=r"HTTP 403") as info:
        Echo(date=DAY, name="refused").run()
    assert "a-wrong-token" not in str(info.value) and "the-right-token" not in str(info.value)
    assert double.processes_started == 0 and stops_sent(double) == []
