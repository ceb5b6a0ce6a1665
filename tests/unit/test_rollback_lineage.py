"""Rollback walks the history: any sequence of promotions and rollbacks matches a plain stack of models."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from caravan.registry.base import NothingToRollBack, PointerState, floor_models, lineage, rollback_target

_steps = st.lists(st.one_of(st.tuples(st.just("promote"), st.sampled_from("ABCDE")), st.just(("rollback",))),
                  max_size=30)


def replay(steps: list[tuple[str, ...]]) -> tuple[list[dict], PointerState, list[str], list[str]]:
    """Apply ``steps`` as the CLI does; also to a plain stack of names (the oracle). Returns both."""
    history: list[dict] = []
    state = PointerState(None, 0)
    oracle: list[str] = []
    refused: list[str] = []
    for number, step in enumerate(steps):
        change_id = f"{number:06d}"
        if step[0] == "promote":
            name = step[1]
            if oracle and oracle[-1] == name:
                continue  # re-promoting the current model is a no-op: no entry
            oracle.append(name)
            entry = {"action": "promote", "artifact_id": name, "artifact_uri": f"file:///a/{name}",
                     "change_id": change_id}
        else:
            try:
                target, undone = rollback_target("m", state, history)
            except NothingToRollBack:
                refused.append(change_id)
                assert len(oracle) < 2
                continue
            oracle.pop()
            entry = {"action": "rollback", "artifact_id": target["artifact_id"],
                     "artifact_uri": target["artifact_uri"], "target_change_id": target["change_id"],
                     "rolled_back": undone, "change_id": change_id}
        history.append(entry)
        state = PointerState(entry, number + 1)
    return history, state, oracle, refused


@given(_steps)
def test_rollbacks_go_back_along_the_lineage_never_forward(steps):
    history, state, oracle, _ = replay(steps)
    assert (state.artifact_id if state.document else None) == (oracle[-1] if oracle else None)
    stack, rolled_back = lineage(history)
    assert [e["artifact_id"] for e in stack] == oracle
    assert not {e["change_id"] for e in stack} & rolled_back, "a rolled-back entry is never on the lineage"


@given(_steps, st.integers(min_value=1, max_value=12))
def test_the_floor_never_counts_a_rolled_back_promotion(steps, window):
    history, _, _, _ = replay(steps)
    _, rolled_back = lineage(history)
    floor = floor_models(history, window)
    promotions = [e for e in history if e["action"] == "promote"][-window:]
    kept = {e["artifact_id"] for e in promotions if e["change_id"] not in rolled_back}
    assert set(floor) == kept and len(floor) == len(set(floor))


def test_promote_a_b_c_then_rollback_twice_reaches_a_and_then_nothing_earlier():
    steps = [("promote", "A"), ("promote", "B"), ("promote", "C"), ("rollback",), ("rollback",), ("rollback",)]
    history, state, _, refused = replay(steps)
    assert state.artifact_id == "A"
    assert refused == ["000005"]
    _, rolled_back = lineage(history)
    assert rolled_back == {"000001", "000002"}
