"""Joining logged predictions and feedback: the attribution window, duplicates, late and orphan feedback.

The oracle is a plain loop over the generated events (one row per request id, as the gateway sends them,
plus multi-row requests and row-level feedback); the join must agree with it on every label and count.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.events.join import join_events
from caravan.ml.simulate import SIMULATED_SCHEMA

T0 = dt.datetime(2026, 11, 22, 12, tzinfo=dt.timezone.utc).timestamp()
US = pa.timestamp("us", tz="UTC")


def predictions_table(rows: list[tuple[str, int, float, str | None, float]]) -> pa.Table:
    """(request_id, row, ts, unit_id, price) rows in the event log's predictions format."""
    return pa.table({
        "request_id": pa.array([r[0] for r in rows], pa.string()),
        "row": pa.array([r[1] for r in rows], pa.int32()),
        "ts": pa.array([round(r[2] * 1e6) for r in rows], US),
        "unit_id": pa.array([r[3] for r in rows], pa.string()),
        "arm": pa.array([None] * len(rows), pa.string()),
        "artifact_id": pa.array(["A"] * len(rows), pa.string()),
        "score": pa.array([0.5] * len(rows), pa.float64()),
        "f_item_price": pa.array([r[4] for r in rows], pa.float64()),
        "f_position": pa.array([float(r[1] + 1) for r in rows], pa.float64()),
    })


def feedback_table(rows: list[tuple[str, int | None, float, float]]) -> pa.Table:
    """(request_id, row, ts, reward) rows in the event log's feedback format."""
    return pa.table({
        "request_id": pa.array([r[0] for r in rows], pa.string()),
        "row": pa.array([r[1] for r in rows], pa.int32()),
        "ts": pa.array([round(r[2] * 1e6) for r in rows], US),
        "reward": pa.array([r[3] for r in rows], pa.float64()),
    })


requests_st = st.lists(st.tuples(st.integers(0, 3600), st.integers(1, 3), st.integers(0, 2)),
                       min_size=0, max_size=25)
feedback_st = st.lists(st.tuples(st.integers(0, 30), st.one_of(st.none(), st.integers(0, 3)),
                                 st.integers(-5, 4000), st.sampled_from([0.0, 1.0, 2.5])), max_size=40)


@settings(max_examples=200, deadline=None)
@given(requests=requests_st, events=feedback_st, window=st.sampled_from([1.0, 60.0, 1800.0]))
def test_labels_and_counts_match_a_plain_loop(requests, events, window):
    # Requests: (offset s, rows, times logged); feedback: (request index, row, delay s, reward).
    logged, first_ts = [], {}
    for i, (offset, n_rows, extra_copies) in enumerate(requests):
        for copy in range(1 + extra_copies):
            for row in range(n_rows):
                ts = T0 + offset + copy * 0.5  # a later copy of the same row: the earliest one counts
                logged.append((f"q{i}", row, ts, str(1000 + i), float(i)))
                first_ts.setdefault((f"q{i}", row), ts)
    fb = []
    expected_label = dict.fromkeys(first_ts, 0)
    seen: set[tuple[str, int]] = set()
    counts = {"orphan": 0, "late": 0, "attributed": 0, "duplicate": 0}
    for index, row, delay, reward in events:
        rid = f"q{index}"
        base = first_ts.get((rid, 0), T0)
        at = base + delay
        fb.append((rid, row, at, reward))
        targets = [k for k in first_ts if k[0] == rid and (row is None or k[1] == row)]
        if not targets:
            counts["orphan"] += 1
            continue
        in_window = [k for k in targets if at - first_ts[k] <= window + 1e-6]
        if not in_window:
            counts["late"] += 1
            continue
        counts["attributed"] += 1
        counts["duplicate"] += any(k in seen for k in in_window)
        seen.update(in_window)
        for k in in_window:
            expected_label[k] = max(expected_label[k], int(reward > 0))

    table, got = join_events(predictions_table(logged), feedback_table(fb), window)

    assert got.rows == table.num_rows == len(first_ts)
    assert got.duplicate_predictions == len(logged) - len(first_ts)
    assert (got.orphan_feedback, got.late_feedback, got.attributed_feedback, got.duplicate_feedback) == \
        (counts["orphan"], counts["late"], counts["attributed"], counts["duplicate"])
    assert got.orphan_feedback + got.late_feedback + got.attributed_feedback == got.feedback == len(fb)
    ids = table.column("event_id").to_pylist()
    assert len(set(ids)) == len(ids)  # one row per request id (and row)
    several = {rid for rid, row in first_ts if row > 0}
    expected_ids = {(f"{rid}#{row}" if rid in several else rid): label for (rid, row), label in expected_label.items()}
    assert dict(zip(ids, table.column("clicked").to_pylist(), strict=True)) == expected_ids
    assert got.positives == sum(expected_label.values())
    times = table.column("event_time").cast(pa.int64()).to_pylist()
    expected_times = {(f"{rid}#{row}" if rid in several else rid): round(ts * 1e6)
                      for (rid, row), ts in first_ts.items()}
    assert dict(zip(ids, times, strict=True)) == expected_times


def test_the_click_log_has_the_ranker_schema_with_features_as_scored():
    logged = [("a", 0, T0, "1000017", 12.5), ("b", 0, T0 + 1, "not-a-number", float("nan"))]
    table, counts = join_events(predictions_table(logged), feedback_table([("a", None, T0 + 5, 1.0)]))
    assert table.schema.names == SIMULATED_SCHEMA.names
    for field in SIMULATED_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    rows = {r["event_id"]: r for r in table.to_pylist()}
    assert rows["a"]["item_price"] == 12.5 and rows["a"]["clicked"] == 1 and rows["a"]["user_id"] == 1000017
    assert rows["a"]["position"] == 1
    assert rows["b"]["item_price"] is None and rows["b"]["user_id"] is None and rows["b"]["clicked"] == 0
    assert rows["a"]["item_title"] is None  # a column the model did not score
    assert (table.schema.metadata or {}).get(b"caravan.simulated") is None
    assert counts.positives == 1


def test_feedback_at_the_window_edge_counts_and_one_microsecond_later_is_late():
    logged = [("a", 0, T0, None, 1.0), ("b", 0, T0, None, 1.0)]
    fb = [("a", None, T0 + 1800, 1.0), ("b", None, T0 + 1800.000001, 1.0)]
    table, counts = join_events(predictions_table(logged), feedback_table(fb), 1800.0)
    assert dict(zip(table.column("event_id").to_pylist(), table.column("clicked").to_pylist(), strict=True)) == \
        {"a": 1, "b": 0}
    assert counts.late_feedback == 1


@pytest.mark.parametrize("rows", [0, 1])
def test_no_feedback_at_all_gives_negative_labels(rows):
    logged = [(f"r{i}", 0, T0 + i, None, 1.0) for i in range(rows)]
    table, counts = join_events(predictions_table(logged), feedback_table([]))
    assert table.num_rows == rows and counts.positives == 0
    assert np.array_equal(table.column("clicked").to_numpy(), np.zeros(rows, dtype=np.int8))


def test_rows_given_as_mappings_are_logged_by_name(tmp_path):
    """The gateway's form: rows as JSON objects (no matrix), names taken from their keys."""
    from caravan.events.log import EventLog, read_events
    from caravan.storage.local import LocalStore

    store = LocalStore(str(tmp_path / "root"))
    log = EventLog(store, "m", tmp_path / "spool", clock=lambda: T0)
    log.prediction("g1", unit_id="u", arm="b", artifact_id="B", names=None,
                   features=[{"price": 2, "position": None}, {"price": "x", "extra": 1.5}], scores=[0.1, 0.2])
    log.close()
    table = read_events(store, "m", "predictions", [dt.date(2026, 11, 22)])
    rows = table.to_pylist()
    assert [r["row"] for r in rows] == [0, 1] and {r["arm"] for r in rows} == {"b"}
    assert rows[0]["f_price"] == 2.0 and np.isnan(rows[0]["f_position"]) and np.isnan(rows[0]["f_extra"])
    assert np.isnan(rows[1]["f_price"]) and rows[1]["f_extra"] == 1.5
