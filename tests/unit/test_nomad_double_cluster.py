"""The Nomad double behaves like a real cluster on a bad day: leader loss, full and unsuitable nodes, job GC and
the dispatch-idempotency race of each Nomad version. Driven through python-nomad and requests, as production is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from nomad.api import exceptions as nx

import nomad

from ..doubles.nomad import NomadDouble
from ..servers import poll_until

# A batch job that holds its resources until its gate file exists (the test opens it), then exits 0.
GATED = """
job "%(id)s" {
  type = "batch"
  %(job_extra)s
  parameterized {
    meta_required = ["gate"]
  }
  group "g" {
    restart {
      attempts = 0
      mode     = "fail"
    }
    reschedule {
      attempts  = 0
      unlimited = false
    }
    task "t" {
      driver = "raw_exec"
      %(task_extra)s
      resources {
        cpu    = 500
        memory = %(memory)d
      }
      config {
        command = "python3"
        args    = ["-c", "%(wait)s", "${NOMAD_META_gate}"]
      }
    }
  }
}
"""


WAIT = "import os, sys, time\\nwhile not os.path.exists(sys.argv[1]):\\n    time.sleep(0.02)"


def gated(job_id: str, memory: int = 400, job_extra: str = "", task_extra: str = "") -> str:
    return GATED % {"id": job_id, "memory": memory, "job_extra": job_extra, "task_extra": task_extra, "wait": WAIT}


@pytest.fixture
def make(tmp_path: Path) -> Iterator[Any]:
    """Start doubles with the given arguments; every one is stopped at the end."""
    started: list[NomadDouble] = []

    def start(**kwargs: Any) -> tuple[NomadDouble, nomad.Nomad]:
        double = NomadDouble(kill_timeout_s=1.0, **kwargs)
        double.start()
        started.append(double)
        return double, nomad.Nomad(address=double.address, timeout=10)

    yield start
    for double in started:
        double.stop()


def dispatch(n: nomad.Nomad, job: str, meta: dict[str, str], token: str | None = None) -> dict[str, Any]:
    params = {"idempotency_token": token} if token else {}
    return n.job.request(job, "dispatch", params=params, json={"Meta": meta}, method="post").json()


def job_status(n: nomad.Nomad, job_id: str) -> str:
    return str(n.job.get_job(job_id)["Status"])


def wait_status(n: nomad.Nomad, job_id: str, status: str, timeout_s: float = 15) -> None:
    poll_until(lambda: job_status(n, job_id) == status, timeout_s, f"{job_id} {status}")


def api_up(n: nomad.Nomad) -> bool:
    try:
        n.jobs.get_jobs()
    except nx.BaseNomadException:
        return False
    return True


def first_eval(n: nomad.Nomad, job_id: str) -> dict[str, Any]:
    return min(n.job.get_evaluations(job_id), key=lambda e: e["CreateIndex"])


def children(n: nomad.Nomad, parent: str) -> list[dict[str, Any]]:
    return [j for j in n.jobs.get_jobs(prefix=f"{parent}/") if j["ParentID"] == parent]


# -- leader loss ---------------------------------------------------------------------------------------------

def test_a_leader_loss_window_answers_500_no_cluster_leader_then_ends(make):
    double, n = make()
    double.load_hcl(gated("work"))
    double.leader_loss(0.5)
    with pytest.raises(nx.BaseNomadException) as info:
        n.jobs.get_jobs()
    response = info.value.nomad_resp
    assert (response.status_code, response.text) == (500, "No cluster leader")
    assert response.headers["Content-Type"].startswith("text/plain")
    raw = requests.post(f"{double.address}/v1/job/work/dispatch", json={"Meta": {"gate": "x"}}, timeout=5)
    assert (raw.status_code, raw.text) == (500, "No cluster leader")
    poll_until(lambda: api_up(n), 5, "the API after the window")
    assert children(n, "work") == [], "nothing was applied during the window"
    assert double.stats["no_leader_answers"] >= 2


def test_dropped_connections_alternate_with_500s(make):
    double, _ = make()
    double.leader_loss(30, drop_connections=True)
    outcomes = []
    for _ in range(4):
        try:
            outcomes.append(requests.get(f"{double.address}/v1/jobs", timeout=5).status_code)
        except requests.ConnectionError:
            outcomes.append("dropped")
    assert outcomes == ["dropped", 500, "dropped", 500]
    assert double.stats["dropped_connections"] == 2


def test_an_ambiguous_dispatch_is_applied_though_its_caller_gets_no_answer(make, tmp_path):
    double, n = make()
    double.load_hcl(gated("work"))
    double.leader_loss(0.5, after="dispatch", drop_connections=True)
    gate = tmp_path / "open"
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{double.address}/v1/job/work/dispatch", params={"idempotency_token": "tok"},
                      json={"Meta": {"gate": str(gate)}}, timeout=5)
    assert double.stats["dispatches"] == 1
    poll_until(lambda: api_up(n), 5, "the API after the window")
    (child,) = children(n, "work")
    assert n.job.get_job(child["ID"])["DispatchIdempotencyToken"] == "tok"
    poll_until(lambda: double.processes_started == 1, 10, "the child's process")
    gate.touch()
    wait_status(n, child["ID"], "dead")
    again = dispatch(n, "work", {"gate": str(gate)}, token="tok")
    assert again["DispatchedJobID"] == child["ID"], "a retry with the token finds the applied child"


def test_the_cluster_keeps_working_during_a_window_opened_by_a_running_task(make, tmp_path):
    double, n = make()
    double.load_hcl(gated("work"))
    double.leader_loss(30, after="running")
    gate = tmp_path / "open"
    child = dispatch(n, "work", {"gate": str(gate)})["DispatchedJobID"]
    poll_until(lambda: double.processes_started == 1, 10, "the child's process")
    with pytest.raises(nx.BaseNomadException) as info:
        n.job.get_job(child)
    assert info.value.nomad_resp.status_code == 500
    gate.touch()
    # The task finishes while the API is down: the state moves on underneath.
    poll_until(lambda: double._jobs[("default", child)].job["Status"] == "dead", 10, "the child dead")
    assert not api_up(n), "still inside the window"


def test_a_window_after_placement_opens_when_the_alloc_is_placed(make, tmp_path):
    double, n = make()
    double.load_hcl(gated("work"))
    double.leader_loss(30, after="placement")
    dispatch(n, "work", {"gate": str(tmp_path / "open")})
    poll_until(lambda: not api_up(n), 10, "the window after placement")


def test_leader_loss_arguments_are_checked(make):
    double, _ = make()
    with pytest.raises(ValueError, match="after must be one of"):
        double.leader_loss(1, after="eval")
    with pytest.raises(ValueError, match="positive"):
        double.leader_loss(0)


# -- capacity and constraints ------------------------------------------------------------------------------

def test_a_full_node_blocks_the_eval_until_capacity_frees(make, tmp_path):
    double, n = make(nodes=[{"cpu": 4000, "memory": 512}])
    double.load_hcl(gated("work", memory=400))
    first_gate, second_gate = tmp_path / "first", tmp_path / "second"
    first = dispatch(n, "work", {"gate": str(first_gate)})["DispatchedJobID"]
    wait_status(n, first, "running")
    second = dispatch(n, "work", {"gate": str(second_gate)})["DispatchedJobID"]
    poll_until(lambda: first_eval(n, second)["Status"] == "complete", 10, "the second eval")
    ev = first_eval(n, second)
    metric = ev["FailedTGAllocs"]["g"]
    assert metric["NodesEvaluated"] == 1 and metric["NodesFiltered"] == 0
    assert metric["NodesExhausted"] == 1 and metric["DimensionExhausted"] == {"memory": 1}
    assert metric["NodesAvailable"] == {"dc1": 1} and metric["ConstraintFiltered"] is None
    blocked = n.evaluation.get_evaluation(ev["BlockedEval"])
    assert (blocked["Status"], blocked["TriggeredBy"]) == ("blocked", "queued-allocs")
    assert job_status(n, second) == "pending" and n.job.get_allocations(second) == []
    assert n.job.get_summary(second)["Summary"]["g"]["Queued"] == 1

    first_gate.touch()  # the first step finishes: its memory is free again
    wait_status(n, second, "running")
    (alloc,) = n.job.get_allocations(second)
    assert alloc["EvalID"] == ev["BlockedEval"]
    assert n.evaluation.get_evaluation(ev["BlockedEval"])["Status"] == "complete"
    assert first_eval(n, second)["FailedTGAllocs"] == ev["FailedTGAllocs"], "the old eval keeps its failure"
    second_gate.touch()
    wait_status(n, second, "dead")
    assert n.job.get_summary(second)["Summary"]["g"]["Complete"] == 1
    assert double.processes_started == 2


def test_an_ask_larger_than_any_node_exhausts_a_dimension(make):
    double, n = make(nodes=[{"cpu": 4000, "memory": 512}, {"cpu": 4000, "memory": 1024, "class": "big"}])
    double.load_hcl(gated("huge", memory=4096))
    child = dispatch(n, "huge", {"gate": "/nonexistent"})["DispatchedJobID"]
    poll_until(lambda: first_eval(n, child)["Status"] == "complete", 10, "the eval")
    metric = first_eval(n, child)["FailedTGAllocs"]["g"]
    assert metric["NodesExhausted"] == 2 and metric["DimensionExhausted"] == {"memory": 2}
    assert metric["ClassExhausted"] == {"big": 1}


def test_a_constraint_no_node_meets_never_places(make, tmp_path):
    nodes = [{"memory": 1024, "class": "small"}, {"memory": 4096, "class": "big", "meta": {"gpu": "a100"}}]
    double, n = make(nodes=nodes)
    impossible = 'constraint {\n    attribute = "${attr.kernel.name}"\n    value     = "plan9"\n  }'
    double.load_hcl(gated("never", job_extra=impossible))
    gpu = 'constraint {\n        attribute = "${meta.gpu}"\n        operator  = "is_set"\n      }'
    double.load_hcl(gated("gpu", task_extra=gpu))
    child = dispatch(n, "never", {"gate": "/nonexistent"})["DispatchedJobID"]
    poll_until(lambda: first_eval(n, child)["Status"] == "complete", 10, "the eval")
    ev = first_eval(n, child)
    metric = ev["FailedTGAllocs"]["g"]
    assert metric["ConstraintFiltered"] == {"${attr.kernel.name} = plan9": 2}
    assert metric["ClassFiltered"] == {"small": 1, "big": 1}
    assert (metric["NodesEvaluated"], metric["NodesFiltered"], metric["NodesExhausted"]) == (2, 2, 0)
    assert n.evaluation.get_evaluation(ev["BlockedEval"])["Status"] == "blocked"

    gate = tmp_path / "gate"
    gate.touch()
    placed = dispatch(n, "gpu", {"gate": str(gate)})["DispatchedJobID"]
    wait_status(n, placed, "dead")  # capacity frees: the blocked eval is tried again, and still fits nowhere
    (alloc,) = n.job.get_allocations(placed)
    assert n.allocation.get_allocation(alloc["ID"])["NodeName"] == double.nodes[1]["Name"]
    poll_until(lambda: not double._unblock_queued, 5, "the unblock pass")
    assert n.job.get_allocations(child) == [] and job_status(n, child) == "pending"
    assert n.evaluation.get_evaluation(ev["BlockedEval"])["Status"] == "blocked"


def test_a_datacenter_without_nodes_evaluates_none(make):
    double, n = make()
    double.load_hcl(gated("elsewhere", job_extra='datacenters = ["eu-*"]'))
    child = dispatch(n, "elsewhere", {"gate": "/nonexistent"})["DispatchedJobID"]
    poll_until(lambda: first_eval(n, child)["Status"] == "complete", 10, "the eval")
    metric = first_eval(n, child)["FailedTGAllocs"]["g"]
    assert (metric["NodesInPool"], metric["NodesEvaluated"], metric["NodesAvailable"]) == (0, 0, {})


def test_unknown_node_keys_are_refused():
    with pytest.raises(ValueError, match="unknown keys"):
        NomadDouble(nodes=[{"ram": 1}])


# -- job GC ------------------------------------------------------------------------------------------------

def test_gc_purges_the_oldest_dead_children_and_keeps_live_ones(make, tmp_path):
    double, n = make()
    double.load_hcl(gated("work"))
    open_gate = tmp_path / "open"
    open_gate.touch()
    old = [dispatch(n, "work", {"gate": str(open_gate)}, token=f"t{i}")["DispatchedJobID"] for i in range(2)]
    for child in old:
        wait_status(n, child, "dead")
    cutoff_ns = time.time_ns()
    poll_until(lambda: time.time_ns() > cutoff_ns, 1, "the clock to move")
    newer = dispatch(n, "work", {"gate": str(open_gate)}, token="t2")["DispatchedJobID"]
    wait_status(n, newer, "dead")
    live = dispatch(n, "work", {"gate": str(tmp_path / "closed")})["DispatchedJobID"]
    wait_status(n, live, "running")
    old_alloc = n.job.get_allocations(old[0])[0]["ID"]

    assert double.gc() == [], "nothing is older than the 4 h default threshold"
    purged = double.gc(threshold_s=(time.time_ns() - cutoff_ns) / 1e9)
    assert purged == old, "the children submitted before the cutoff, oldest first"
    for child in old:
        with pytest.raises(nx.URLNotFoundNomadException):
            n.job.get_job(child)
    with pytest.raises(nx.URLNotFoundNomadException):
        n.allocation.get_allocation(old_alloc)
    assert {j["ID"] for j in children(n, "work")} == {newer, live}
    assert n.job.get_summary("work")["Children"] == {"Pending": 0, "Running": 1, "Dead": 1}

    assert n.system.initiate_garbage_collection()  # forced: every dead child, whatever its age
    assert {j["ID"] for j in children(n, "work")} == {live}
    assert double.stats["gc_purged"] == 3
    reused = dispatch(n, "work", {"gate": str(open_gate)}, token="t0")
    assert reused["DispatchedJobID"] not in old and reused["EvalID"], "a collected token dispatches anew"


# -- the dispatch-idempotency race --------------------------------------------------------------------------

def race(double: NomadDouble, token: str, gate: Path) -> list[Any]:
    """Two threads dispatch one token at once; their answers (or exceptions), in thread order."""
    barrier = threading.Barrier(2)
    outcomes: list[Any] = [None, None]

    def worker(slot: int) -> None:
        try:
            barrier.wait(timeout=5)
            response = requests.post(f"{double.address}/v1/job/work/dispatch", params={"idempotency_token": token},
                                     json={"Meta": {"gate": str(gate)}}, timeout=10)
            outcomes[slot] = response.json() if response.ok else response
        except Exception as exc:  # recorded, asserted in the main thread
            outcomes[slot] = exc

    threads = [threading.Thread(target=worker, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    return outcomes


def test_before_1_11_2_a_racing_token_creates_two_children(make, tmp_path):
    double, n = make(dispatch_idempotency="1.11.1", dispatch_race_window_s=0.3)
    double.load_hcl(gated("work"))
    outcomes = race(double, "same", tmp_path / "gate")
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    ids = {o["DispatchedJobID"] for o in outcomes}
    assert len(ids) == 2
    for child in ids:
        assert n.job.get_job(child)["DispatchIdempotencyToken"] == "same"
    assert double.stats["dispatches"] == 2


def test_from_1_11_2_the_loser_gets_ids_that_never_exist(make, tmp_path):
    double, n = make(dispatch_idempotency="1.11.2", dispatch_race_window_s=0.3)
    double.load_hcl(gated("work"))
    outcomes = race(double, "same", tmp_path / "gate")
    assert all(isinstance(o, dict) for o in outcomes), outcomes
    assert len({o["DispatchedJobID"] for o in outcomes}) == 2, "both callers are told of a new child"
    (winner,) = children(n, "work")
    (loser,) = [o for o in outcomes if o["DispatchedJobID"] != winner["ID"]]
    assert loser["EvalID"] and loser["Index"] > 0
    with pytest.raises(nx.URLNotFoundNomadException):
        n.job.get_job(loser["DispatchedJobID"])
    with pytest.raises(nx.URLNotFoundNomadException):
        n.evaluation.get_evaluation(loser["EvalID"])
    assert double.stats["dispatches"] == 1 and double.stats["duplicate_dispatches_dropped"] == 1
    again = dispatch(n, "work", {"gate": "x"}, token="same")
    assert again["DispatchedJobID"] == winner["ID"] and again["EvalID"] == ""


def test_without_a_race_window_one_token_gives_one_child_on_either_version(make, tmp_path):
    for version in ("1.11.1", "1.11.2"):
        double, n = make(dispatch_idempotency=version)
        double.load_hcl(gated("work"))
        outcomes = race(double, "same", tmp_path / "gate")
        assert all(isinstance(o, dict) for o in outcomes), outcomes
        assert len({o["DispatchedJobID"] for o in outcomes}) == 1, version
        assert len(children(n, "work")) == 1


def test_python_nomads_body_token_is_ignored(make):
    double, n = make()
    double.load_hcl(gated("work"))
    first = n.job.dispatch_job("work", meta={"gate": "x"}, idempotency_token="same")
    second = n.job.dispatch_job("work", meta={"gate": "x"}, idempotency_token="same")
    assert first["DispatchedJobID"] != second["DispatchedJobID"]
    assert n.job.get_job(second["DispatchedJobID"])["DispatchIdempotencyToken"] == ""


def test_an_unknown_idempotency_version_is_refused():
    with pytest.raises(ValueError, match="dispatch_idempotency"):
        NomadDouble(dispatch_idempotency="1.12")


# -- counters ------------------------------------------------------------------------------------------------

def test_stats_count_requests_dispatches_stops_and_processes(make, tmp_path):
    double, n = make()
    double.load_hcl(gated("work"))
    gate = tmp_path / "gate"
    gate.touch()
    child = dispatch(n, "work", {"gate": str(gate)})["DispatchedJobID"]
    wait_status(n, child, "dead")
    n.job.deregister_job(child)
    stats = double.stats
    assert (stats["dispatches"], stats["stops"], stats["processes_started"]) == (1, 1, 1)
    assert stats["requests"] == len(double.requests)
