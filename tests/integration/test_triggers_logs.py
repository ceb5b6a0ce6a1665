"""Triggers from synthetic event logs: logs written through the EventLog, reports from caravan.monitoring.compute,
the triggers on them. An injected closed day, a degradation and a drift fire exactly the expected triggers, once,
respecting the cool-down; a healthy log fires nothing; a rollback replays real models on the logged rows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.events import EventLog
from caravan.events.log import events_prefix
from caravan.ml.stats import column_stats
from caravan.monitoring.compute import compute_report
from caravan.monitoring.triggers import TriggerSettings, run_triggers
from caravan.monitoring.triggers_store import trigger_store
from caravan.registry import open_pointer
from caravan.storage import open_store

from ..tiny_models import holdout_auc, make_model

DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
NAMES = ("x1", "x2")
#: The world's click model: log-odds 1.5 x1 + 1.0 x2 (the models below learn it, or its opposite).
WORLD = (1.5, 1.0)
SETTINGS = TriggerSettings(min_events=200)


class Dispatches:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dt.date | None]] = []

    def running(self) -> list[str]:
        return []

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        self.calls.append((model, day))
        return f"child-{len(self.calls)}", "test"


def dataset(root: str, name: str, weights: tuple[float, float], *, rows: int = 3000, seed: int = 1) -> Artifact:
    """A dataset (train/valid/test and the training statistics the monitor's PSI reads) of x1, x2 ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 2))
    label = (rng.random(rows) < 1 / (1 + np.exp(-(x @ np.asarray(weights))))).astype(np.int64)
    table = pa.table({"x1": x[:, 0], "x2": x[:, 1], "clicked": label})
    third = rows // 3
    artifact = Artifact(open_store(root), Address(family="PrepareDataset", params={"name": name}))
    with artifact.writer() as writer:
        for split, part in (("train", table.slice(0, third)), ("valid", table.slice(third, third)),
                            ("test", table.slice(2 * third))):
            writer.write_parquet(f"{split}.parquet", part)
        writer.write_json("stats.json", column_stats(table.select(["x1", "x2"])))
    return Artifact(open_store(root), artifact.id)


def model(root: str, name: str, weights: tuple[float, float]) -> tuple[Artifact, float]:
    """A LightGBM model of a world with ``weights``, and its holdout AUC (what its gate recorded)."""
    data = dataset(root, name, weights)
    trained = make_model(root, data, list(NAMES), name=name)
    return trained, holdout_auc(trained, data)


def promote(artifact: Artifact, gate_auc: float) -> None:
    pointer = open_pointer()
    assert pointer.set_if("ranker", {"artifact_id": artifact.id, "artifact_uri": artifact.uri, "action": "promote",
                                     "metrics": {"gate_auc": gate_auc}}, pointer.read("ranker")) is not None


def serve(root: str, spool: Path, served_by: Artifact, *, start: dt.datetime, n: int = 1000, span_s: float = 3 * 3600,
          shift_x2: float = 0.0, seed: int = 1, writer: str = "w1") -> None:
    """``n`` one-row requests scored by ``served_by`` (its real scores), clicked 60 s later as the world decides."""
    import lightgbm as lgb

    rng = np.random.default_rng(seed)
    ts = start.timestamp() + np.sort(rng.uniform(0, span_s, n))
    x = np.column_stack([rng.normal(size=n), rng.normal(loc=shift_x2, size=n)])
    scores = lgb.Booster(model_str=served_by.read_text("model.txt")).predict(x)
    clicked = rng.random(n) < 1 / (1 + np.exp(-(x @ np.asarray(WORLD))))
    log = EventLog(open_store(root), "ranker", spool, flush_rows=10**9, writer_id=writer, clock=lambda: ts[-1])
    for i in range(n):
        log.prediction(f"{writer}-r{i}", unit_id=str(i), arm=None, artifact_id=served_by.id, names=NAMES,
                       features=x[i:i + 1], scores=[float(scores[i])], ts=float(ts[i]))
        if clicked[i]:
            log.feedback(f"{writer}-r{i}", 1.0, ts=float(ts[i]) + 60)
    log.close()  # closes the writer's days


def keep_open(root: str, day: dt.datetime) -> None:
    """A second writer that opened ``day`` and never closed it (killed): the day is not closed."""
    open_store(root).write(f"{events_prefix('ranker')}_days/date={day.date().isoformat()}/crashed.open", b"{}")


def monitor(root: str, at: dt.datetime, dispatcher: Dispatches, settings: TriggerSettings = SETTINGS,
            **kwargs: Any) -> list[tuple[str, str, str]]:
    report = compute_report("ranker", store=open_store(root), pointer=open_pointer(),
                            window_start=at - dt.timedelta(hours=24), window_end=at, now=at)
    outcomes = run_triggers(report, settings, pointer=open_pointer(), dispatcher=dispatcher, now=at,
                            artifact_store=open_store(root), **kwargs)
    return [(o.record_id, o.kind, o.outcome) for o in outcomes]


def test_nothing_fires_on_a_healthy_log(local_root, tmp_path):
    prod, auc = model(local_root, "prod", WORLD)
    promote(prod, auc)
    serve(local_root, tmp_path / "spool", prod, start=DAY + dt.timedelta(hours=1))
    keep_open(local_root, DAY)
    dispatcher = Dispatches()
    for minutes in (0, 15):
        assert monitor(local_root, DAY + dt.timedelta(hours=5, minutes=minutes), dispatcher) == []
    assert dispatcher.calls == [] and trigger_store(open_pointer()).records("ranker") == {}


def test_a_closed_day_then_a_degradation_fire_once_each_within_the_cooldown(local_root, tmp_path):
    prod, auc = model(local_root, "prod", WORLD)
    promote(prod, auc)
    dispatcher = Dispatches()
    # Day 1 is served healthy and closes: one new-data retrain, on that day, once.
    serve(local_root, tmp_path / "s1", prod, start=DAY + dt.timedelta(hours=20))
    at = DAY + dt.timedelta(days=1, hours=1)
    assert monitor(local_root, at, dispatcher) == [("new-data-2026-11-20", "new_data", "dispatched")]
    assert monitor(local_root, at + dt.timedelta(minutes=15), dispatcher) == []
    assert dispatcher.calls == [("ranker", dt.date(2026, 11, 20))]
    # Day 2: the world's clicks turn against the model (its scores are negated by serving a mirrored model).
    mirrored, _ = model(local_root, "mirrored", (-WORLD[0], -WORLD[1]))
    serve(local_root, tmp_path / "s2", mirrored, start=DAY + dt.timedelta(days=1, hours=2), seed=2)
    keep_open(local_root, DAY + dt.timedelta(days=1))
    promote(mirrored, auc)  # production is now the mirrored model, with the gate AUC the good one had
    # Within the cool-down of the new-data retrain (fired at 01:00): recorded as suppressed, once.
    at = DAY + dt.timedelta(days=1, hours=3, minutes=30)
    assert monitor(local_root, at, dispatcher) == [("new-data-2026-11-20.cooldown.degradation", "degradation",
                                                    "suppressed")]
    record, _ = trigger_store(open_pointer()).records("ranker")["new-data-2026-11-20.cooldown.degradation"]
    assert "cool-down" in record["reason"] and "online AUC" in record["reason"]
    assert monitor(local_root, at + dt.timedelta(minutes=15), dispatcher) == []
    # After the cool-down: one retrain, with the numbers in its record; then the cool-down again.
    at = DAY + dt.timedelta(days=1, hours=4, minutes=30)
    assert monitor(local_root, at, dispatcher) == [("retrain-000001", "degradation", "dispatched")]
    record, _ = trigger_store(open_pointer()).records("ranker")["retrain-000001"]
    assert record["online_auc"] < record["gate_auc"] - SETTINGS.degradation_tolerance
    assert record["labelled"] >= SETTINGS.min_events
    # On the logged days up to the latest closed one (production's manifest names no training day to compare).
    assert dispatcher.calls == [("ranker", dt.date(2026, 11, 20)), ("ranker", dt.date(2026, 11, 20))]
    assert "retrain on the logged days up to 2026-11-20" in record["reason"]
    assert monitor(local_root, at + dt.timedelta(minutes=15), dispatcher) == [
        ("retrain-000001.cooldown.degradation", "degradation", "suppressed")]
    assert len(dispatcher.calls) == 2


def test_drift_names_the_drifted_feature_and_fires_once(local_root, tmp_path):
    prod, auc = model(local_root, "prod", WORLD)
    promote(prod, auc)
    serve(local_root, tmp_path / "spool", prod, start=DAY + dt.timedelta(hours=1), shift_x2=2.0)
    keep_open(local_root, DAY)
    dispatcher = Dispatches()
    at = DAY + dt.timedelta(hours=5)
    fired = monitor(local_root, at, dispatcher, TriggerSettings(min_events=10**6))  # quality not judged here
    # The day is still open: no logged day to retrain on, so the drift waits for one (recorded once).
    assert fired == [("waiting.no-closed-day.drift", "drift", "waiting for new data")]
    record, _ = trigger_store(open_pointer()).records("ranker")["waiting.no-closed-day.drift"]
    assert record["features"] == ["x2"] and record["psi"]["x2"] > 0.5
    assert "x2 (PSI" in record["reason"] and "x1" not in record["reason"]
    assert monitor(local_root, at + dt.timedelta(minutes=15), dispatcher, TriggerSettings(min_events=10**6)) == []
    assert dispatcher.calls == []


@pytest.mark.parametrize("previous_is_better", [True, False])
def test_rollback_replays_the_previous_model_on_the_logged_rows(local_root, tmp_path, previous_is_better):
    old, old_auc = model(local_root, "old", WORLD if previous_is_better else (0.0, -1.0))
    bad, _ = model(local_root, "bad", (0.3, -1.0))  # half wrong about the world
    promote(old, old_auc)
    promote(bad, 0.8)
    serve(local_root, tmp_path / "spool", bad, start=DAY + dt.timedelta(hours=1))
    keep_open(local_root, DAY)
    at = DAY + dt.timedelta(hours=5)
    report = compute_report("ranker", store=open_store(local_root), pointer=open_pointer(),
                            window_start=at - dt.timedelta(hours=24), window_end=at, now=at)
    outcomes = run_triggers(report, TriggerSettings(min_events=300, rollback_on_degradation=True),
                            pointer=open_pointer(), dispatcher=Dispatches(), now=at,
                            artifact_store=open_store(local_root))
    assert [(o.kind, o.outcome) for o in outcomes] == [  # no closed day yet: the retrain waits, the rollback not
        ("degradation", "waiting for new data"), ("rollback", "rolled back" if previous_is_better else
                                                  "not rolled back")]
    (record_id,) = [r for r in trigger_store(open_pointer()).records("ranker") if r.startswith("rollback-from-")]
    record, _ = trigger_store(open_pointer()).records("ranker")[record_id]
    production = report.production()
    assert production is not None and production.auc is not None
    # Like with like: production's replayed AUC is the online AUC of the report, on the same labelled rows.
    assert record["production_auc"] == pytest.approx(production.auc, abs=1e-9)
    assert record["replayed_rows"] == production.labelled
    assert (record["previous_auc"] > record["production_auc"]) is previous_is_better
    current = open_pointer().read("ranker").document
    assert current is not None
    assert current["artifact_id"] == (old.id if previous_is_better else bad.id)
    if previous_is_better:
        assert current["action"] == "rollback" and current["promoted_by"] == "monitor"
        assert f"AUC {record['previous_auc']:.4f} vs production {record['production_auc']:.4f}" in current["reason"]


def test_caravan_monitor_runs_the_triggers_and_history_shows_them(local_root, tmp_path, capsys):
    from caravan.cli import main

    prod, auc = model(local_root, "prod", WORLD)
    promote(prod, auc)
    serve(local_root, tmp_path / "spool", prod, start=DAY + dt.timedelta(hours=1), shift_x2=2.0)
    at = "2026-11-21T01:00:00Z"
    args = ["monitor", "ranker", "--at", at, "--dispatch", "none", "--min-events", "300", "--cooldown", "6h"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "trigger new_data: not dispatched - day 2026-11-20 of logged events closed" in out
    assert "trigger drift: suppressed" in out and "x2 (PSI" in out
    assert main(args) == 0  # the same window again: nothing new fires
    assert "trigger " not in capsys.readouterr().out
    assert main(["models", "history", "ranker", "--wide"]) == 0
    history = capsys.readouterr().out
    assert "trigger new_data  not dispatched" in history and "trigger drift" in history
