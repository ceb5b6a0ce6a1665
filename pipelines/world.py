"""The SIMULATED world of ``python -m pipelines.demo_loop``: users with a hidden click model, and a shared clock.

Nothing here is real. The world is built from one SIMULATED click log (:func:`caravan.ml.simulate
.simulate_click_log`, the data the first model is trained on), so items, titles, prices and users look like
the ones the ranker learned from; what makes a user click is the world's own, hidden from every model:

    logit = BASE + POPULARITY * log(popularity) - sensitivity_u * log(price / 25) + words(title) + bias_u
    P(click on a candidate the user looks at) = sigmoid(logit)

A *visit* is one user looking at ``candidates`` items (drawn as the log draws its rows, each at a random slot
``position``): the server scores them and the demo shows them in score order (:mod:`pipelines.demo_loop`
decides how likely a user looks at each rank); a candidate looked at is clicked with the hidden probability. A
better ranker puts what users click where they look, and earns more clicks: what an A/B test can see.
:meth:`World.drift` shifts the world: prices rise by ``price_factor`` (the ``item_price`` feature's distribution
moves) and users grow more price-sensitive (the hidden model moves with it).

:class:`SimClock` is the time servers stamp events with: a file holding seconds since the epoch, read on every
call (``EventLog(clock=...)``, the event log's supported way to inject time), written by the demo as its
simulated hours pass. One simulated day takes seconds, and a day closes when the clock passes its end.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: The ranker's text settings (pipelines.ranker: TextParams.n_features, DatasetParams.seed): clients send the
#: title as the hashed features the served model was trained on.
TEXT_FEATURES, TEXT_SEED = 32, 7
#: The served ranker's input columns besides the hashed title, in the order training saw them.
NUMERIC = ("user_id", "item_id", "item_price", "item_popularity", "user_activity", "position")
#: The hidden click model's title words (logit shifts) and constants.
WORDS = {"bestseller": 2.4, "trending": 1.6, "official": 1.1, "refurbished": -2.4, "used": -1.9, "generic": -1.3}
BASE, POPULARITY = -1.2, 0.7


class SimClock:
    """Simulated time shared through a file: :meth:`__call__` reads it (servers), :meth:`set` writes it (the demo)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __call__(self) -> float:
        return float(self.path.read_text())

    def set(self, moment: dt.datetime | float) -> None:
        """Move the clock to ``moment`` (an aware datetime or epoch seconds); readers see old or new, never half."""
        value = moment.timestamp() if isinstance(moment, dt.datetime) else float(moment)
        temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        temp.write_text(repr(value))
        os.replace(temp, self.path)

    def now(self) -> dt.datetime:
        """The clock as an aware UTC datetime."""
        return dt.datetime.fromtimestamp(self(), dt.timezone.utc)


@dataclass(frozen=True)
class Visit:
    """One user's look at some candidates: the rows to score, and what the hidden model would do with each."""

    user_id: int
    rows: list[dict[str, Any]]  # the served model's features, one dict per candidate
    p_click: np.ndarray  # hidden click probability of each candidate, were it shown
    draw: float  # the user's uniform draw: a shown candidate is clicked when draw < its p_click


class World:
    """Items and users from a SIMULATED click log, the hidden click model, and its drift (see the module)."""

    def __init__(self, users: int = 400, seed: int = 7, candidates: int = 4, source_day: dt.date | None = None,
                 source_rows: int = 8_000) -> None:
        from caravan.ml.simulate import simulate_click_log
        from caravan.ml.text import text_features

        self.rng = np.random.default_rng(seed)
        self.candidates = candidates
        log = simulate_click_log(source_day or dt.date(2026, 11, 22), source_rows, seed=TEXT_SEED)
        # Items: one entry per item id of the log; a candidate is drawn as the log draws its rows (by frequency).
        item_ids = log["item_id"].to_numpy()
        unique_items, first, self.item_of_row = np.unique(item_ids, return_index=True, return_inverse=True)
        items = log.take(first)
        self.item_id = unique_items.astype(np.int64)
        self.price = items["item_price"].to_numpy().astype(np.float64)
        self.popularity = items["item_popularity"].to_numpy().astype(np.float64)
        titles = items["item_title"].to_pylist()
        self.title_vectors = np.column_stack([c.to_numpy() for c in text_features(
            items.select(["item_title"]), "item_title", TEXT_FEATURES, seed=TEXT_SEED).columns]).astype(np.float64)
        self.words = np.array([sum(WORDS.get(w, 0.0) for w in str(t).lower().split()) for t in titles])
        # Users: ``users`` of the log's users, each with a hidden price sensitivity and taste; the active ones
        # (more rows in the log) are picked, and visit, more often, as in the log.
        user_ids = log["user_id"].to_numpy()
        unique_users, first_user, user_of_row = np.unique(user_ids, return_index=True, return_inverse=True)
        count = min(users, len(unique_users))
        weight = np.bincount(user_of_row).astype(np.float64)
        chosen = np.sort(self.rng.choice(len(unique_users), size=count, replace=False, p=weight / weight.sum()))
        self.user_id = unique_users[chosen].astype(np.int64)
        self.activity = log["user_activity"].to_numpy()[first_user][chosen].astype(np.float64)
        self.user_weight = weight[chosen] / weight[chosen].sum()
        self.sensitivity = self.rng.gamma(2.0, 0.8, count)
        self.bias = self.rng.normal(0.0, 0.4, count)
        self.price_factor = 1.0
        self.sensitivity_factor = 1.0
        self.feature_names = [*NUMERIC, *(f"item_title_h{i}" for i in range(TEXT_FEATURES))]

    def drift(self, price_factor: float = 2.5, sensitivity_factor: float = 2.0) -> None:
        """Prices rise by ``price_factor`` and users grow ``sensitivity_factor`` times as price-sensitive."""
        self.price_factor *= price_factor
        self.sensitivity_factor *= sensitivity_factor

    def visit(self) -> Visit:
        """One user's visit: ``candidates`` items drawn as the log draws its rows, each at a random slot."""
        u = int(self.rng.choice(len(self.user_id), p=self.user_weight))
        picked = self.item_of_row[self.rng.choice(len(self.item_of_row), size=self.candidates, replace=False)]
        positions = self.rng.integers(1, 21, size=self.candidates)
        price = np.round(self.price[picked] * self.price_factor, 2)
        logit = (BASE + POPULARITY * np.log(self.popularity[picked] + 0.05)
                 - self.sensitivity[u] * self.sensitivity_factor * np.log(price / 25.0)
                 + self.words[picked] + self.bias[u])
        rows = []
        for j, i in enumerate(picked):
            row: dict[str, Any] = {"user_id": int(self.user_id[u]), "item_id": int(self.item_id[i]),
                                   "item_price": float(price[j]), "item_popularity": float(self.popularity[i]),
                                   "user_activity": float(self.activity[u]), "position": int(positions[j])}
            row.update(zip(self.feature_names[len(NUMERIC):], self.title_vectors[i].tolist(), strict=True))
            rows.append(row)
        return Visit(int(self.user_id[u]), rows, 1.0 / (1.0 + np.exp(-logit)), float(self.rng.random()))
