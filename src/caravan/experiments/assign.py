"""Sticky assignment: a unit's arm is a deterministic function of the salt, the unit id and the arms' weights.

Each (salt, arm, unit) hashes to a uniform number ``u`` in (0, 1) (SHA-256), which becomes an exponential
"clock" ``-ln u``; the unit goes to the arm whose clock divided by its weight is smallest (an exponential
race, P-MinHash). So:

- the same unit always gets the same arm while the weights hold (no state anywhere);
- arm ``i`` gets a share ``w_i / sum(w)`` of the units;
- when weights change, a unit moves only if the change makes another arm win its race: with two
  arms, a shift of Δ of the traffic moves exactly Δ of the units (those in the shifted range);
  with more arms at most 2Δ/(1+Δ), Δ being the total variation between the old and new weights
  (``sum |w_i - w'_i| / 2``). No stateless rule can promise Δ for three or more arms and every pair of
  weightings (three weightings can demand contradictory moves), and this race is the best such rule
  (Moulton and Jiang, "Maximally consistent sampling", 2018);
- adding or removing an arm moves only the units that the new arm wins or the old arm held.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

_SCALE = 2.0 ** 64


def uniform(salt: str, arm: str, unit: str) -> float:
    """A uniform number in (0, 1) for (salt, arm, unit): the first 64 bits of SHA-256, never 0 or 1."""
    digest = hashlib.sha256(f"{salt}\x1f{arm}\x1f{unit}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") + 0.5) / _SCALE


def clocks(salt: str, unit: str, names: Sequence[str]) -> list[float]:
    """The unit's exponential clock per arm (``-ln u``); the arm with the smallest clock / weight wins."""
    return [-math.log(uniform(salt, name, unit)) for name in names]


def assign(salt: str, unit: str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of ``unit``: deterministic in (salt, unit, weights), sticky while the weights hold."""
    if not arms:
        raise ValueError("assign needs at least one arm")
    best, best_time = "", math.inf
    for name, weight in arms:
        if weight > 0:
            time = -math.log(uniform(salt, name, unit)) / weight
            if time < best_time:
                best, best_time = name, time
    if not best:
        raise ValueError("assign needs an arm with a weight above 0")
    return best


def moved_share(old: Sequence[float], new: Sequence[float]) -> float:
    """The exact share of units that change arm when the weights go from ``old`` to ``new`` (1 - P-MinHash's J_P)."""
    x = [w / sum(old) for w in old]
    y = [w / sum(new) for w in new]
    same = 0.0
    for i in range(len(x)):
        if x[i] > 0 and y[i] > 0:
            same += 1.0 / sum(max(x[j] / x[i], y[j] / y[i]) for j in range(len(x)))
    return 1.0 - same
