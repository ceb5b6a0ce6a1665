"""The monitoring artifact: create-if-absent by model and window end, a PNG of the trends, the summary table."""

from __future__ import annotations

import dataclasses
import datetime as dt

from caravan.monitoring.compute import HourTrend, Monitoring
from caravan.monitoring.publish import (
    PLOT_FILE,
    REPORT_FILE,
    monitoring_address,
    publish_monitoring,
    read_monitoring,
    summary_table,
)
from caravan.monitoring.report import MonitorReport, VersionWindow
from caravan.storage import open_store

END = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.timezone.utc)
A = "TrainRanker/name=a--0123456789abcdef"
B = "TrainRanker/name=b--fedcba9876543210"


def monitoring(requests: int = 100) -> Monitoring:
    rows = (VersionWindow(A, "control", requests, 80, 20, 0.25, 0.71, 1.1, {"x1": 0.1}, {"n": 0.01},
                          {"x1": 0.02, "x2": 0.4}),
            VersionWindow(B, "treatment", 50, 0, 0, None, None, None, {}, {}, {}))
    report = MonitorReport("ranker", (END - dt.timedelta(days=1)).isoformat(), END.isoformat(), A, 0.73, rows,
                           ("2026-11-20",))
    hourly = tuple(HourTrend((END - dt.timedelta(hours=h)).isoformat(), A, "control", 10, 8, 2, 0.25, 0.7, 0.4, "x2")
                   for h in (3, 2, 1))
    return Monitoring(report, hourly, ("a note",), 1800.0)


def test_published_once_per_window_and_never_rewritten(local_root) -> None:
    store = open_store(local_root)
    artifact, outcome = publish_monitoring(store, monitoring(), 86400)
    assert outcome == "published"
    assert artifact.id == monitoring_address("ranker", END, 86400).key
    assert artifact.id.startswith("Monitoring/model=ranker/window_end=20261121T120000Z,window_s=86400--")
    assert artifact.read_bytes(PLOT_FILE).startswith(b"\x89PNG\r\n\x1a\n")
    first = artifact.manifest()

    again, outcome = publish_monitoring(store, monitoring(requests=999), 86400)  # later data, same window
    assert (again.id, outcome) == (artifact.id, "already published")
    assert again.manifest() == first
    stored = read_monitoring(again)
    assert stored == monitoring(), "the first report of a window stands"
    assert stored.report.versions[0].requests == 100
    assert artifact.manifest()["metrics"]["max_psi"] == 0.4

    other, outcome = publish_monitoring(store, monitoring(), 3600)  # another window length: another artifact
    assert outcome == "published" and other.id != artifact.id
    assert len([k for k in store.list_keys("Monitoring/") if k.endswith(REPORT_FILE)]) == 2


def test_summary_table_names_production_gate_and_the_worst_features() -> None:
    text = summary_table(monitoring().report)
    lines = text.splitlines()
    assert lines[0] == f"ranker: {(END - dt.timedelta(days=1)).isoformat()} to {END.isoformat()}"
    assert lines[1] == f"production: {A} (gate AUC 0.7300); last closed day: 2026-11-20"
    assert lines[2].split()[:3] == ["artifact", "arm", "requests"]
    row_a = next(line for line in lines if line.startswith(A))
    assert f"{A} *" in row_a and "0.7100" in row_a and "x2 0.400" in row_a and "x1 0.100" in row_a
    row_b = next(line for line in lines if line.startswith(B))
    assert row_b.split()[1:5] == ["treatment", "50", "0", "0"]
    empty = dataclasses.replace(monitoring().report, versions=(), production_artifact_id=None,
                                production_gate_auc=None, closed_days=())
    assert "production: none; last closed day: none" in summary_table(empty)
