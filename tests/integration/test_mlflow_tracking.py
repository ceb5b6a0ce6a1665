"""Optional MLflow tracking: a training becomes an MLflow run when, and only when, it is configured."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from pipelines.ranker import TrainRanker

from ..servers import build, free_port

mlflow = pytest.importorskip("mlflow")  # a test extra; without it caravan never imports mlflow

DAY = dt.date(2026, 11, 22)


def train(**params: object) -> TrainRanker:
    task = TrainRanker(date=DAY, window_days=2, rows_per_day=4000, num_iterations=20, **params)
    assert build([task], workers=1)
    return task


def test_each_training_is_an_mlflow_run_with_params_metrics_and_the_artifact(
        local_root: str, test_specs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store is enough for a test
    task = train(learning_rate=0.2, num_leaves=7)
    client = mlflow.tracking.MlflowClient(tracking_uri=store.as_uri())
    experiment = client.get_experiment_by_name("TrainRanker")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0].data
    assert run.tags["caravan.artifact_uri"] == task.output().uri
    assert run.tags["caravan.artifact_id"] == task.output().id
    assert float(run.params["learning_rate"]) == 0.2 and int(run.params["num_leaves"]) == 7
    assert run.metrics["valid_auc"] == pytest.approx(task.output().metrics["valid_auc"])


def test_without_a_tracking_uri_nothing_is_tracked(local_root: str, test_specs: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    train(learning_rate=0.3, num_leaves=5)
    assert not (tmp_path / "mlruns").exists() and not list(Path(local_root).rglob("mlruns"))


def test_an_unreachable_tracking_server_does_not_fail_the_training(local_root: str, test_specs: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    task = train(learning_rate=0.25, num_leaves=6)
    assert task.output().exists()
    logs = task.output().store.list_keys(f"{task.output().key}/_logs/")
    stderr = "".join(task.output().store.read(k).decode() for k in logs if k.endswith(".stderr.txt"))
    assert "could not record" in stderr and "MLflow" in stderr
