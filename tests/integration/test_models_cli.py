"""`caravan models ...` on both pointer backends, with tiny real models: the gate, rollback, corrupt pointers."""

from __future__ import annotations

import json

import pytest

from caravan.cli import main as caravan
from caravan.registry import open_pointer

from ..contract.test_pointer_contract import write_raw_pointer
from ..tiny_models import make_dataset, make_evaluation, make_model

SIGNAL = {"s1": 1.0, "s2": 0.6, "s3": 0.3}


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("caravan: ") and "\n" not in err and "Traceback" not in err, err
    return err


def history(model: str, capsys: pytest.CaptureFixture[str]) -> list[dict]:
    capsys.readouterr()
    assert caravan(["models", "history", model, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def models(local_root):
    """Three interchangeable models of one dataset (same schema, similar quality), and the dataset."""
    data = make_dataset(local_root, "d", SIGNAL)
    return [make_model(local_root, data, list(SIGNAL), name=n, iterations=i)
            for n, i in (("a", 20), ("b", 21), ("c", 22))], data


def test_rollback_walks_back_through_history_and_never_forward(pointer_kind, model_name, models, capsys):
    (a, b, c), _ = models
    for model in (a, b, c):
        assert caravan(["models", "promote", model_name, model.uri, "--tolerance", "1"]) == 0
    pointer = open_pointer()
    assert pointer.read(model_name).artifact_id == c.id

    assert caravan(["models", "rollback", model_name]) == 0
    assert pointer.read(model_name).artifact_id == b.id
    assert caravan(["models", "rollback", model_name]) == 0
    assert pointer.read(model_name).artifact_id == a.id, "a second rollback goes further back, not to C"
    capsys.readouterr()
    assert caravan(["models", "rollback", model_name]) == 1
    assert "nothing earlier to roll back to" in one_line_error(capsys)
    assert pointer.read(model_name).artifact_id == a.id

    entries = history(model_name, capsys)
    states = {(e["action"], e["artifact_id"]): e["state"] for e in entries}
    assert states[("promote", b.id)] == states[("promote", c.id)] == "rolled back"
    assert states[("promote", a.id)] == "current"
    assert caravan(["models", "history", model_name]) == 0
    assert "rolled back" in capsys.readouterr().out

    # --to picks one: forward to a rolled-back model on purpose, then back to A by id.
    assert caravan(["models", "rollback", model_name, "--to", c.id]) == 0
    assert pointer.read(model_name).artifact_id == c.id
    assert caravan(["models", "rollback", model_name, "--to", a.id]) == 0
    assert pointer.read(model_name).artifact_id == a.id
    capsys.readouterr()
    assert caravan(["models", "rollback", model_name, "--to", "TrainRanker/name=never"]) == 1
    assert "was never the current model" in one_line_error(capsys)


def test_re_promoting_the_current_model_is_a_no_op_that_says_so(pointer_kind, model_name, models, capsys):
    (a, _, _), _ = models
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    before = open_pointer().read(model_name)
    capsys.readouterr()
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    assert "already serves" in capsys.readouterr().out
    assert open_pointer().read(model_name).version == before.version
    assert [e["action"] for e in history(model_name, capsys)] == ["promote"]


def test_a_rejection_from_the_cli_is_one_line_and_recorded(pointer_kind, model_name, local_root, capsys):
    data = make_dataset(local_root, "d", {"s1": 1.0, "s2": 1.0})
    good = make_model(local_root, data, ["s1", "s2"], name="good")
    weak = make_model(local_root, data, ["s2"], name="weak")
    assert caravan(["models", "promote", model_name, good.uri]) == 0
    capsys.readouterr()
    assert caravan(["models", "promote", model_name, weak.uri, "--tolerance", "0.01"]) == 1
    error = one_line_error(capsys)
    assert "gate rejected" in error and "worse than the current model's" in error
    assert open_pointer().read(model_name).artifact_id == good.id
    last = history(model_name, capsys)[-1]
    assert (last["action"], last["artifact_id"], last["current_artifact_id"]) == ("reject", weak.id, good.id)


def test_a_breaking_schema_change_needs_allow_schema_change_and_history_says_so(pointer_kind, model_name,
                                                                                local_root, capsys):
    ranker_data = make_dataset(local_root, "ranker", {"position": -0.8, "item_price": -0.5}, integer=("position",))
    tabular_data = make_dataset(local_root, "tabular", {"mean_radius": 1.2, "mean_texture": 0.6})
    ranker = make_model(local_root, ranker_data, ["position", "item_price"], name="ranker")
    tabular = make_model(local_root, tabular_data, ["mean_radius", "mean_texture"], name="tabular")
    assert caravan(["models", "promote", model_name, ranker.uri]) == 0
    capsys.readouterr()
    assert caravan(["models", "promote", model_name, tabular.uri]) == 1
    error = one_line_error(capsys)
    assert "breaking serving-schema change" in error and "mean_radius" in error and "mean_texture" in error
    assert open_pointer().read(model_name).artifact_id == ranker.id

    assert caravan(["models", "promote", model_name, tabular.uri, "--allow-schema-change"]) == 0
    current = open_pointer().read(model_name).document
    assert current["artifact_id"] == tabular.id
    assert {c.split()[0] for c in current["schema_change"]} == {"mean_radius", "mean_texture"}
    last = history(model_name, capsys)[-1]
    assert last["action"] == "promote" and "schema change allowed" in last["reason"]


def test_force_skips_the_comparison_but_refuses_what_is_not_a_model(pointer_kind, model_name, models, local_root,
                                                                    capsys):
    (a, _, _), data = models
    weak = make_model(local_root, data, ["s3"], name="weak")
    crasher = make_model(local_root, data, list(SIGNAL), name="crasher", crash="left_child_out_of_range")
    evaluation = make_evaluation(local_root, a)
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    capsys.readouterr()
    assert caravan(["models", "promote", model_name, evaluation.uri, "--force"]) == 1
    assert "is not a model: a EvaluateRanker artifact" in one_line_error(capsys)
    # A model file that makes LightGBM abort: refused, and this process (the CLI) is still alive to say so.
    assert caravan(["models", "promote", model_name, crasher.uri, "--force"]) == 1
    assert "crashed the probe process" in one_line_error(capsys)
    assert caravan(["models", "promote", model_name, crasher.uri]) == 1
    assert "crashed the probe process" in one_line_error(capsys)
    assert open_pointer().read(model_name).artifact_id == a.id
    rejected = [e["artifact_id"] for e in history(model_name, capsys) if e["action"] == "reject"]
    assert rejected == [evaluation.id, crasher.id, crasher.id], "every decision is one history entry"

    assert caravan(["models", "promote", model_name, weak.uri, "--force"]) == 0, "the comparison is skipped"
    assert open_pointer().read(model_name).document["action"] == "force"


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_pointer_is_one_line_for_every_command_and_force_repairs_it(pointer_kind, model_name, models,
                                                                              capsys, damage):
    from ..contract.test_pointer_contract import CORRUPT

    (a, b, _), _ = models
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    good = open_pointer().read(model_name)
    raw = json.dumps({"version": good.version, "document": good.document} if pointer_kind == "file"
                     else good.document).encode()
    write_raw_pointer(pointer_kind, model_name, CORRUPT[damage](raw))
    capsys.readouterr()
    for command in (["current"], ["current", "--json"], ["rollback"], ["promote", b.uri, "--tolerance", "1"]):
        assert caravan(["models", command[0], model_name, *command[1:]]) == 1, command
        error = one_line_error(capsys)
        assert "is corrupt" in error and "--force" in error, (command, error)
    assert caravan(["models", "history", model_name]) == 0
    captured = capsys.readouterr()
    assert "promote" in captured.out and "is corrupt" in captured.err and captured.err.count("\n") == 1

    assert caravan(["models", "promote", model_name, b.uri, "--force"]) == 0
    assert open_pointer().read(model_name).artifact_id == b.id
    assert caravan(["models", "current", model_name]) == 0
    assert "replaced a corrupt pointer" in history(model_name, capsys)[-1]["reason"]


def test_cli_promote_and_rollback_wait_for_the_promotion_lock(pointer_kind, model_name, models, capsys):
    (a, b, _), _ = models
    assert caravan(["models", "promote", model_name, a.uri]) == 0
    capsys.readouterr()
    with open_pointer().lock(model_name, holder="a pipeline run", timeout_s=5):
        for command in (["promote", model_name, b.uri, "--tolerance", "1"], ["rollback", model_name]):
            assert caravan(["models", *command, "--lock-timeout", "0.3"]) == 1
            error = one_line_error(capsys)
            assert "promotion lock" in error and "held" in error, error
    assert open_pointer().read(model_name).artifact_id == a.id


def test_rollback_decides_its_target_again_after_a_lost_race(pointer_kind, model_name, local_root, monkeypatch):
    """Someone else promotes D between the rollback's read and its check-and-set: it rolls back D, to C."""
    import caravan.registry as registry

    data = make_dataset(local_root, "d", SIGNAL)
    a, b, c, d = (make_model(local_root, data, list(SIGNAL), name=n, iterations=i)
                  for n, i in (("a", 20), ("b", 21), ("c", 22), ("d", 23)))
    for model in (a, b, c):
        assert caravan(["models", "promote", model_name, model.uri, "--tolerance", "1"]) == 0
    real_open = registry.open_pointer

    class RacedOnce:
        """The CLI's pointer: its first check-and-set comes just after another writer's promotion of D."""

        def __init__(self) -> None:
            self.inner = real_open()
            self.raced = False

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def compare_and_set(self, model: str, document: dict, expected_version: int):
            if not self.raced:
                self.raced = True
                other = real_open()
                other.set_if(model, {"artifact_id": d.id, "artifact_uri": d.uri, "action": "promote"},
                             other.read(model))
            return self.inner.compare_and_set(model, document, expected_version)

        def set_if(self, model, document, state):  # ModelPointer.set_if calls compare_and_set on self
            return type(self.inner).set_if(self, model, document, state)

        def change(self, model, decide, attempts=10):
            return type(self.inner).change(self, model, decide, attempts)

    monkeypatch.setattr(registry, "open_pointer", RacedOnce)
    assert caravan(["models", "rollback", model_name]) == 0
    current = real_open().read(model_name)
    assert current.artifact_id == c.id, "the target was decided again against D, not applied stale (B)"
    assert current.document["previous_artifact_id"] == d.id
