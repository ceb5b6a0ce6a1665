"""`caravan experiment start|status|stop` and `caravan models list` with tiny real models, on both backends."""

from __future__ import annotations

import json

import pytest

from caravan.cli import main as caravan
from caravan.experiments import experiment_store
from caravan.registry import open_pointer

from ..tiny_models import make_dataset, make_model

SIGNAL = {"s1": 1.0, "s2": 0.6, "s3": 0.3}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("caravan: ") and "\n" not in err and "Traceback" not in err, err
    return err


def listing(model: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    capsys.readouterr()
    assert caravan(["models", "list", model, "--json"]) == 0
    return {v["artifact_id"]: v["status"] for v in json.loads(capsys.readouterr().out)}


@pytest.fixture
def models(local_root):
    """Two models of one dataset with the same schema and similar quality."""
    data = make_dataset(local_root, "d", SIGNAL)
    return [make_model(local_root, data, list(SIGNAL), name=n, iterations=i) for n, i in (("a", 20), ("b", 22))]


def test_an_experiment_from_start_to_a_promoted_winner(pointer_kind, model_name, models, capsys):
    a, b = models
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm",
                    f"challenger={b.uri}", "--weights", "50,50", "--policy", "thompson", "--reward", "click"]) == 0
    assert "experiment started" in capsys.readouterr().out
    store = experiment_store()
    exp, _ = store.read(model_name)
    assert exp.state == "running" and exp.policy == "thompson" and exp.reward == "click"
    assert [(x.name, x.artifact_id, x.weight) for x in exp.arms] == [("control", a.id, 0.5), ("challenger", b.id, 0.5)]
    assert listing(model_name, capsys) == {a.id: "production", b.id: "ab:challenger"}

    # Two gateways report their counters; status merges them.
    store.put_stats(model_name, "gw-1", {"control": (20, 480), "challenger": (30, 470)}, salt=exp.salt)
    store.put_stats(model_name, "gw-2", {"control": (20, 480), "challenger": (40, 460)}, salt=exp.salt)
    capsys.readouterr()
    assert caravan(["experiment", "status", model_name, "--json"]) == 0
    arms = {x["name"]: x for x in json.loads(capsys.readouterr().out)["arms"]}
    assert (arms["control"]["requests"], arms["control"]["rewards"]) == (1000, 40)
    assert (arms["challenger"]["requests"], arms["challenger"]["rewards"]) == (1000, 70)
    assert arms["challenger"]["low"] < 0.07 < arms["challenger"]["high"]
    assert arms["challenger"]["prob_best"] > 0.99 and arms["challenger"]["traffic"] > 0.9
    assert caravan(["experiment", "status", model_name]) == 0
    table = capsys.readouterr().out
    assert "P(best)" in table and "7.00% [" in table

    assert caravan(["experiment", "stop", model_name, "--winner", "challenger", "--tolerance", "1"]) == 0
    assert f"{b.id} promoted" in capsys.readouterr().out
    assert open_pointer().read(model_name).artifact_id == b.id
    ended, _ = store.read(model_name)
    assert ended.state == "stopped" and ended.winner == "challenger"
    actions = [e["action"] for e in open_pointer().history(model_name)]
    assert actions == ["promote", "experiment-start", "promote", "experiment-stop"]
    stop_entry = open_pointer().history(model_name)[-1]
    assert stop_entry["results"]["challenger"] == {"requests": 1000, "rewards": 70,
                                                   "prob_best": pytest.approx(1.0, abs=0.01)}
    assert listing(model_name, capsys) == {b.id: "production", a.id: "retired"}
    assert caravan(["experiment", "status", model_name]) == 1
    assert "no running experiment" in one_line_error(capsys)


def test_a_losing_challenger_is_rejected_and_the_control_keeps_serving(pointer_kind, model_name, models, capsys):
    a, b = models
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"new={b.uri}",
                    "--policy", "fixed"]) == 0
    before = open_pointer().read(model_name).version
    assert caravan(["experiment", "stop", model_name, "--winner", "control"]) == 0
    assert "nothing promoted" in capsys.readouterr().out
    assert open_pointer().read(model_name).version == before
    assert listing(model_name, capsys) == {a.id: "production", b.id: "rejected"}


def test_errors_are_one_clear_line(pointer_kind, model_name, models, local_root, capsys):
    a, b = models
    capsys.readouterr()
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"c={b.uri}"]) == 1
    assert "has no current model" in one_line_error(capsys)
    assert experiment_store().read(model_name) == (None, 0)

    assert caravan(["models", "promote", model_name, a.uri]) == 0
    other = make_dataset(local_root, "other", {"mean_radius": 1.0, "mean_texture": 0.5})
    breaking = make_model(local_root, other, ["mean_radius", "mean_texture"], name="breaking")
    capsys.readouterr()
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm",
                    f"c={breaking.uri}"]) == 1
    error = one_line_error(capsys)
    assert "arm 'c'" in error and "breaks the serving schema" in error and "mean_radius" in error
    assert experiment_store().read(model_name) == (None, 0)

    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"c={b.uri}",
                    "--weights", "1,2,3"]) == 1
    assert "3 values for 2 arms" in one_line_error(capsys)
    assert caravan(["experiment", "start", model_name, "--arm", "control=current"]) == 1
    assert "at least two arms" in one_line_error(capsys)

    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"c={b.uri}"]) == 0
    capsys.readouterr()
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"c={b.uri}"]) == 1
    assert "already has a running experiment" in one_line_error(capsys)
    assert caravan(["experiment", "stop", model_name, "--winner", "nobody"]) == 1
    error = one_line_error(capsys)
    assert "no arm 'nobody'" in error and "control, c" in error
    assert experiment_store().read(model_name)[0].state == "running"


def test_a_winner_the_gate_rejects_is_recorded_and_the_experiment_keeps_running(pointer_kind, model_name, models,
                                                                                 local_root, capsys):
    a, _ = models
    data = make_dataset(local_root, "d", SIGNAL)
    weak = make_model(local_root, data, ["s3"], name="weak")  # same schema subset, much lower holdout AUC
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    assert caravan(["experiment", "start", model_name, "--arm", "control=current", "--arm", f"weak={weak.uri}"]) == 0
    capsys.readouterr()
    assert caravan(["experiment", "stop", model_name, "--winner", "weak"]) == 1
    error = one_line_error(capsys)
    assert "gate rejected the winner 'weak'" in error and "keeps running" in error
    assert open_pointer().read(model_name).artifact_id == a.id
    assert experiment_store().read(model_name)[0].state == "running"
    assert open_pointer().history(model_name)[-1]["action"] == "reject"
    assert listing(model_name, capsys) == {a.id: "production", weak.id: "ab:weak"}
