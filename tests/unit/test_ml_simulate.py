"""caravan.ml.simulate: a deterministic, clearly simulated click log with a learnable signal."""

from __future__ import annotations

import datetime as dt
import io
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from caravan.ml.metrics import roc_auc
from caravan.ml.simulate import SIMULATED_SCHEMA, simulate_click_log
from caravan.ml.text import text_features, tokenize

DAY = dt.date(2026, 11, 22)
NUMERIC = ["user_id", "item_id", "item_price", "item_popularity", "user_activity", "position"]


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def log() -> pa.Table:
    return simulate_click_log(DAY, rows=40_000, seed=0)


def test_the_same_arguments_give_byte_identical_parquet():
    first = parquet_bytes(simulate_click_log(DAY, rows=3000, seed=5))
    assert parquet_bytes(simulate_click_log(DAY, rows=3000, seed=5)) == first
    assert parquet_bytes(simulate_click_log(DAY + dt.timedelta(days=1), rows=3000, seed=5)) != first
    assert parquet_bytes(simulate_click_log(DAY, rows=3000, seed=6)) != first


def test_schema_is_the_simulated_schema_and_is_labelled_simulated(log):
    assert log.schema.equals(SIMULATED_SCHEMA, check_metadata=True)
    assert SIMULATED_SCHEMA.metadata == {b"caravan.simulated": b"true"}
    assert SIMULATED_SCHEMA.names == ["event_id", "event_time", "user_id", "item_id", "item_title", "item_price",
                                      "item_popularity", "user_activity", "position", "clicked"]
    read_back = pq.read_table(io.BytesIO(parquet_bytes(log)))
    assert read_back.schema.equals(SIMULATED_SCHEMA, check_metadata=True)
    assert simulate_click_log(DAY, rows=0).schema.equals(SIMULATED_SCHEMA, check_metadata=True)


def test_columns_look_like_a_day_of_recommendations(log):
    rows = log.num_rows
    assert rows == 40_000
    assert all(log[name].null_count == 0 for name in log.column_names)
    ids = log["event_id"].to_pylist()
    assert len(set(ids)) == rows and ids[0] == f"{DAY}-0" and ids[-1] == f"{DAY}-{rows - 1}"
    times = log["event_time"]
    start = dt.datetime(DAY.year, DAY.month, DAY.day, tzinfo=dt.timezone.utc)
    assert pc.min(times).as_py() >= start and pc.max(times).as_py() < start + dt.timedelta(days=1)
    assert pc.all(pc.greater_equal(times[1:], times[:-1])).as_py()  # sorted by time
    users = log["user_id"].to_numpy()
    user_ids, per_user = np.unique(users, return_counts=True)
    assert rows / 20 * 0.8 <= len(user_ids) <= rows / 20
    assert per_user.max() > 10 * np.median(per_user)  # heavy-tailed activity
    assert 1500 <= len(np.unique(log["item_id"].to_numpy())) <= 2000
    positions = log["position"].to_numpy()
    assert positions.min() == 1 and positions.max() == 20
    assert np.all(log["item_price"].to_numpy() > 0) and np.all(log["item_popularity"].to_numpy() > 0)
    titles = log["item_title"].unique().to_pylist()
    assert all(3 <= len(tokenize(title)) <= 8 for title in titles)
    # one title per item
    pairs = pa.table({"i": log["item_id"], "t": log["item_title"]}).group_by(["i", "t"]).aggregate([])
    assert pairs.num_rows == len(np.unique(log["item_id"].to_numpy()))


def test_numeric_columns_cast_to_float32_exactly(log):
    # the pipeline's feature matrices are float32; ids must not lose precision (or fail a safe cast)
    for name in NUMERIC:
        if pa.types.is_integer(log[name].type):
            assert log[name].cast(pa.float32()).cast(log[name].type).equals(log[name]), name


def test_click_rate_and_position_bias(log):
    clicked = log["clicked"].to_numpy()
    assert set(np.unique(clicked)) == {0, 1}
    assert 0.10 <= clicked.mean() <= 0.20
    positions = log["position"].to_numpy()
    assert clicked[positions <= 3].mean() > 2 * clicked[positions >= 15].mean()


def test_a_million_rows_in_a_few_seconds():
    start = time.perf_counter()
    table = simulate_click_log(DAY, rows=1_000_000, seed=3)
    elapsed = time.perf_counter() - start
    assert table.num_rows == 1_000_000
    assert elapsed < 10, f"simulating a million rows took {elapsed:.1f}s"


def fit_auc(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    import lightgbm as lgb

    params = {"objective": "binary", "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 50, "seed": 0,
              "deterministic": True, "force_row_wise": True, "num_threads": 1, "verbosity": -1}
    booster = lgb.train(params, lgb.Dataset(train, y_train), num_boost_round=50)
    return roc_auc(y_test, booster.predict(test))


def test_lightgbm_learns_from_numeric_columns_and_title_words_add_to_it(log):
    # Observed on this log (seed 0, 40k rows, 30% test): numeric AUC 0.687; with the pipeline's default 32
    # hashed title features 0.717 (+0.030); with 64, 0.724 (+0.036). Seeds 0-4 give +0.03 to +0.04 (32).
    y = log["clicked"].to_numpy().astype(np.float64)
    numeric = np.column_stack([log[c].to_numpy().astype(np.float32) for c in NUMERIC])
    titles = text_features(log, "item_title", 32)
    with_text = np.column_stack([numeric] + [titles[c].to_numpy() for c in titles.column_names])
    is_test = np.random.default_rng(0).random(log.num_rows) < 0.3
    base = fit_auc(numeric[~is_test], y[~is_test], numeric[is_test], y[is_test])
    text = fit_auc(with_text[~is_test], y[~is_test], with_text[is_test], y[is_test])
    assert 0.6 < base < 0.8, base
    assert text - base >= 0.02, (base, text)


def test_items_and_users_are_the_same_people_every_day():
    first, second = (simulate_click_log(day, rows=4000, seed=2) for day in (DAY, DAY + dt.timedelta(days=1)))
    items = pa.concat_tables([first, second]).group_by(["item_id", "item_title", "item_price"]).aggregate([])
    assert items.num_rows == len(np.unique(np.concatenate([first["item_id"].to_numpy(), second["item_id"].to_numpy()])))
    users = pa.concat_tables([first, second]).group_by(["user_id", "user_activity"]).aggregate([])
    assert users.num_rows == len(np.unique(np.concatenate([first["user_id"].to_numpy(), second["user_id"].to_numpy()])))
    # a bigger day has more users, the same ones included
    bigger = simulate_click_log(DAY, rows=8000, seed=2)
    both = pa.concat_tables([first, bigger]).group_by(["user_id", "user_activity"]).aggregate([])
    assert both.num_rows == len(np.unique(np.concatenate([first["user_id"].to_numpy(), bigger["user_id"].to_numpy()])))
