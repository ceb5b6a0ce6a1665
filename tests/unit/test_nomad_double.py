"""The Nomad double, driven only through python-nomad, held to the API notes (NOMAD_CONSUL_VAULT_API.md)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from nomad.api import exceptions as nx

import nomad

from ..doubles._http import blocking_deadline
from ..doubles.nomad import NomadDouble

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "nomad"


@pytest.fixture(scope="module")
def double() -> Iterator[NomadDouble]:
    with NomadDouble(kill_timeout_s=2.0) as server:
        server.load_specs(FIXTURES)
        yield server


@pytest.fixture
def n(double: NomadDouble) -> nomad.Nomad:
    return nomad.Nomad(address=double.address, timeout=10)


def dispatch(n: nomad.Nomad, job: str, meta: dict[str, str], token: str | None = None, **body: Any) -> dict:
    params = {"idempotency_token": token} if token else {}
    return n.job.request(job, "dispatch", params=params, json={"Meta": meta, **body}, method="post").json()


def wait_for(n: nomad.Nomad, job_id: str, status: str = "dead", timeout_s: float = 15) -> dict:
    """Follow a job with blocking queries until it reaches ``status``."""
    index, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = n.job.request(job_id, method="get", params={"index": index, "wait": "5s"}, timeout=10)
        index = int(response.headers["X-Nomad-Index"])
        if response.json()["Status"] == status:
            return response.json()
    raise AssertionError(f"{job_id} never became {status}")


def allocs_of(n: nomad.Nomad, job_id: str) -> list[dict]:
    return sorted(n.job.get_allocations(job_id, all_=True), key=lambda a: a["CreateIndex"])


def wait_alloc(n: nomad.Nomad, alloc_id: str, done: tuple[str, ...], timeout_s: float = 15) -> dict:
    index, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        params = {"index": index, "wait": "5s"}
        response = n.allocation.request(alloc_id, method="get", params=params, timeout=10)
        index = int(response.headers["X-Nomad-Index"])
        if response.json()["ClientStatus"] in done:
            return response.json()
    raise AssertionError(f"alloc {alloc_id} never reached {done}")


def events(alloc: dict, task: str = "t") -> list[str]:
    return [e["Type"] for e in alloc["TaskStates"][task]["Events"]]


def stdout(n: nomad.Nomad, alloc_id: str, task: str = "t", kind: str = "stdout") -> str:
    return n.client.stream_logs.stream(alloc_id, task, kind, plain=True)


def error_of(call: Any) -> requests.Response:
    with pytest.raises(nx.BaseNomadException) as info:
        call()
    return info.value.nomad_resp


# -- dispatch ----------------------------------------------------------------------------------------------

def test_dispatch_round_trip_runs_the_task_with_nomads_environment(n, double):
    reply = dispatch(n, "echo-meta", {"input": "s3://b/k", "owner": "me", "mixed-Case.key": "v"},
                     Payload=base64.b64encode(b"hello").decode())
    assert set(reply) == {"DispatchedJobID", "EvalID", "EvalCreateIndex", "JobCreateIndex", "Index"}
    child = reply["DispatchedJobID"]
    assert child.startswith("echo-meta/dispatch-") and len(child.rsplit("-", 1)[1]) == 8
    assert reply["EvalCreateIndex"] == reply["JobCreateIndex"] == reply["Index"]
    job = wait_for(n, child)
    assert job["ParentID"] == "echo-meta" and job["Dispatched"] is True and job["Name"] == child
    assert job["Meta"] == {"owner": "me", "release": "r1", "input": "s3://b/k", "mixed-Case.key": "v"}
    assert base64.b64decode(job["Payload"]) == b"hello"
    (alloc,) = allocs_of(n, child)
    assert alloc["ClientStatus"] == "complete" and alloc["ClientDescription"] == "All tasks have completed"
    assert events(alloc) == ["Received", "Task Setup", "Started", "Terminated"]
    terminated = alloc["TaskStates"]["t"]["Events"][-1]
    assert terminated["Details"]["exit_code"] == "0" and terminated["ExitCode"] == 0
    assert isinstance(terminated["Time"], int) and terminated["Time"] > 10**18
    assert alloc["TaskStates"]["t"]["FinishedAt"].endswith("Z")
    lines = stdout(n, alloc["ID"]).splitlines()
    env = json.loads(lines[0])
    assert env["NOMAD_META_input"] == env["NOMAD_META_INPUT"] == "s3://b/k"
    assert env["NOMAD_META_owner"] == env["NOMAD_META_OWNER"] == "me", "dispatch meta overrides the parent's"
    assert env["NOMAD_META_release"] == env["NOMAD_META_RELEASE"] == "r1", "the parent's meta is merged in"
    assert env["NOMAD_META_mixed_Case.key"] == env["NOMAD_META_MIXED_CASE.KEY"] == "v"
    assert env["NOMAD_JOB_ID"] == child and env["NOMAD_JOB_PARENT_ID"] == "echo-meta"
    assert env["NOMAD_ALLOC_ID"] == alloc["ID"] and env["NOMAD_ALLOC_INDEX"] == "0"
    assert (env["NOMAD_TASK_NAME"], env["NOMAD_GROUP_NAME"], env["NOMAD_NAMESPACE"]) == ("t", "g", "default")
    assert Path(env["NOMAD_TASK_DIR"], "payload.txt").read_bytes() == b"hello"
    assert lines[1] == "arg=s3://b/k", "args are interpolated"
    evaluation = n.evaluation.get_evaluation(reply["EvalID"])
    assert (evaluation["TriggeredBy"], evaluation["Type"], evaluation["Status"]) == ("job-register", "batch",
                                                                                   "complete")
    summary = n.job.get_summary(child)["Summary"]["g"]
    assert summary["Complete"] == 1 and summary["Failed"] == 0
    assert n.job.get_summary("echo-meta")["Children"]["Dead"] >= 1
    assert double.dispatch_requests[-1]["job_id"] == "echo-meta"


@pytest.mark.parametrize(("job", "meta", "text"), [
    ("sleepy", {"seconds": "0", "nope": "x"}, "Dispatch request included unpermitted metadata keys: [nope]"),
    ("sleepy", {"nope": "x"}, "Dispatch request included unpermitted metadata keys: [nope]"),
    ("sleepy", {"code": "1"}, "Dispatch did not provide required meta keys: [seconds]"),
    ("no-such-job", {"seconds": "0"}, "parameterized job not found"),
])
def test_dispatch_refusals_are_500_with_nomads_text(n, job, meta, text):
    response = error_of(lambda: n.job.dispatch_job(job, meta=meta))
    assert response.status_code == 500
    assert response.text == text
    assert response.headers["Content-Type"].startswith("text/plain")


def test_other_dispatch_refusals_follow_the_validation_order(n, double):
    response = error_of(lambda: n.job.dispatch_job("sleepy", meta={"seconds": "0"}, payload="aGk="))
    assert response.status_code == 500
    assert response.text == "Payload provided but forbidden by parameterized job"
    bad = error_of(lambda: n.job.dispatch_job("sleepy", meta={"seconds": "0"}, payload="A28C3=="))
    assert (bad.status_code, bad.text) == (400, "illegal base64 data at input byte 4")
    big = base64.b64encode(b"x" * 20000).decode()
    response = error_of(lambda: n.job.dispatch_job("echo-meta", meta={"input": "x"}, payload=big))
    assert response.text == "Payload exceeds maximum size; 20000 > 16384"
    response = error_of(lambda: n.job.request("sleepy", "dispatch", json={"Meta": {"seconds": 1}},
                                              method="post"))
    assert response.status_code == 400
    assert response.text.startswith("json: cannot unmarshal number into Go struct field")
    response = error_of(lambda: n.job.request("sleepy", "dispatch", method="post"))
    assert (response.status_code, response.text) == (400, "Request body is empty")
    response = error_of(lambda: n.job.request("sleepy", "dispatch", data="{nope", method="post"))
    assert response.status_code == 400
    response = error_of(lambda: n.job.request("sleepy", "dispatch", method="get"))
    assert (response.status_code, response.text) == (405, "Invalid method")


def test_idempotency_token_as_query_parameter_returns_the_same_child(n, double):
    before = double.processes_started
    first = dispatch(n, "sleepy", {"seconds": "0"}, token="tok-1")
    wait_for(n, first["DispatchedJobID"])
    again = dispatch(n, "sleepy", {"seconds": "0"}, token="tok-1")
    assert again["DispatchedJobID"] == first["DispatchedJobID"], "any status, even dead, is found"
    assert again["EvalID"] == "" and again["EvalCreateIndex"] == 0
    assert again["JobCreateIndex"] == first["JobCreateIndex"]
    assert double.processes_started == before + 1
    assert n.job.get_job(first["DispatchedJobID"])["DispatchIdempotencyToken"] == "tok-1"
    body_token = dispatch(n, "sleepy", {"seconds": "0"}, IdempotencyToken="tok-1")
    assert body_token["DispatchedJobID"] == first["DispatchedJobID"], "a body IdempotencyToken decodes too"


def test_python_nomads_own_idempotency_token_is_ignored_as_nomad_does(n, double):
    first = n.job.dispatch_job("sleepy", meta={"seconds": "0"}, idempotency_token="same")
    second = n.job.dispatch_job("sleepy", meta={"seconds": "0"}, idempotency_token="same")
    assert first["DispatchedJobID"] != second["DispatchedJobID"]
    assert second["EvalID"]
    assert double.dispatch_requests[-1]["body"]["idempotency_token"] == "same"
    assert double.dispatch_requests[-1]["query"] == {}
    assert n.job.get_job(second["DispatchedJobID"])["DispatchIdempotencyToken"] == ""


def test_child_paths_work_raw_and_escaped(n, double):
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child)
    escaped = child.replace("/", "%2F")
    assert n.job.request(escaped, method="get").json()["ID"] == child
    raw_allocs = n.job.get_allocations(child)
    assert n.job.request(escaped, "allocations", method="get").json() == raw_allocs and len(raw_allocs) == 1
    assert n.job.request(escaped, "summary", method="get").json() == n.job.get_summary(child)
    assert n.job.request(escaped, "evaluations", method="get").json() == n.job.get_evaluations(child)
    assert ("GET", f"/v1/job/{child}/allocations") in double.requests
    assert ("GET", f"/v1/job/{escaped}/allocations") in double.requests


# -- blocking queries --------------------------------------------------------------------------------------

def test_a_blocking_query_returns_when_the_job_turns_dead_not_at_its_wait(n):
    child = dispatch(n, "sleepy", {"seconds": "1"})["DispatchedJobID"]
    wait_for(n, child, "running")
    index = int(n.job.request(child, method="get").headers["X-Nomad-Index"])
    start = time.monotonic()
    response = n.job.request(child, method="get", params={"index": index, "wait": "60s"}, timeout=70)
    elapsed = time.monotonic() - start
    assert response.json()["Status"] == "dead"
    assert int(response.headers["X-Nomad-Index"]) > index
    assert response.headers["X-Nomad-KnownLeader"] == "true"
    assert response.headers["X-Nomad-LastContact"] == "0"
    # Woken by the change: a query that waited out its 60 s would have taken at least that long.
    assert elapsed < 30, elapsed
    (alloc,) = allocs_of(n, child)
    assert alloc["ClientStatus"] == "complete"


def test_a_blocking_query_times_out_with_the_same_index(n):
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child)
    index = n.job.request(child, method="get").headers["X-Nomad-Index"]
    start = time.monotonic()
    response = n.job.request(child, method="get", params={"index": index, "wait": "1s"}, timeout=10)
    elapsed = time.monotonic() - start
    assert elapsed >= 1.0, "returned before its wait although nothing changed"
    assert response.status_code == 200 and response.headers["X-Nomad-Index"] == index
    assert response.json()["Status"] == "dead"


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=0.001, max_value=300.0))
def test_a_blocking_deadline_is_the_wait_plus_at_most_a_sixteenth(wait_s):
    before = time.monotonic()
    deadline = blocking_deadline(wait_s)
    after = time.monotonic()
    assert before + wait_s <= deadline <= after + wait_s * 17 / 16


def test_blocking_parameters_are_validated(n):
    cases = (({"index": "1", "wait": "soon"}, "Invalid wait time"), ({"index": "x"}, "Invalid index"))
    for params, text in cases:
        response = error_of(lambda params=params: n.job.request("sleepy", method="get", params=params))
        assert (response.status_code, response.text) == (400, text)


def test_job_allocations_block_on_the_jobs_own_allocs(n):
    child = dispatch(n, "sleepy", {"seconds": "0.3"})["DispatchedJobID"]
    response = n.job.request(child, "allocations", method="get")
    index = int(response.headers["X-Nomad-Index"])
    for _ in range(10):
        response = n.job.request(child, "allocations", method="get", params={"index": index, "wait": "5s"},
                                 timeout=10)
        index = int(response.headers["X-Nomad-Index"])
        if response.json() and response.json()[0]["ClientStatus"] == "complete":
            break
    assert response.json()[0]["ClientStatus"] == "complete"


# -- logs --------------------------------------------------------------------------------------------------

def test_logs_plain_framed_and_from_the_end(n):
    child = dispatch(n, "echo-meta", {"input": "logs"})["DispatchedJobID"]
    wait_for(n, child)
    (alloc,) = allocs_of(n, child)
    text = stdout(n, alloc["ID"])
    assert text.endswith("arg=logs\n")
    params = {"task": "t", "type": "stdout", "plain": "true", "origin": "end", "offset": 9}
    tail = n.client.stream_logs.request(alloc["ID"], method="get", params=params)
    assert tail.text == "arg=logs\n" and tail.headers["Content-Type"].startswith("text/plain")
    framed = n.client.stream_logs.stream(alloc["ID"], "t", "stdout", offset=0, origin="start", plain=False)
    frame, _ = json.JSONDecoder().raw_decode(framed)
    assert frame["File"] == "alloc/logs/t.stdout.0" and frame["Offset"] == len(text.encode())
    assert base64.b64decode(frame["Data"]).decode() == text
    assert stdout(n, alloc["ID"], kind="stderr") == ""


@pytest.mark.parametrize(("params", "status", "text"), [
    ({"type": "stdout"}, 400, "must provide task name"),
    ({"task": "t", "type": "stdin"}, 400, "must provide log type (stdout/stderr)"),
    ({"task": "t", "type": "stdout", "origin": "middle"}, 400, "origin must be start or end"),
    ({"task": "nope", "type": "stdout"}, 400, 'unknown task name "nope"'),
])
def test_log_requests_are_checked_in_nomads_order(n, params, status, text):
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child)
    (alloc,) = allocs_of(n, child)
    response = error_of(lambda: n.client.stream_logs.request(alloc["ID"], method="get", params=params))
    assert (response.status_code, response.text) == (status, text)


def test_logs_of_an_unknown_allocation_are_404(n):
    unknown = "00000000-0000-0000-0000-000000000000"
    response = error_of(lambda: n.client.stream_logs.stream(unknown, "t", "stdout"))
    assert (response.status_code, response.text) == (404, f'Unknown allocation "{unknown}"')


# -- faults ------------------------------------------------------------------------------------------------

def test_injected_failure_fails_the_allocation_once(n, double):
    double.inject("sleepy", "fail")
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child)
    (alloc,) = allocs_of(n, child)
    assert alloc["ClientStatus"] == "failed" and alloc["TaskStates"]["t"]["Failed"] is True
    assert events(alloc)[-2:] == ["Terminated", "Not Restarting"]
    terminated, not_restarting = alloc["TaskStates"]["t"]["Events"][-2:]
    assert terminated["Details"]["exit_code"] == "3" and terminated["ExitCode"] == 3
    assert not_restarting["Details"] == {"fails_task": "true", "restart_reason": "Policy allows no restarts"}
    assert "injected failure" in stdout(n, alloc["ID"], kind="stderr")
    assert n.job.get_summary(child)["Summary"]["g"]["Failed"] == 1
    healthy = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, healthy)
    assert allocs_of(n, healthy)[0]["ClientStatus"] == "complete", "only the next dispatch misbehaves"


def test_a_hanging_task_is_killed_when_its_job_is_stopped_and_purge_removes_it(n, double):
    double.inject("sleepy", "hang")
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child, "running")
    (alloc,) = allocs_of(n, child)
    alloc = wait_alloc(n, alloc["ID"], ("running",))
    reply = n.job.deregister_job(child)
    assert reply["EvalID"] and reply["Index"] >= reply["EvalCreateIndex"] > 0
    job = n.job.get_job(child)
    assert job["Stop"] is True and job["Status"] == "dead"
    alloc = wait_alloc(n, alloc["ID"], ("complete", "failed"))
    assert alloc["ClientStatus"] == "complete" and alloc["DesiredStatus"] == "stop"
    assert events(alloc)[-3:] == ["Killing", "Terminated", "Killed"]
    assert alloc["TaskStates"]["t"]["Events"][-2]["Details"]["signal"] == "15"
    n.job.deregister_job(child, purge=True)
    response = error_of(lambda: n.job.get_job(child))
    assert (response.status_code, response.text) == (404, "job not found")


def test_a_lost_allocation_is_replaced_once(n, double):
    double.inject("sleepy", "lose")
    child = dispatch(n, "sleepy", {"seconds": "0"})["DispatchedJobID"]
    wait_for(n, child)
    lost, replacement = allocs_of(n, child)
    assert lost["ClientStatus"] == "lost" and lost["DesiredStatus"] == "stop"
    assert lost["DesiredDescription"] == "alloc is lost since its node is down"
    assert lost["NextAllocation"] == replacement["ID"]
    assert n.allocation.get_allocation(replacement["ID"])["PreviousAllocation"] == lost["ID"]
    assert replacement["ClientStatus"] == "complete"
    assert stdout(n, replacement["ID"]) == "sleeping\n"
    assert {e["TriggeredBy"] for e in n.job.get_evaluations(child)} == {"job-register", "node-update"}
    summary = n.job.get_summary(child)["Summary"]["g"]
    assert (summary["Lost"], summary["Complete"]) == (1, 1)


def test_an_unplaceable_dispatch_gets_a_blocked_eval_and_stays_pending(n, double):
    double.inject("sleepy", "block")
    reply = dispatch(n, "sleepy", {"seconds": "0"})
    child = reply["DispatchedJobID"]
    index = 0
    for _ in range(20):
        response = n.evaluation.request(reply["EvalID"], method="get", params={"index": index, "wait": "5s"},
                                        timeout=10)
        index = int(response.headers["X-Nomad-Index"])
        if response.json()["Status"] != "pending":
            break
    evaluation = response.json()
    assert evaluation["Status"] == "complete"
    metric = evaluation["FailedTGAllocs"]["g"]
    assert metric["NodesEvaluated"] == 0 and "NodesExhausted" in metric and "DimensionExhausted" in metric
    blocked = n.evaluation.get_evaluation(evaluation["BlockedEval"])
    assert (blocked["Status"], blocked["TriggeredBy"]) == ("blocked", "queued-allocs")
    assert blocked["StatusDescription"] == "created to place remaining allocations"
    assert n.job.get_allocations(child) == []
    assert n.job.get_job(child)["Status"] == "pending"
    assert n.job.get_summary(child)["Summary"]["g"]["Queued"] == 1
    n.job.deregister_job(child)
    assert n.evaluation.get_evaluation(evaluation["BlockedEval"])["Status"] == "canceled"
    assert n.job.get_job(child)["Status"] == "dead"


def test_restart_then_reschedule_policies_are_honoured(n, double, tmp_path):
    before = double.processes_started
    child = dispatch(n, "flaky", {"marker": str(tmp_path / "runs"), "fail_times": "3"})["DispatchedJobID"]
    wait_for(n, child)
    first, second = allocs_of(n, child)
    assert first["ClientStatus"] == "failed" and first["TaskStates"]["t"]["Restarts"] == 1
    assert events(first) == ["Received", "Task Setup", "Started", "Terminated", "Restarting", "Started",
                             "Terminated", "Not Restarting"]
    reason = first["TaskStates"]["t"]["Events"][-1]["Details"]["restart_reason"]
    assert reason == 'Exceeded allowed attempts 1 in interval 24h0m0s and mode is "fail"'
    assert first["NextAllocation"] == second["ID"] and first["FollowupEvalID"]
    assert second["ClientStatus"] == "complete" and second["TaskStates"]["t"]["Restarts"] == 1
    assert second["RescheduleTracker"]["Events"][0]["PrevAllocID"] == first["ID"]
    assert double.processes_started - before == 4
    evals = sorted(n.job.get_evaluations(child), key=lambda e: e["CreateIndex"])
    triggers = [e["TriggeredBy"] for e in evals]
    assert triggers == ["job-register", "alloc-failure"]


# -- reads and errors --------------------------------------------------------------------------------------

def test_missing_objects_answer_nomads_codes(n):
    unknown = "00000000-0000-0000-0000-000000000000"
    for call, text in ((lambda: n.allocation.get_allocation(unknown), "alloc not found"),
                       (lambda: n.evaluation.get_evaluation(unknown), "eval not found"),
                       (lambda: n.job.get_job("no-such-job"), "job not found"),
                       (lambda: n.job.get_summary("no-such-job"), "job not found")):
        with pytest.raises(nx.URLNotFoundNomadException) as info:
            call()
        assert info.value.nomad_resp.text == text
        assert info.value.nomad_resp.headers["Content-Type"].startswith("text/plain")
    assert n.job.get_allocations("no-such-job") == [] and n.job.get_evaluations("no-such-job") == []
    assert n.job.deregister_job("no-such-job") == {"EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0,
                                                   "Index": 0}


def test_job_list_filters_by_prefix_and_includes_meta_when_asked(n):
    dispatch(n, "echo-meta", {"input": "listed"})
    stubs = n.jobs.get_jobs(prefix="echo-meta/dispatch-", meta=True)
    assert stubs and all(s["ParentID"] == "echo-meta" and s["ParameterizedJob"] is False for s in stubs)
    assert any(s["Meta"]["input"] == "listed" for s in stubs)
    (parent,) = n.jobs.get_jobs(prefix="echo-meta", meta=False)[:1]
    assert parent["ParameterizedJob"] is True and parent["Status"] == "running" and "Meta" not in parent


def test_hcl_is_canonicalized_with_nomads_defaults(n):
    job = n.job.get_job("sleepy")
    assert job["Type"] == "batch" and job["ParameterizedJob"]["Payload"] == "forbidden"
    assert job["Datacenters"] == ["*"] and job["Priority"] == 50 and job["Status"] == "running"
    group = job["TaskGroups"][0]
    assert group["RestartPolicy"] == {"Attempts": 0, "Delay": 15_000_000_000, "Interval": 86_400_000_000_000,
                                      "Mode": "fail", "RenderTemplates": False}
    assert group["ReschedulePolicy"]["Attempts"] == 0 and group["ReschedulePolicy"]["Delay"] == 5_000_000_000
    assert group["Tasks"][0]["KillTimeout"] == 2_000_000_000
    assert n.job.get_job("flaky")["ParameterizedJob"]["Payload"] == "optional"


def test_register_and_parse_over_http_run_a_plain_batch_job(n):
    hcl = """
job "once" {
  type = "batch"
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "python"
        args    = ["-c", "print(42)"]
      }
    }
  }
}
"""
    job = n.jobs.parse(hcl, canonicalize=True)
    assert job["ID"] == "once" and job["TaskGroups"][0]["ReschedulePolicy"]["Attempts"] == 1
    reply = n.jobs.register_job({"Job": job})
    assert reply["EvalID"] and reply["EvalCreateIndex"] == reply["Index"]
    wait_for(n, "once")
    (alloc,) = allocs_of(n, "once")
    assert stdout(n, alloc["ID"]) == "42\n"
    again = n.jobs.register_job({"Job": n.job.get_job("sleepy")})
    assert again["EvalID"] == "" and again["EvalCreateIndex"] == 0, "parameterized jobs get no eval"
    assert error_of(lambda: n.jobs.register_job({"Job": {}})).text == "Job ID hasn't been provided"


def test_json_keeps_html_characters_and_pretty_ends_with_a_newline(n):
    job = n.job.get_job("sleepy")
    job.update(ID="sleepy-html", Name="sleepy-html", Meta={"html": "a<b>&c"})
    n.jobs.register_job({"Job": job})
    raw = n.job.request("sleepy-html", method="get").content
    assert b'"html":"a<b>&c"' in raw, "Nomad's codec sets HTMLCharsAsIs"
    pretty = n.job.request("sleepy-html", method="get", params={"pretty": ""}).content
    assert pretty.startswith(b"{\n    ") and pretty.endswith(b"}\n")
    assert n.job.request("sleepy-html", method="get", params={"pretty": "0"}).content == raw


def test_acl_token_is_required_when_acls_are_on():
    with NomadDouble(acl_token="secret") as server:
        anonymous = nomad.Nomad(address=server.address, timeout=5)
        response = error_of(lambda: anonymous.jobs.get_jobs())
        assert (response.status_code, response.text) == (403, "Permission denied")
        wrong = nomad.Nomad(address=server.address, token="wrong", timeout=5)
        assert error_of(lambda: wrong.jobs.get_jobs()).text == "ACL token not found"
        assert nomad.Nomad(address=server.address, token="secret", timeout=5).jobs.get_jobs() == []
