"""``caravan monitor`` end to end on the file backends: a logged window in, a table out, an artifact published once."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from caravan.artifacts import Artifact
from caravan.cli import main
from caravan.monitoring.publish import PLOT_FILE, REPORT_FILE
from caravan.registry import open_pointer
from caravan.storage import open_store

from ..unit.test_monitor_compute import DAY, trained_model, write_log

AT = DAY + dt.timedelta(hours=3)
#: The triggers have tests of their own; here a closed day must not start a retraining run.
QUIET = ("--no-triggers",)


@pytest.fixture
def logged(local_root, tmp_path, monkeypatch):
    monkeypatch.setenv("CARAVAN_POINTER", "file")
    model = trained_model(local_root)
    pointer = open_pointer("file")
    pointer.set_if("ranker", {"artifact_id": model.id, "artifact_uri": model.uri, "action": "promote",
                              "metrics": {"gate_auc": 0.8}}, pointer.read("ranker"))
    write_log(local_root, "ranker", tmp_path / "spool", model.id, n=500, start=DAY, span_s=7200, shift_x2=2.0)
    return model


def _published(local_root: str) -> list[str]:
    return sorted(k for k in open_store(local_root).list_keys("Monitoring/") if k.endswith("_MANIFEST.json"))


def test_monitor_prints_the_table_and_publishes_the_window_once(logged, local_root, tmp_path, capsys) -> None:
    assert main(["monitor", "ranker", "--window", "3h", "--at", AT.isoformat(), *QUIET]) == 0
    out = capsys.readouterr().out
    assert "ranker: 2026-11-20T00:00:00+00:00 to 2026-11-20T03:00:00+00:00" in out
    assert f"production: {logged.id} (gate AUC 0.8000); last closed day: 2026-11-20" in out
    row = next(line for line in out.splitlines() if line.startswith(logged.id))
    assert row.split()[1:4] == ["*", "-", "500"]
    assert row.split()[-2] == "x2", "x2 drifted: the top PSI"
    (manifest,) = _published(local_root)
    artifact = Artifact(open_store(local_root), manifest.rsplit("/", 1)[0])
    assert f"published: {artifact.uri}" in out
    report = artifact.read_json(REPORT_FILE)
    assert report["versions"][0]["requests"] == 500 and report["versions"][0]["psi"]["x2"] > 1
    assert artifact.read_bytes(PLOT_FILE)[:4] == b"\x89PNG"
    first = artifact.manifest()

    # More events land in the window afterwards: the same window again publishes nothing, shows the first report.
    write_log(local_root, "ranker", tmp_path / "spool2", logged.id, n=40, start=DAY, span_s=600, writer="late")
    assert main(["monitor", "ranker", "--window", "3h", "--at", AT.isoformat(), "--json", *QUIET]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["versions"][0]["requests"] == 500 and shown["production_gate_auc"] == 0.8
    assert _published(local_root) == [manifest] and artifact.manifest() == first

    assert main(["monitor", "ranker", "--window", "4h", "--at", AT.isoformat(), "--json", *QUIET]) == 0
    assert json.loads(capsys.readouterr().out)["versions"][0]["requests"] == 540  # a new window sees them
    assert len(_published(local_root)) == 2


def test_unknown_model_empty_window_and_bad_flags_are_one_line(logged, local_root, capsys) -> None:
    assert main(["monitor", "nobody", "--at", AT.isoformat()]) == 1
    err = capsys.readouterr().err
    assert err.startswith("caravan: unknown model 'nobody': no pointer") and err.count("\n") == 1

    later = (AT + dt.timedelta(days=5)).isoformat()
    assert main(["monitor", "ranker", "--window", "1h", "--at", later, *QUIET]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith(logged.id))
    assert row.split()[1:6] == ["*", "-", "0", "0", "0"]
    assert "note: no predictions of 'ranker' logged between" in out

    assert main(["monitor", "ranker", "--window", "soon"]) == 1
    assert "duration 'soon' must be a positive number" in capsys.readouterr().err
    assert main(["monitor", "ranker", "--at", "yesterday"]) == 1
    assert "--at 'yesterday' is not an ISO-8601 time" in capsys.readouterr().err


def test_the_triggers_get_the_published_report_after_publishing(logged, local_root, monkeypatch, capsys) -> None:
    from caravan.monitoring import triggers

    seen = []

    def run_from_args(report, args, **kwargs):
        seen.append((report, kwargs["now"], _published(local_root)))
        return []

    monkeypatch.setattr(triggers, "run_from_args", run_from_args)
    assert main(["monitor", "ranker", "--window", "3h", "--at", AT.isoformat()]) == 0
    ((report, now, published),) = seen
    assert report.model == "ranker" and report.versions[0].requests == 500 and now == AT
    assert len(published) == 1, "the triggers run once the artifact is published"
