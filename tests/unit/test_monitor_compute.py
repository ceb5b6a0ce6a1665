"""compute_report on event logs written through caravan.events.EventLog, against numbers known by construction."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.events import EventLog
from caravan.ml.metrics import roc_auc
from caravan.ml.stats import column_stats
from caravan.monitoring.compute import UnknownModel, compute, compute_report
from caravan.registry import open_pointer
from caravan.storage import open_store

DAY = dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc)
NAMES = ("x1", "x2", "n")


def publish(root: str, family: str, name: str, upstream: object, files: dict[str, object]) -> Artifact:
    artifact = Artifact(open_store(root), Address(family=family, params={"name": name}, upstream=upstream))
    with artifact.writer() as writer:
        for file_name, value in files.items():
            writer.write_json(file_name, value)
    return Artifact(open_store(root), artifact.id)


def trained_model(root: str, name: str = "m", *, rows: int = 4000, seed: int = 0) -> Artifact:
    """A "model" artifact with a serving schema whose training dataset's stats.json is x1, x2 ~ N(0, 1), n in 0..4."""
    rng = np.random.default_rng(seed)
    table = pa.table({"x1": rng.normal(size=rows), "x2": rng.normal(size=rows),
                      "n": rng.integers(0, 5, rows).astype(np.int64)})
    dataset = publish(root, "PrepareDataset", name, None, {"stats.json": column_stats(table)})
    return publish(root, "TrainRanker", name, {"dataset": dataset.id},
                   {"features.json": {"label": "clicked", "features": [
                       {"name": "x1", "type": "double"}, {"name": "x2", "type": "double"},
                       {"name": "n", "type": "int64"}]}})


@dataclass
class Served:
    """What a synthetic log holds, for the expected values."""

    ts: np.ndarray
    scores: np.ndarray
    clicked: np.ndarray
    features: np.ndarray


def write_log(root: str, model: str, spool: Path, artifact_id: str, *, n: int, start: dt.datetime, span_s: float,
              arm: str | None = None, shift_x2: float = 0.0, missing_x1: int = 0, invalid_n: int = 0,
              seed: int = 1, writer: str = "w1") -> Served:
    """``n`` one-row requests spread over ``span_s`` seconds from ``start``; a click 60 s after a prediction with
    probability = its score (so the scores are informative and calibrated)."""
    rng = np.random.default_rng(seed)
    ts = start.timestamp() + np.sort(rng.uniform(0, span_s, n))
    features = np.column_stack([rng.normal(size=n), rng.normal(loc=shift_x2, size=n),
                                rng.integers(0, 5, n).astype(np.float64)])
    features[:missing_x1, 0] = np.nan
    features[n - invalid_n:, 2] = 2.5
    scores = rng.uniform(0.05, 0.95, n)
    clicked = (rng.random(n) < scores).astype(np.int8)
    log = EventLog(open_store(root), model, spool, flush_rows=10**9, writer_id=writer, clock=lambda: ts[-1])
    for i in range(n):
        log.prediction(f"{writer}-r{i}", unit_id=str(i % 50), arm=arm, artifact_id=artifact_id, names=NAMES,
                       features=features[i:i + 1], scores=[float(scores[i])], ts=float(ts[i]))
        if clicked[i]:
            log.feedback(f"{writer}-r{i}", 1.0, ts=float(ts[i]) + 60)
    log.close()  # never started: flushes, ships and closes the days in this thread
    return Served(ts, scores, clicked, features)


def test_rates_auc_missing_invalid_and_drift_in_one_feature(local_root, tmp_path) -> None:
    model = trained_model(local_root)
    n, start = 3000, DAY + dt.timedelta(hours=1)
    served = write_log(local_root, "ranker", tmp_path / "spool", model.id, n=n, start=start, span_s=7200,
                       shift_x2=1.5, missing_x1=300, invalid_n=30)
    now = start + dt.timedelta(hours=2)
    result = compute("ranker", store=open_store(local_root), pointer=open_pointer(), window_start=DAY,
                     window_end=now, attribution_window_s=1800)
    (row,) = result.report.versions
    assert (row.artifact_id, row.arm, row.requests) == (model.id, "", n)
    done = served.ts + 1800 <= now.timestamp()
    assert row.labelled == int(done.sum())
    assert row.rewards == int(served.clicked[done].sum())
    assert row.reward_rate == pytest.approx(served.clicked[done].mean())
    assert row.auc == pytest.approx(roc_auc(served.clicked[done], served.scores[done]))
    assert row.calibration == pytest.approx(served.scores[done].mean() / served.clicked[done].mean())
    assert row.missing_rate == {"x1": 300 / n, "x2": 0.0, "n": 0.0}
    assert row.invalid_rate == {"x1": 0.0, "x2": 0.0, "n": 30 / n}
    assert row.psi["x2"] > 0.5, "x2 was shifted by 1.5 standard deviations"
    assert row.psi["x1"] < 0.05 and row.psi["n"] < 0.05, row.psi
    assert result.report.closed_days == ("2026-11-20",)
    assert [t.hour for t in result.hourly] == [(DAY + dt.timedelta(hours=h)).isoformat() for h in (1, 2)]
    assert sum(t.requests for t in result.hourly) == n
    assert all(t.top_psi_feature == "x2" for t in result.hourly)
    assert result.notes == ()


def test_versions_and_arms_are_apart_and_the_production_row_carries_the_gate_auc(local_root, tmp_path) -> None:
    a, b = trained_model(local_root, "a"), trained_model(local_root, "b", seed=5)
    pointer = open_pointer()
    pointer.set_if("ranker", {"artifact_id": a.id, "artifact_uri": a.uri, "action": "promote",
                              "metrics": {"gate_auc": 0.71}}, pointer.read("ranker"))
    write_log(local_root, "ranker", tmp_path / "s1", a.id, n=400, start=DAY, span_s=3000, arm="control", writer="w1")
    write_log(local_root, "ranker", tmp_path / "s2", b.id, n=200, start=DAY, span_s=3000, arm="treatment",
              writer="w2", seed=2)
    report = compute_report("ranker", store=open_store(local_root), pointer=pointer, window_start=DAY,
                            window_end=DAY + dt.timedelta(hours=3))
    assert [(v.artifact_id, v.arm, v.requests) for v in report.versions] == sorted(
        [(a.id, "control", 400), (b.id, "treatment", 200)])
    assert report.production_artifact_id == a.id and report.production_gate_auc == 0.71
    production = report.production()
    assert production is not None and production.requests == 400 and production.labelled == 400


def test_the_window_and_now_bound_what_is_read(local_root, tmp_path) -> None:
    model = trained_model(local_root)
    served = write_log(local_root, "ranker", tmp_path / "spool", model.id, n=600, start=DAY, span_s=4 * 3600)
    start, end = DAY + dt.timedelta(minutes=30), DAY + dt.timedelta(hours=2, minutes=15)
    (row,) = compute_report("ranker", store=open_store(local_root), pointer=open_pointer(), window_start=start,
                            window_end=end, now=end, attribution_window_s=600).versions
    inside = (served.ts >= start.timestamp()) & (served.ts < end.timestamp())
    assert row.requests == int(inside.sum())
    # Labelled: the attribution window (10 min) ended by `now`; clicks come 60 s later, so all are seen.
    done = inside & (served.ts + 600 <= end.timestamp())
    assert (row.labelled, row.rewards) == (int(done.sum()), int(served.clicked[done].sum()))


def test_no_events_is_a_valid_report_and_an_unknown_model_a_clear_error(local_root) -> None:
    model = trained_model(local_root)
    pointer = open_pointer()
    pointer.set_if("ranker", {"artifact_id": model.id, "artifact_uri": model.uri, "action": "promote"},
                   pointer.read("ranker"))
    result = compute("ranker", store=open_store(local_root), pointer=pointer, window_start=DAY,
                     window_end=DAY + dt.timedelta(days=1))
    (row,) = result.report.versions
    assert (row.artifact_id, row.requests, row.labelled, row.auc, row.reward_rate) == (model.id, 0, 0, None, None)
    assert result.report.production_gate_auc is None and result.report.closed_days == ()
    assert any("no predictions" in note for note in result.notes)
    with pytest.raises(UnknownModel, match="unknown model 'nobody'"):
        compute_report("nobody", store=open_store(local_root), pointer=pointer, window_start=DAY,
                       window_end=DAY + dt.timedelta(days=1))


def test_a_served_artifact_without_training_statistics_is_noted_not_fatal(local_root, tmp_path) -> None:
    write_log(local_root, "ranker", tmp_path / "spool", "TrainRanker/name=gone--0123456789abcdef", n=50, start=DAY,
              span_s=600)
    result = compute("ranker", store=open_store(local_root), pointer=open_pointer(), window_start=DAY,
                     window_end=DAY + dt.timedelta(hours=1))
    (row,) = result.report.versions
    assert row.requests == 50 and row.psi == {} and set(row.missing_rate) == set(NAMES)
    assert any("no training statistics" in note for note in result.notes)
