"""Thompson sampling over Bernoulli rewards, as plain functions (no I/O, no clock: tests drive them directly).

Each arm's success rate has a Beta(1 + successes, 1 + failures) posterior. An arm's weight is its
probability of being the best arm under these posteriors (Monte Carlo, ``draws`` samples per arm),
lifted to a floor so that no arm starves before the experiment ends:
``w_i = floor + (1 - k * floor) * P(best_i)``, so every weight is at least the floor and they sum to 1.

Gateways that share merged counters and seed their generators alike (:func:`period_seed`) compute the
same weights.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import numpy as np

#: The two-sided 95% normal quantile.
Z95 = 1.959963984540054


def _generator(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def period_seed(salt: str, period: int) -> int:
    """A seed every gateway derives alike for update period ``period`` of the experiment with ``salt``."""
    return int.from_bytes(hashlib.sha256(f"{salt}\x1f{period}".encode()).digest()[:8], "big")


def prob_best(counts: Mapping[str, tuple[int, int]], draws: int = 20000,
              rng: np.random.Generator | int | None = None) -> dict[str, float]:
    """Each arm's probability of having the highest success rate, under Beta(1 + s, 1 + f) posteriors."""
    names = sorted(counts)
    if not names:
        return {}
    if draws < 1:
        raise ValueError(f"draws must be at least 1, not {draws}")
    generator = _generator(rng)
    s = np.array([counts[n][0] for n in names], dtype=np.float64)
    f = np.array([counts[n][1] for n in names], dtype=np.float64)
    samples = generator.beta(1.0 + s, 1.0 + f, size=(draws, len(names)))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=len(names))
    return {name: float(w) / draws for name, w in zip(names, wins, strict=True)}


def thompson_weights(counts: Mapping[str, tuple[int, int]], *, draws: int = 20000, min_weight: float = 0.05,
                     rng: np.random.Generator | int | None = None) -> dict[str, float]:
    """Traffic weights: each arm's probability of being best, every one lifted to at least ``min_weight``."""
    k = len(counts)
    if k and not 0.0 <= min_weight * k <= 1.0:
        raise ValueError(f"min_weight {min_weight:g} is impossible with {k} arms (k * min_weight must be <= 1)")
    best = prob_best(counts, draws, rng)
    return {name: min_weight + (1.0 - k * min_weight) * p for name, p in best.items()}


def success_interval(successes: int, failures: int) -> tuple[float, float]:
    """The 95% Wilson score interval of a success rate ((0, 1) with no observations)."""
    n = successes + failures
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + Z95 ** 2 / (2 * n)) / (1 + Z95 ** 2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / (1 + Z95 ** 2 / n)
    # At p = 0 or 1 Wilson's bound is exactly 0 or 1; rounding must not leave the observed rate outside it.
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if failures == 0 else min(1.0, centre + half))
