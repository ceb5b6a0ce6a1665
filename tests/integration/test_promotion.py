"""Promotion end to end: retrain on two dates, reject a bad candidate, roll back, race two promotions."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from caravan.artifacts import Artifact
from caravan.cli import main as caravan_cli
from caravan.promotion import GateModel, PromoteModel
from caravan.registry import open_pointer
from pipelines.ranker import RetrainRanker, TrainRanker

from ..servers import build

ROOT = Path(__file__).resolve().parents[2]
DAY1, DAY2 = dt.date(2026, 11, 21), dt.date(2026, 11, 22)
SMALL = {"window_days": 2, "rows_per_day": 5000, "grid": {"learning_rate": [0.1], "num_leaves": [7, 15]}}


def test_retrain_twice_reject_a_bad_candidate_then_roll_back(pointer_kind, model_name, local_root, test_specs,
                                                             capsys):
    pointer = open_pointer()
    first = RetrainRanker(date=DAY1, model=model_name, **SMALL)
    assert build([first])
    run1 = first.output().read_json("run.json")
    assert run1["promotion"]["decision"] == "promote"
    assert pointer.read(model_name).artifact_id == run1["winner"]["model"]

    # A tolerance of a whole AUC point: the second winner is promoted whatever its score, so the
    # rollback below always has somewhere to go (the gate still checks soundness and schema).
    second = RetrainRanker(date=DAY2, model=model_name, tolerance=1.0, **SMALL)
    assert build([second])
    run2 = second.output().read_json("run.json")
    verdict = run2["promotion"]
    assert verdict["decision"] == "promote", verdict
    current = pointer.read(model_name)
    assert current.artifact_id == run2["winner"]["model"]
    assert current.document["previous_artifact_id"] == run1["winner"]["model"]
    assert verdict["current"] == run1["winner"]["model"], "the second run was judged against the first winner"
    assert verdict["current_score"] is not None, "both winners scored on the second run's holdout rows"
    first_winner = second.input()["validation"].store, run1["winner"]["model"]
    trained_on = Artifact(*first_winner).manifest()["upstream"]["dataset"]
    assert second.input()["validation"].read_json("report.json")["reference"] == trained_on, \
        "drift measured against the data the current model was trained on, named in the step's address"

    before = pointer.read(model_name)
    bad = TrainRanker(date=DAY2, window_days=2, rows_per_day=5000, num_iterations=1, learning_rate=1e-6,
                      num_leaves=2)
    assert build([bad])
    promote_bad = PromoteModel(model=model_name, candidate=bad.output().id)
    assert build([promote_bad]), "a rejection is a verdict, not a failure"
    rejected = promote_bad.output().read_json("verdict.json")
    assert rejected["decision"] == "reject"
    assert any("degenerate" in r or "worse" in r for r in rejected["reasons"])
    after = pointer.read(model_name)
    assert (after.version, after.artifact_id) == (before.version, before.artifact_id), "pointer untouched"
    history = pointer.history(model_name)
    assert history[-1]["action"] == "reject" and history[-1]["artifact_id"] == bad.output().id

    assert caravan_cli(["models", "history", model_name]) == 0
    assert "reject" in capsys.readouterr().out
    assert caravan_cli(["models", "rollback", model_name]) == 0
    assert pointer.read(model_name).artifact_id == run1["winner"]["model"]
    assert pointer.read(model_name).document["action"] == "rollback"
    assert caravan_cli(["models", "rollback", model_name]) == 1, "nothing before the first winner"
    assert pointer.read(model_name).artifact_id == run1["winner"]["model"]
    assert caravan_cli(["models", "current", model_name]) == 0
    assert pointer.read(model_name).artifact_id in capsys.readouterr().out


def test_concurrent_promotions_through_consul_leave_a_consistent_history(model_name, local_root, test_specs,
                                                                        monkeypatch, consul_address):
    monkeypatch.setenv("CARAVAN_POINTER", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_address)
    candidates = [TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=30, num_leaves=n)
                  for n in (7, 15)]
    assert build(candidates)
    luigi_bin = Path(sys.executable).parent / "luigi"
    procs = [subprocess.Popen([str(luigi_bin), "--module", "caravan.promotion", "PromoteModel", "--model", model_name,
                               "--candidate", c.output().id, "--tolerance", "1.0", "--local-scheduler"],
                              cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for c in candidates]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    history = [h for h in open_pointer().history(model_name) if h["action"] != "reject"]
    # Both were promoted, one after the other: each change names the one before it.
    assert len(history) == 2, (history, outputs)
    assert history[0]["previous_artifact_id"] is None
    assert history[1]["previous_artifact_id"] == history[0]["artifact_id"]
    assert open_pointer().read(model_name).artifact_id == history[1]["artifact_id"]


def test_overlapping_runs_promoting_the_same_candidate_decide_once(model_name, local_root, test_specs, monkeypatch,
                                                                   consul_address):
    """Two runs for the same schedule slot: the Consul lock lets one decide; the other finds it done."""
    monkeypatch.setenv("CARAVAN_POINTER", "consul")
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_address)
    candidate = TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=30, num_leaves=7)
    assert build([candidate])
    luigi_bin = Path(sys.executable).parent / "luigi"
    args = [str(luigi_bin), "--module", "caravan.promotion", "PromoteModel", "--model", model_name,
            "--candidate", candidate.output().id, "--tolerance", "1.0", "--local-scheduler",
            "--no-lock"]  # luigi's pid lock only sees this machine; overlapping runs on two nodes do not share it
    procs = [subprocess.Popen(args, cwd=ROOT, env=dict(os.environ), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    history = open_pointer().history(model_name)
    assert [h["action"] for h in history] == ["promote"], (history, outputs)
    assert open_pointer().read(model_name).artifact_id == candidate.output().id
    promotion = PromoteModel(model=model_name, candidate=candidate.output().id, tolerance=1.0)
    assert promotion.output().read_json("verdict.json")["decision"] == "promote"


def test_the_lock_keeps_two_overlapping_decisions_from_recording_a_rejection_twice(
        pointer_kind, model_name, local_root, test_specs, monkeypatch):
    """The decision window made wide (a slow history write): without the lock both runs would record it."""
    import caravan.promotion

    better = TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=30, num_leaves=15)
    worse = TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=30, num_leaves=3)
    assert build([better, worse])
    pointer = open_pointer()
    pointer.set_if(model_name, {"artifact_id": better.output().id, "artifact_uri": better.output().uri,
                                "action": "promote"}, pointer.read(model_name))
    demanding = -1.0  # the candidate would have to beat the current model by a whole AUC point: rejected
    # The verdict PromoteModel will ask for: against the current model, with it as the floor too.
    assert build([GateModel(candidate=worse.output().id, current=better.output().id, tolerance=demanding,
                            floor=[better.output().id])])

    class SlowHistory:
        def __init__(self) -> None:
            self.inner = open_pointer()

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def record(self, model: str, entry: dict) -> None:
            time.sleep(0.5)
            self.inner.record(model, entry)

    monkeypatch.setattr(caravan.promotion, "open_pointer", SlowHistory)
    task = PromoteModel(model=model_name, candidate=worse.output().id, tolerance=demanding)
    errors: list[BaseException] = []

    def drive() -> None:  # what a luigi worker does with run()'s dynamic dependencies, minus the scheduler
        try:
            steps = task.run()
            dependency = next(steps)
            while True:
                assert dependency.complete()
                dependency = steps.send(dependency.output())
        except StopIteration:
            pass
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=drive) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    rejections = [h for h in open_pointer().history(model_name) if h["action"] == "reject"]
    assert len(rejections) == 1, rejections
    assert open_pointer().read(model_name).artifact_id == better.output().id
    assert task.output().read_json("verdict.json")["decision"] == "reject"


def test_promote_through_the_cli_respects_the_gate_unless_forced(pointer_kind, model_name, local_root, test_specs,
                                                                 capsys):
    good = TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=30)
    bad = TrainRanker(date=DAY1, window_days=2, rows_per_day=5000, num_iterations=1, learning_rate=1e-6,
                      num_leaves=2)
    assert build([good, bad])
    assert caravan_cli(["models", "promote", model_name, good.output().uri]) == 0
    assert caravan_cli(["models", "promote", model_name, bad.output().uri]) == 1
    assert "gate rejected" in capsys.readouterr().err
    assert open_pointer().read(model_name).artifact_id == good.output().id
    assert caravan_cli(["models", "promote", model_name, bad.output().uri, "--force"]) == 0
    assert open_pointer().read(model_name).document["action"] == "force"
    with pytest.raises(SystemExit):
        caravan_cli(["models", "promote"])


def test_the_pipeline_gate_stops_a_slow_decline_and_records_every_decision(model_name, local_root, test_specs):
    """PromoteModel through the gate-model step: the floor (best of the recent promotions) reaches the step."""
    from ..tiny_models import holdout_auc, make_dataset, make_model

    data = make_dataset(local_root, "d", {"s1": 1.0, "s2": 0.35, "s3": 0.35}, rows=6000)
    models = [make_model(local_root, data, features, name=name)
              for name, features in (("a", ["s1", "s2", "s3"]), ("b", ["s1", "s2"]), ("c", ["s1"]))]
    a, b, c = (holdout_auc(m, data) for m in models)
    assert a > b > c, (a, b, c)
    tolerance = (max(a - b, b - c) + (a - c)) / 2  # each step within it, the whole slide not
    pointer = open_pointer()
    decisions = []
    for model in models:
        task = PromoteModel(model=model_name, candidate=model.id, tolerance=tolerance)
        assert build([task])
        decisions.append(task.output().read_json("verdict.json"))
    assert [d["decision"] for d in decisions] == ["promote", "promote", "reject"]
    assert "slow decline" in decisions[2]["reasons"][0] and models[0].id in decisions[2]["reasons"][0]
    assert pointer.read(model_name).artifact_id == models[1].id
    assert [(h["action"], h["artifact_id"]) for h in pointer.history(model_name)] == [
        ("promote", models[0].id), ("promote", models[1].id), ("reject", models[2].id)]

    again = PromoteModel(model=model_name, candidate=models[1].id, tolerance=tolerance / 2)
    assert build([again])
    assert again.output().read_json("verdict.json")["decision"] == "already current"
    assert len(pointer.history(model_name)) == 3, "re-promoting the current model records nothing"
