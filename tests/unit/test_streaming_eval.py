"""Streaming evaluation (issue 14, third bullet) against the whole-split path, and under a memory limit.

The test split is read in record batches and scored batch by batch; the metrics must be those of the
whole-split path on any data and any batching (AUC exactly), and a split larger than a small address-space
limit must evaluate streaming where the whole-split path runs out.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.ml.features import feature_types
from caravan.ml.split_batches import SplitBatches
from caravan.step import StepContext
from caravan.storage import open_store
from jobs.evaluate import evaluate, evaluate_in_memory
from tests.streaming import publish, run_limited

FEATURES = ["f1", "f2", "words"]


def table(n: int, seed: int, positive_share: float = 0.3) -> tuple[pa.Table, pa.Table]:
    """A test split (features, label, user) and its text features (``words``, the same rows)."""
    rng = np.random.default_rng(seed)
    f1 = rng.normal(size=n)
    words = rng.integers(0, 3, n).astype(np.float64)  # few values: many tied scores
    clicked = (rng.random(n) < positive_share * (1 + np.tanh(f1 + words - 1))).astype(np.int64)
    split = pa.table({"f1": f1, "f2": pa.array(rng.integers(0, 4, n), mask=rng.random(n) < 0.1),
                      "clicked": clicked, "user_id": rng.integers(0, max(1, n // 6), n), "unused": rng.random(n)})
    return split, pa.table({"words": words})


@pytest.fixture(scope="module")
def model_files() -> dict[str, Any]:
    import lightgbm as lgb

    from caravan.ml.features import feature_matrix, labels

    split, text = table(4000, 99)
    train = split.append_column("words", text["words"])
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": 1, "num_leaves": 4,
                         "deterministic": True},
                        lgb.Dataset(feature_matrix(train, FEATURES), labels(train, "clicked"), feature_name=FEATURES),
                        num_boost_round=8)
    return {"model.txt": booster.model_to_string(), "curve.json": {"valid": {"auc": [0.6, 0.7]}},
            "features.json": {"label": "clicked", "features": feature_types(train, FEATURES)}}


def run(function: Any, root: str, inputs: dict[str, Artifact], params: dict[str, Any]) -> Artifact:
    artifact = Artifact(open_store(root), Address("EvaluateRanker", {"n": uuid.uuid4().hex}))
    writer = artifact.writer()
    function(StepContext(job="evaluate", output=artifact, writer=writer, inputs=inputs, params=params, run_id="t"))
    writer.publish()
    return Artifact(open_store(root), artifact.id)


def close(streamed: Any, whole: Any, path: str = "") -> None:
    """Equal up to float summation order: numbers to 1e-12 relative, everything else exactly."""
    if isinstance(whole, dict):
        assert streamed.keys() == whole.keys(), path
        for key in whole:
            close(streamed[key], whole[key], f"{path}.{key}")
    elif isinstance(whole, list):
        assert len(streamed) == len(whole), path
        for i, (a, b) in enumerate(zip(streamed, whole, strict=True)):
            close(a, b, f"{path}[{i}]")
    elif isinstance(whole, float):
        assert streamed == pytest.approx(whole, rel=1e-12, abs=1e-15), path
    else:
        assert streamed == whole, path


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(30, 1500), seed=st.integers(0, 2**16), batch_rows=st.sampled_from([7, 64, 1000, 65_536]),
       groups=st.sampled_from([(100, 37), (64, 1000), (1500, 1500)]), ranked=st.booleans())
def test_streamed_evaluation_equals_the_whole_split(local_root, tmp_path_factory, model_files, n, seed, batch_rows,
                                                    groups, ranked):
    tmp = tmp_path_factory.mktemp("eval")
    split, text = table(n, seed)
    # The split and its text features have different row groups: batches are cut apart and put back in step.
    dataset = publish(local_root, "PrepareDataset", {"test.parquet": (split, groups[0])}, tmp)
    words = publish(local_root, "ProcessText", {"text_test.parquet": (text, groups[1])}, tmp)
    model = publish(local_root, "TrainRanker", model_files, tmp, upstream={"dataset": dataset.id})
    inputs = {"dataset": dataset, "text": words, "model": model}
    params = {"group_column": "user_id", "k": 5, "batch_rows": batch_rows} if ranked else {"group_column": ""}
    if split["clicked"].to_numpy().min() == split["clicked"].to_numpy().max():
        with pytest.raises(ValueError, match="only one class"):
            run(evaluate, local_root, inputs, params)
        return
    streamed = run(evaluate, local_root, inputs, params)
    whole = run(evaluate_in_memory, local_root, inputs, params)
    assert streamed.read_json("metrics.json")["test_auc"] == whole.read_json("metrics.json")["test_auc"], "exact"
    for name in ("metrics.json", "calibration.json", "scores.json"):
        close(streamed.read_json(name), whole.read_json(name), name)
    assert streamed.read_bytes("evaluation.png").startswith(b"\x89PNG")
    assert streamed.metrics["rows_test"] == n


def test_split_batches_project_columns_and_keep_the_order_with_text_features(local_root, tmp_path):
    split, text = table(500, 3)
    dataset = publish(local_root, "PrepareDataset", {"test.parquet": (split, 90)}, tmp_path)
    words = publish(local_root, "ProcessText", {"text_test.parquet": (text, 130)}, tmp_path)
    with SplitBatches(dataset, words, "test", ["words", "f1", "nowhere", "clicked"], batch_rows=64) as batches:
        assert batches.rows == 500 and "unused" in batches.column_names
        parts = list(batches)
    assert all(part.num_rows <= 64 for part in parts)
    joined = pa.concat_tables(parts)
    assert joined.column_names == ["words", "f1", "clicked"], "projected, in the order asked, unknown ones left out"
    assert joined["f1"].to_pylist() == split["f1"].to_pylist()
    assert joined["words"].to_pylist() == text["words"].to_pylist()
    short = publish(local_root, "ProcessText", {"text_test.parquet": (text.slice(1), 130)}, tmp_path)
    with pytest.raises(ValueError, match="text features of test have 499 rows, the split has 500"), \
            SplitBatches(dataset, short, "test"):
        pass


# -- a test split larger than the memory the step may use ----------------------------------------------

LIMITED = textwrap.dedent("""
    import uuid
    import lightgbm, matplotlib.backends.backend_agg, numpy as np
    from caravan.addressing import Address
    from caravan.artifacts import Artifact
    from caravan.step import StepContext
    from caravan.storage import open_store
    import jobs.evaluate as step

    store = open_store("file://{store}")
    inputs = {{"dataset": Artifact(store, "{dataset}"), "model": Artifact(store, "{model}")}}
    booster = lightgbm.Booster(model_str=inputs["model"].read_text("model.txt"))
    booster.predict(np.zeros((4, 16)))  # LightGBM's threads started before the limit: their stacks are not data

    # Everything imported and started: the limit is what the data may add.
    limit_address_space({headroom_mb})
    artifact = Artifact(store, Address("EvaluateRanker", {{"n": uuid.uuid4().hex}}))
    writer = artifact.writer()
    try:
        getattr(step, "{function}")(StepContext(job="evaluate", output=artifact, writer=writer, inputs=inputs,
                                                params={{"group_column": ""}}, run_id="t"))
        writer.publish()
    except MemoryError as exc:
        print("MemoryError", exc)
        sys.exit(3)
    print("rows", artifact.metrics["rows_test"], "auc", artifact.metrics["test_auc"])
    with open("/proc/self/status") as status:
        print(next(line for line in status if line.startswith("VmHWM:")).strip())
""")


def limited(function: str, store: str, dataset: str, model: str, headroom_mb: int) -> subprocess.CompletedProcess[str]:
    code = LIMITED.format(store=store, dataset=dataset, model=model, function=function, headroom_mb=headroom_mb)
    # run_limited's allocator settings (see there), and one OpenMP thread.
    return run_limited(code, env={"OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"})


def test_a_test_split_larger_than_the_memory_limit_evaluates_streaming_and_fails_whole(local_root, tmp_path):
    import lightgbm as lgb

    n, width = 1_000_000, 16
    rng = np.random.default_rng(0)
    columns = {f"f{i}": rng.random(n) for i in range(width)}
    clicked = (rng.random(n) < 0.2 + 0.6 * (columns["f0"] > 0.5)).astype(np.int8)
    split = pa.table({**columns, "clicked": clicked})  # 136 MB in Arrow; the whole path adds a matrix and copies
    names = list(columns)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "num_leaves": 4},
                        lgb.Dataset(np.column_stack([columns[c][:5000] for c in names]), clicked[:5000],
                                    feature_name=names), num_boost_round=5)
    dataset = publish(local_root, "PrepareDataset", {"test.parquet": (split, 131_072)}, tmp_path)
    del split, columns
    model = publish(local_root, "TrainRanker", {
        "model.txt": booster.model_to_string(), "curve.json": {},
        "features.json": {"label": "clicked", "features": [{"name": c, "type": "double"} for c in names]}},
        tmp_path, upstream={"dataset": dataset.id})
    store = open_store(local_root).root.as_posix()  # type: ignore[attr-defined]
    streamed = limited("evaluate", store, dataset.id, model.id, headroom_mb=250)
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    assert f"rows {n} " in streamed.stdout
    whole = limited("evaluate_in_memory", store, dataset.id, model.id, headroom_mb=250)
    assert whole.returncode == 3, whole.stdout + whole.stderr
    print(json.dumps({"streamed": streamed.stdout.splitlines()[-1], "whole": whole.stdout.strip()}))
