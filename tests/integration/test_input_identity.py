"""Bring-your-own tables end to end: a changed input rebuilds, an untouched one does not, bad labels publish nothing."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from luigi.task_register import Register

from caravan import StepFailed, open_store
from pipelines.tabular import PrepareTable, TrainTabular

from ..servers import build

SMALL = {"label": "y", "num_iterations": 8, "min_data_in_leaf": 5, "early_stopping_rounds": 5}


def table_bytes(seed: int, rows: int = 200, **extra: list) -> bytes:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=rows)
    table = pa.table({"x": x, "z": rng.normal(size=rows), "y": (x + rng.normal(size=rows) > 0).astype("int8"),
                      **extra})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def fresh(task):
    """The same task built anew, as a new `luigi` command would (luigi keeps instances per process)."""
    Register.clear_instance_cache()
    return type(task)(**task.param_kwargs)


def test_rewriting_a_table_rebuilds_the_model_and_an_untouched_table_rebuilds_nothing(local_root, test_specs,
                                                                                      tmp_path):
    path = tmp_path / "table.parquet"
    path.write_bytes(table_bytes(seed=1))
    task = TrainTabular(dataset=str(path), **SMALL)
    assert build([task])
    first = task.output().manifest()
    dataset_first = task.requires()["dataset"].output().manifest()
    assert dataset_first["upstream"]["table"][0]["files"] == 1
    assert dataset_first["input_fingerprints"][str(path)]["file_list"][0][1] == path.stat().st_size

    again = fresh(task)
    assert again.output().id == task.output().id
    assert build([again])
    assert again.output().manifest()["attempt"] == first["attempt"], "nothing was rebuilt"

    path.write_bytes(table_bytes(seed=2))
    changed = fresh(task)
    assert changed.output().id != task.output().id, "a rewritten table gives the model a new address"
    assert not changed.complete()
    assert build([changed])
    assert changed.output().manifest()["run_id"] and task.output().exists(), "the old model stays as it was"


def test_a_changed_input_gets_a_new_address_on_every_store(store_root, test_specs):
    store = open_store(store_root)
    store.write("data/table/part-0.parquet", table_bytes(seed=1))
    task = PrepareTable(dataset=store.uri("data/table/"), label="y")
    assert build([task], workers=1)
    untouched = fresh(task)
    assert untouched.output().id == task.output().id and untouched.complete()
    store.write("data/table/_SUCCESS", b"")  # markers are not data
    assert fresh(task).complete()
    store.write("data/table/part-0.parquet", table_bytes(seed=3))
    changed = fresh(task)
    assert changed.output().id != task.output().id
    assert not changed.complete(), "the step would run again on the new data"


@pytest.mark.parametrize(("label", "extra", "rows", "reason"), [
    ("tagret", {"target": [0, 1] * 100}, 200, "label column 'tagret' is not in the table; did you mean"),
    ("answer", {"answer": ["yes", "no"] * 100}, 200, "label column 'answer' is string"),
    ("y", {}, 0, "the input table has no rows"),
    ("y", {}, 12, "split has"),
])
def test_a_table_that_cannot_train_publishes_nothing_and_says_why(local_root, test_specs, tmp_path, label, extra,
                                                                  rows, reason):
    path = tmp_path / "table.parquet"
    path.write_bytes(table_bytes(seed=1, rows=rows, **extra))
    task = PrepareTable(dataset=str(path), label=label)
    with pytest.raises(StepFailed) as info:
        task.run()
    assert reason in str(info.value)
    assert "KeyError" not in str(info.value)
    assert not task.output().exists()


def test_a_relative_dataset_path_names_the_same_table_in_the_address_and_in_the_step(local_root, test_specs, tmp_path,
                                                                                     monkeypatch):
    """`--dataset table.parquet` from the folder holding it, as a data scientist types it: the step runs in a folder
    of its own, so the path is made absolute when the task is created."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.parquet").write_bytes(table_bytes(seed=1))
    monkeypatch.chdir(tmp_path)
    task = PrepareTable(dataset="data/table.parquet", label="y")
    assert task.dataset == str(tmp_path / "data" / "table.parquet")
    assert build([task], workers=1)
    assert str(tmp_path / "data" / "table.parquet") in task.output().manifest()["input_fingerprints"]
