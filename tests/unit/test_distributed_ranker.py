"""TrainRanker --num-machines: N = 1 keeps today's address, meta and job byte for byte; N > 1 is another model."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from caravan.errors import ConfigurationError
from pipelines.ranker import EvaluateRanker, GridSearchRanker, TrainRanker

DAY = dt.date(2026, 11, 22)
# Taken from the code before --num-machines existed (commit dc28641): N = 1 must never move them.
TRAIN_ID = ("TrainRanker/date=2026-11-22/feature_fraction=0.9,learning_rate=0.05,min_data_in_leaf=50,"
            "num_iterations=300,num_leaves=31,objective=binary--2981b7550a2622c2")
EVALUATE_ID = ("EvaluateRanker/date=2026-11-22/feature_fraction=0.9,learning_rate=0.05,min_data_in_leaf=50,"
               "num_iterations=300,num_leaves=31,objective=binary--7aa9c4c595f9d8c1")
PARAMS = {"early_stopping_rounds": 30, "exclude": ["event_id", "event_time", "clicked", "item_title"],
          "feature_fraction": 0.9, "label": "clicked", "learning_rate": 0.05, "min_data_in_leaf": 50,
          "num_iterations": 300, "num_leaves": 31, "num_threads": 1, "objective": "binary", "seed": 7}


def test_one_machine_keeps_the_address_the_params_and_the_job_it_always_had(local_root: str) -> None:
    for task in (TrainRanker(date=DAY), TrainRanker(date=DAY, num_machines=1)):
        assert task.output().id == TRAIN_ID
        assert task.hyperparameters() == PARAMS
        meta = task.meta()
        assert json.loads(meta["caravan_job"])["name"] == "train-lightgbm"
        assert "num_machines" not in json.loads(meta["caravan_identity"])["params"]
    assert EvaluateRanker(date=DAY).output().id == EVALUATE_ID


def test_n_machines_is_in_the_digest_and_the_manifest_params_and_reaches_every_task_downstream(local_root: str) -> None:
    two, three = TrainRanker(date=DAY, num_machines=2), TrainRanker(date=DAY, num_machines=3)
    ids = {TRAIN_ID, two.output().id, three.output().id}
    assert len(ids) == 3
    assert two.output().id.rsplit("--", 1)[0] == TRAIN_ID.rsplit("--", 1)[0]  # the path shows what it showed
    assert two.address().params["num_machines"] == "2"
    assert two.hyperparameters() == PARAMS  # the ranks learn N from their gang meta, not from the params
    evaluation = EvaluateRanker(date=DAY, num_machines=2)
    assert evaluation.requires()["model"].output().id == two.output().id
    assert evaluation.output().id != EVALUATE_ID
    grid = GridSearchRanker(date=DAY, num_machines=2)
    assert {e.requires()["model"].num_machines for e in grid.requires()} == {2}


def test_fewer_than_one_machine_is_one_clear_error(local_root: str) -> None:
    with pytest.raises(ConfigurationError, match="num_machines must be at least 1, not 0"):
        TrainRanker(date=DAY, num_machines=0)


def test_the_distributed_spec_takes_the_gang_meta_and_gives_each_allocation_a_host_network_port() -> None:
    from pathlib import Path

    import hcl2

    from caravan.executors.jobspec import parse_spec, plain_hcl
    from caravan.ml.distributed import GANG_META, PORT_LABEL

    path = Path(__file__).resolve().parents[2] / "nomad" / "train-lightgbm-distributed.nomad.hcl"
    spec = parse_spec("train-lightgbm-distributed", path)
    assert spec.ports == (PORT_LABEL,)
    assert set(GANG_META) <= set(spec.meta_required)
    assert spec.args == ("-m", "jobs.train_lightgbm", "distributed")
    ((_, job),) = plain_hcl(hcl2.loads(path.read_text()))["job"][0].items()
    ((_, group),) = job["group"][0].items()
    ((_, task),) = group["task"][0].items()
    # LightGBM finds its rank among the machines by the node's own address: no bridge, no port mapping.
    assert group["network"][0]["mode"] == "host" and task["config"][0]["network_mode"] == "host"
    assert group["restart"][0]["attempts"] == 0 and group["reschedule"][0]["attempts"] == 0


def test_a_local_gang_takes_n_local_step_slots_but_never_more_than_there_are(
        local_root: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import luigi

    monkeypatch.setenv("CARAVAN_EXECUTOR", "local")
    config = luigi.configuration.get_config()  # luigi's one config: whatever the test sets is put back below
    had = config.has_option("resources", "caravan_local_steps")
    before = config.get("resources", "caravan_local_steps") if had else None
    if not config.has_section("resources"):
        config.add_section("resources")
    try:
        config.set("resources", "caravan_local_steps", "2")
        assert TrainRanker(date=DAY).resources == {"caravan_local_steps": 1}
        assert TrainRanker(date=DAY, num_machines=2).resources == {"caravan_local_steps": 2}
        assert TrainRanker(date=DAY, num_machines=3).resources == {"caravan_local_steps": 2}
        config.remove_option("resources", "caravan_local_steps")
        assert TrainRanker(date=DAY, num_machines=3).resources == {"caravan_local_steps": 3}
        monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
        assert TrainRanker(date=DAY, num_machines=3).resources == {}
    finally:
        if had:
            config.set("resources", "caravan_local_steps", str(before))
        else:
            config.remove_option("resources", "caravan_local_steps")
