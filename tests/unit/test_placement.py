"""Placement verdicts from FailedTGAllocs and a child's current evaluations and allocations."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from caravan.executors.placement import CAPACITY, FAILED, IMPOSSIBLE, PENDING, PLACED, classify_failures, judge

counts = st.integers(min_value=0, max_value=50)
names = st.text("abcdefgh${}.= ", min_size=1, max_size=20)


def metric(exhausted=0, dims=None, constraints=None, classes=None, available=None, evaluated=1, quota=None):
    return {"NodesEvaluated": evaluated, "NodesFiltered": evaluated - exhausted, "NodesExhausted": exhausted,
            "DimensionExhausted": dims, "ConstraintFiltered": constraints, "ClassFiltered": classes,
            "NodesAvailable": available if available is not None else {"dc1": evaluated}, "QuotaExhausted": quota}


@given(st.integers(min_value=1, max_value=50), st.dictionaries(st.sampled_from(["memory", "cpu", "disk"]), counts),
       st.one_of(st.none(), st.dictionaries(names, counts, max_size=3)))
@example(3, {"memory": 3}, None)
def test_any_node_with_no_room_means_wait_for_capacity(exhausted, dims, constraints):
    state, reason = classify_failures({"step": metric(exhausted, dims, constraints)})
    assert state == CAPACITY
    for dim, n in dims.items():
        if n:
            assert f"{dim} exhausted on {n} node" in reason


def test_the_reason_reads_like_a_sentence():
    assert classify_failures({"step": metric(3, {"memory": 3})}) == (
        CAPACITY, "group 'step': memory exhausted on 3 nodes")


@given(st.dictionaries(names, st.integers(min_value=1, max_value=9), min_size=1, max_size=3))
@example({"${attr.kernel.name} = windows": 1})
@example({"missing drivers": 2})
def test_every_node_filtered_by_a_constraint_is_impossible_and_names_it(constraints):
    state, reason = classify_failures({"step": metric(0, None, constraints)})
    assert state == IMPOSSIBLE
    assert all(f"constraint {c} filtered" in reason for c in constraints)


def test_no_node_in_the_datacenter_and_a_filtered_class_are_impossible():
    assert classify_failures({"g": metric(available={"dc9": 0}, evaluated=0)}) == (
        IMPOSSIBLE, "group 'g': no eligible node: no ready node in datacenter dc9")
    state, reason = classify_failures({"g": metric(classes={"gpu": 2}, evaluated=2)})
    assert state == IMPOSSIBLE and "node class 'gpu' filtered 2 nodes" in reason


def test_one_impossible_group_makes_the_job_impossible():
    state, reason = classify_failures({"a": metric(2, {"memory": 2}), "b": metric(constraints={"x = y": 1})})
    assert state == IMPOSSIBLE and "group 'b'" in reason and "group 'a'" not in reason


def test_a_quota_is_capacity():
    assert classify_failures({"g": metric(quota=["team-quota"])})[0] == CAPACITY


def evals_of_a_full_cluster(blocked_status="blocked"):
    first = {"ID": "e1", "Status": "complete", "CreateIndex": 5, "ModifyIndex": 6, "BlockedEval": "e2",
             "FailedTGAllocs": {"step": metric(1, {"memory": 1})}}
    blocked = {"ID": "e2", "Status": blocked_status, "CreateIndex": 6, "ModifyIndex": 9, "PreviousEval": "e1",
               "FailedTGAllocs": None}
    return [first, blocked]


def test_a_blocked_eval_is_judged_by_the_metrics_of_the_eval_that_made_it():
    verdict = judge(evals_of_a_full_cluster(), [])
    assert verdict.state == CAPACITY and verdict.eval_id == "e2" and "memory exhausted on 1 node" in verdict.reason


def test_an_old_evals_failures_do_not_count_once_the_blocked_eval_placed_the_job():
    assert judge(evals_of_a_full_cluster("complete"), [{"ID": "a1", "ClientStatus": "running"}]).state == PLACED


def test_pending_failed_and_no_news():
    assert judge([], []).state == PENDING
    pending = judge([{"ID": "e1", "Status": "pending", "CreateIndex": 1}], [])
    assert pending.state == PENDING and pending.eval_id == "e1"
    failed = judge([{"ID": "e1", "Status": "failed", "StatusDescription": "maximum attempts reached (5)"}], [])
    assert failed.state == FAILED and "maximum attempts" in failed.reason


old_failure = st.builds(lambda i, exhausted, filtered: {
    "ID": f"old{i}", "Status": "complete", "CreateIndex": i, "ModifyIndex": i + 1, "BlockedEval": f"b{i}",
    "FailedTGAllocs": {"step": metric(exhausted, {"memory": exhausted} if exhausted else None,
                                      None if exhausted else {"x = y": filtered})}},
    st.integers(min_value=1, max_value=100), st.integers(min_value=0, max_value=3), st.integers(1, 3))


@given(st.lists(old_failure, max_size=5), st.lists(st.sampled_from(["running", "complete", "failed"]), min_size=1,
                                                   max_size=3))
def test_a_child_with_allocations_and_no_blocked_eval_is_placed_whatever_old_evals_say(evals, statuses):
    allocs = [{"ID": f"a{i}", "ClientStatus": s} for i, s in enumerate(statuses)]
    assert judge(evals, allocs).state == PLACED
