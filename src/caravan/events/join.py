"""Predictions joined with feedback into the ranker's click-log schema: training data from what was served.

Rules (property-tested in ``tests/unit/test_event_join.py``):

- One output row per logged prediction row, identified by ``(request_id, row)``; its ``event_id`` is the
  request id (``request_id#row`` for requests of several rows), its ``event_time`` the prediction's ``ts``.
  The same ``(request_id, row)`` logged twice (a retried write, two writers) counts as a *duplicate
  prediction*; the earliest is kept.
- ``clicked`` is 1 when at least one feedback event with a positive ``reward`` for the row (its own ``row``, or
  ``row`` null: every row of the request) arrived at most ``attribution_window_s`` after the prediction;
  else 0. Feedback later than that is *late* (counted, ignored). Each in-window event after the first
  for the same row is a *duplicate feedback* (counted; a positive one still makes the label 1). Feedback
  whose request (or row) was never logged is *orphan* (counted, ignored).
- Columns: the click-log schema's (default :data:`caravan.ml.simulate.SIMULATED_SCHEMA`, without its
  ``caravan.simulated`` marker), each from the prediction's ``f_<name>`` feature as scored, cast to the
  schema's type (NaN becomes null); ``user_id`` falls back to the unit id when it is a whole number; a
  column the model did not score is null. Features outside the schema follow as float64 columns.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .log import FEATURE_PREFIX, FEEDBACK, PREDICTIONS, read_events

DEFAULT_ATTRIBUTION_WINDOW_S = 1800.0
LABEL = "clicked"


@dataclass
class JoinCounts:
    """What the join saw and did, for a manifest and the run's summary."""

    predictions: int = 0
    duplicate_predictions: int = 0
    rows: int = 0
    positives: int = 0
    feedback: int = 0
    attributed_feedback: int = 0
    duplicate_feedback: int = 0
    late_feedback: int = 0
    orphan_feedback: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counts as a plain dict."""
        return asdict(self)


def _micros(column: Any) -> np.ndarray:
    import pyarrow as pa

    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def join_events(predictions: Any, feedback: Any, attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S,
                schema: Any = None) -> tuple[Any, JoinCounts]:
    """The click log of ``predictions`` labelled by ``feedback`` (two tables in the event log's format)."""
    import pyarrow as pa

    if schema is None:
        from ..ml.simulate import SIMULATED_SCHEMA

        schema = SIMULATED_SCHEMA
    counts = JoinCounts(predictions=predictions.num_rows, feedback=feedback.num_rows)
    ordered = predictions.sort_by([("request_id", "ascending"), ("row", "ascending"), ("ts", "ascending")])
    ids = np.asarray(ordered.column("request_id").to_numpy(zero_copy_only=False), dtype=object)
    rows = np.asarray(ordered.column("row").fill_null(0).to_numpy(zero_copy_only=False), dtype=np.int64)
    first = np.ones(len(ids), dtype=bool)
    if len(ids) > 1:
        first[1:] = (ids[1:] != ids[:-1]) | (rows[1:] != rows[:-1])
    counts.duplicate_predictions = int((~first).sum())
    kept = ordered.filter(pa.array(first))
    ids, rows, ts = ids[first], rows[first], _micros(kept.column("ts"))
    counts.rows = len(ids)

    where: dict[tuple[str, int], int] = {(rid, int(r)): i for i, (rid, r) in enumerate(zip(ids, rows, strict=True))}
    of_request: dict[str, list[int]] = {}
    for i, rid in enumerate(ids):
        of_request.setdefault(rid, []).append(i)
    window_us = attribution_window_s * 1e6
    label = np.zeros(len(ids), dtype=np.int8)
    attributed = np.zeros(len(ids), dtype=np.int64)
    fb_ids = feedback.column("request_id").to_pylist()
    fb_rows = feedback.column("row").to_pylist()
    fb_ts, fb_reward = _micros(feedback.column("ts")), feedback.column("reward").to_numpy(zero_copy_only=False)
    for rid, row, at, reward in zip(fb_ids, fb_rows, fb_ts, fb_reward, strict=True):
        if row is None:
            targets = of_request.get(rid, [])
        else:
            target = where.get((rid, int(row)))
            targets = [] if target is None else [target]
        if not targets:
            counts.orphan_feedback += 1
            continue
        in_window = [t for t in targets if at - ts[t] <= window_us]
        if not in_window:
            counts.late_feedback += 1
            continue
        counts.attributed_feedback += 1
        if any(attributed[t] for t in in_window):
            counts.duplicate_feedback += 1
        for t in in_window:
            attributed[t] += 1
            if reward > 0 and not math.isnan(reward):
                label[t] = 1
    counts.positives = int(label.sum())
    return _click_log(kept, ids, rows, label, schema), counts


def _click_log(kept: Any, ids: np.ndarray, rows: np.ndarray, label: np.ndarray, schema: Any) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    several = {rid for rid, r in zip(ids, rows, strict=True) if r > 0}
    event_ids = [f"{rid}#{r}" if rid in several else rid for rid, r in zip(ids, rows, strict=True)]
    columns: dict[str, Any] = {}
    features = {name[len(FEATURE_PREFIX):]: kept.column(name) for name in kept.column_names
                if name.startswith(FEATURE_PREFIX)}
    for field in schema:
        if field.name == "event_id":
            columns[field.name] = pa.array(event_ids, pa.string())
        elif field.name == "event_time":
            columns[field.name] = kept.column("ts").cast(field.type)
        elif field.name == LABEL:
            columns[field.name] = pa.array(label).cast(field.type)
        elif field.name in features:
            values = np.asarray(features[field.name].to_numpy(zero_copy_only=False), dtype=np.float64)
            column = pa.array(values, mask=np.isnan(values))
            columns[field.name] = column if pa.types.is_floating(field.type) and field.type == pa.float64() else \
                pc.cast(column, field.type, safe=False)
        elif field.name == "user_id":
            columns[field.name] = pa.array([_whole(u) for u in kept.column("unit_id").to_pylist()], field.type)
        else:
            columns[field.name] = pa.nulls(len(ids), field.type)
    for name, column in features.items():
        if name not in columns:
            columns[name] = column.cast(pa.float64())
    return pa.table(columns).replace_schema_metadata({"caravan.source": "event-log"})


def _whole(unit: str | None) -> int | None:
    try:
        return int(unit) if unit is not None else None
    except ValueError:
        return None


def join_day(store: Any, model: str, day: dt.date,
             attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> tuple[Any, JoinCounts]:
    """The click log of ``day``'s logged predictions: feedback of that day and of the next day's first hours
    (as far as the attribution window reaches past midnight)."""
    import pyarrow as pa

    predictions = read_events(store, model, PREDICTIONS, [day])
    next_hours = list(range(min(24, math.ceil(attribution_window_s / 3600) + 1)))
    feedback = pa.concat_tables([read_events(store, model, FEEDBACK, [day]),
                                 read_events(store, model, FEEDBACK, [day + dt.timedelta(days=1)], next_hours)],
                                promote_options="default")
    return join_events(predictions, feedback, attribution_window_s)
