"""Thompson sampling (caravan.experiments.bandit): weights follow the evidence, equal arms stay even, floor holds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from caravan.experiments.bandit import period_seed, prob_best, success_interval, thompson_weights

counts = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True),
                         st.tuples(st.integers(0, 5000), st.integers(0, 5000)), min_size=1, max_size=5)


def simulate(rates: dict[str, float], periods: int, per_period: int, seed: int) -> list[dict[str, float]]:
    """Arms with known success rates; each period's traffic split by the weights the last period computed."""
    rng = np.random.default_rng(seed)
    names = sorted(rates)
    weights = {n: 1 / len(names) for n in names}
    seen = {n: (0, 0) for n in names}
    history = []
    for period in range(periods):
        served = rng.multinomial(per_period, [weights[n] for n in names])
        for name, n in zip(names, served, strict=True):
            wins = int(rng.binomial(n, rates[name]))
            s, f = seen[name]
            seen[name] = (s + wins, f + int(n) - wins)
        weights = thompson_weights(seen, draws=4000, rng=period_seed("salt", period))
        history.append(weights)
    return history


def test_the_better_arm_gains_traffic():
    history = simulate({"control": 0.05, "challenger": 0.08}, periods=12, per_period=2000, seed=1)
    shares = [w["challenger"] for w in history]
    assert shares[-1] > 0.9
    assert np.mean(shares[-3:]) > np.mean(shares[:3])


def test_the_best_of_three_gains_traffic_and_the_others_keep_the_floor():
    history = simulate({"a": 0.05, "b": 0.06, "c": 0.09}, periods=12, per_period=3000, seed=2)
    assert history[-1]["c"] > 0.85
    assert min(history[-1].values()) >= 0.05 - 1e-12


def test_equal_arms_stay_near_equal():
    # Between equal arms P(best) wanders (under no difference it is uniform on [0, 1] in any one run), so
    # "near equal" is a statement over runs: no arm is favoured, and pooled traffic splits evenly.
    finals, pooled = [], []
    for seed in range(40):
        history = simulate({"a": 0.05, "b": 0.05}, periods=8, per_period=2000, seed=100 + seed)
        finals.append(history[-1]["a"])
        pooled.extend(w["a"] for w in history)
    assert 0.4 < np.mean(finals) < 0.6
    assert 0.42 < np.mean(pooled) < 0.58
    assert np.mean(np.abs(np.array(finals) - 0.5) > 0.45) < 0.25, "equal arms must rarely run away"


@settings(max_examples=50, deadline=None)
@given(counts=counts, floor=st.floats(0.0, 0.2), seed=st.integers(0, 2**32))
def test_weights_sum_to_one_and_never_fall_below_the_floor(counts, floor, seed):
    if floor * len(counts) > 1:
        with pytest.raises(ValueError, match="min_weight"):
            thompson_weights(counts, min_weight=floor, draws=500, rng=seed)
        return
    weights = thompson_weights(counts, min_weight=floor, draws=500, rng=seed)
    assert set(weights) == set(counts)
    assert abs(sum(weights.values()) - 1) < 1e-9
    assert min(weights.values()) >= floor - 1e-12


def test_a_hopeless_arm_keeps_exactly_the_floor():
    weights = thompson_weights({"good": (500, 500), "bad": (0, 1000)}, min_weight=0.05, rng=0)
    assert weights["bad"] == pytest.approx(0.05)
    assert weights["good"] == pytest.approx(0.95)


def test_same_counts_and_seed_give_the_same_weights_in_any_arm_order():
    one = thompson_weights({"a": (40, 960), "b": (46, 954)}, rng=period_seed("s", 7))
    two = thompson_weights({"b": (46, 954), "a": (40, 960)}, rng=period_seed("s", 7))
    assert one == two
    assert one != thompson_weights({"a": (40, 960), "b": (46, 954)}, rng=period_seed("s", 8))


def test_prob_best_matches_the_exact_two_arm_answer():
    # With Beta(1, 1) priors and no data each arm is best half the time; with clear data the leader is sure.
    even = prob_best({"a": (0, 0), "b": (0, 0)}, draws=40000, rng=0)
    assert even["a"] == pytest.approx(0.5, abs=0.01)
    clear = prob_best({"a": (100, 900), "b": (200, 800)}, draws=40000, rng=0)
    assert clear["b"] > 0.999


@settings(max_examples=100, deadline=None)
@given(s=st.integers(0, 10_000), f=st.integers(0, 10_000))
@example(s=108, f=0)  # p = 1: rounding once put the upper bound just below the observed rate
def test_the_interval_holds_the_rate_and_narrows_with_data(s, f):
    low, high = success_interval(s, f)
    assert 0 <= low <= high <= 1
    if s + f:
        assert low <= s / (s + f) <= high
        wider_low, wider_high = success_interval(s // 10, f // 10) if (s // 10 + f // 10) else (0.0, 1.0)
        assert high - low <= wider_high - wider_low + 1e-12


def test_the_interval_covers_the_true_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(9)
    hits = 0
    for _ in range(2000):
        s = int(rng.binomial(800, 0.3))
        low, high = success_interval(s, 800 - s)
        hits += low <= 0.3 <= high
    assert 0.93 < hits / 2000 < 0.97
