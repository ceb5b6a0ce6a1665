"""Sticky assignment (caravan.experiments.assign): deterministic, sticky, uniform, and moving few units."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare

from caravan.experiments.assign import assign, moved_share, uniform

# Derandomized: the statistical checks below use fixed examples, so they pass or fail the same way every run.
FAST = settings(max_examples=25, deadline=None, derandomize=True)
UNITS = [f"user-{i}" for i in range(3000)]
names = st.lists(st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True), min_size=2, max_size=4, unique=True)
weights = st.floats(min_value=0.05, max_value=10.0, allow_nan=False)


@st.composite
def arms(draw: st.DrawFn) -> list[tuple[str, float]]:
    arm_names = draw(names)
    return [(n, draw(weights)) for n in arm_names]


@FAST
@given(salt=st.text(max_size=12), unit=st.text(max_size=20), arms=arms(), seed=st.integers(0, 2**32))
def test_assignment_is_deterministic_and_ignores_arm_order_and_weight_scale(salt, unit, arms, seed):
    first = assign(salt, unit, arms)
    assert first in {name for name, _ in arms}
    shuffled = list(arms)
    random.Random(seed).shuffle(shuffled)
    assert assign(salt, unit, shuffled) == first
    assert assign(salt, unit, [(n, w * 100) for n, w in arms]) == first


@FAST
@given(salt=st.text(max_size=12), arms=arms())
def test_units_stick_to_their_arm_while_weights_hold(salt, arms):
    before = {u: assign(salt, u, arms) for u in UNITS[:500]}
    # Other units come and go in between (a gateway serves everyone): nobody's arm depends on them.
    for u in reversed(UNITS):
        assign(salt, u, arms)
    assert {u: assign(salt, u, arms) for u in UNITS[:500]} == before


@FAST
@given(salt=st.text(max_size=12), arm=st.text(max_size=8))
def test_the_hash_is_uniform(salt, arm):
    bins = [0] * 20
    for u in UNITS:
        bins[int(uniform(salt, arm, u) * 20)] += 1
    assert chisquare(bins).pvalue > 1e-4


@FAST
@given(salt=st.text(max_size=12), arms=arms())
def test_arms_get_their_weight_share_of_units(salt, arms):
    total = sum(w for _, w in arms)
    got = {n: 0 for n, _ in arms}
    for u in UNITS:
        got[assign(salt, u, arms)] += 1
    expected = [len(UNITS) * w / total for _, w in arms]
    assert chisquare([got[n] for n, _ in arms], expected).pvalue > 1e-4


def _moved(salt: str, old: list[tuple[str, float]], new: list[tuple[str, float]]) -> list[tuple[str, str]]:
    pairs = [(assign(salt, u, old), assign(salt, u, new)) for u in UNITS]
    return [(a, b) for a, b in pairs if a != b]


def _tolerance(p: float) -> float:
    """Five binomial standard deviations of a share over len(UNITS) units."""
    return 5 * (max(p * (1 - p), 1e-4) / len(UNITS)) ** 0.5


@FAST
@given(salt=st.text(max_size=12), p=st.floats(0.05, 0.95), q=st.floats(0.05, 0.95))
def test_a_two_arm_shift_of_delta_moves_delta_of_the_units_one_way(salt, p, q):
    old, new = [("a", p), ("b", 1 - p)], [("a", q), ("b", 1 - q)]
    delta = abs(p - q)
    assert abs(moved_share([p, 1 - p], [q, 1 - q]) - delta) < 1e-12
    moved = _moved(salt, old, new)
    assert len(moved) / len(UNITS) <= delta + _tolerance(delta)
    # Only the range that changed hands moves: everyone moves toward the arm that gained weight.
    gainer = "a" if q > p else "b"
    assert all(b == gainer for _, b in moved)


@FAST
@given(salt=st.text(max_size=12), old=arms(), data=st.data())
def test_a_weight_change_of_delta_moves_at_most_its_bound(salt, old, data):
    new = [(n, data.draw(weights)) for n, _ in old]
    x = [w / sum(w for _, w in old) for _, w in old]
    y = [w / sum(w for _, w in new) for _, w in new]
    delta = sum(abs(a - b) for a, b in zip(x, y, strict=True)) / 2  # total variation: traffic that changed arms
    bound = moved_share(x, y)
    assert bound <= 2 * delta / (1 + delta) + 1e-12  # the best any stateless rule can promise with k >= 3
    if len(old) == 2:
        assert abs(bound - delta) < 1e-12
    assert len(_moved(salt, old, new)) / len(UNITS) <= bound + _tolerance(bound)


def test_an_arm_at_weight_zero_gets_nobody_and_adding_an_arm_moves_only_its_winners():
    two = [("a", 1.0), ("b", 1.0)]
    three = [*two, ("c", 1.0)]
    assert all(assign("s", u, [("a", 1.0), ("b", 0.0)]) == "a" for u in UNITS[:300])
    for u in UNITS[:1000]:
        after = assign("s", u, three)
        assert after in ("c", assign("s", u, two))
