"""Streaming preparation against the whole-table path and exact computations (issue 14, first bullet).

Hash splits must be the same rows in the same order; time cut points exact (the KLL sketch brackets
them within its rank error, a pass over the time column picks the value); statistics exact or within
the errors caravan.ml.sketches states; and a window larger than a small address-space limit completes
streaming where the whole-table path runs out.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.ml.sketches import KLL_K, TableSketch, rank_error
from caravan.ml.stats import _bin_shares, column_stats
from caravan.step import StepContext
from caravan.storage import open_store
from jobs.prepare_dataset import DataCheckFailed, prepare, prepare_in_memory
from tests.streaming import run_limited

EPS = rank_error()
DAY = dt.datetime(2026, 3, 1, tzinfo=dt.timezone.utc)


def events(n: int, seed: int, *, keys: int = 50, null_share: float = 0.1, key_nulls: float = 0.0) -> pa.Table:
    """A click-log-like table: key, numbers with nulls and NaN, few and many strings, time, 0/1 label."""
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, n)
    x[rng.random(n) < 0.05] = np.nan
    micros = np.sort(rng.integers(0, 86_400_000_000, n))
    return pa.table({
        "user": pa.array(rng.integers(0, keys, n), mask=rng.random(n) < key_nulls),
        "x": pa.array(x, mask=rng.random(n) < null_share),
        "level": pa.array(rng.integers(0, 4, n).astype(np.int32)),
        "colour": pa.array(rng.choice(["red", "green", "blue"], n)),
        "note": pa.array([f"n{v}" for v in rng.integers(0, 10_000, n)]),
        "event_time": pa.array(DAY + dt.timedelta(microseconds=int(m)) for m in micros).cast(pa.timestamp("us", "UTC")),
        "clicked": pa.array((np.arange(n) % 3 == 0).astype(np.int8)),
    })


def write_sources(folder: Path, table: pa.Table, files: int, row_group: int) -> str:
    """``table`` as ``files`` Parquet files in one folder (small row groups), its URI."""
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, table.num_rows, files + 1).astype(int)
    for i in range(files):
        pq.write_table(table.slice(bounds[i], bounds[i + 1] - bounds[i]), folder / f"part-{i}.parquet",
                       row_group_size=row_group)
    return f"file://{folder}/"


def run(step: Any, root: Path, uri: str, **params: Any) -> Artifact:
    """Run the prepare function ``step`` on ``uri`` into a fresh artifact under ``root``; return it published."""
    artifact = Artifact(open_store(f"file://{root}"), Address("PrepareDataset", {"n": uuid.uuid4().hex}))
    writer = artifact.writer()
    full = {"sources": [uri], "split": "hash", "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 7,
            "label": "clicked", "time_column": "event_time", "min_rows": 1, "batch_rows": 37, "row_group_rows": 50,
            **params}
    step(StepContext(job="prepare-dataset", output=artifact, writer=writer, inputs={}, params=full, run_id="t"))
    writer.publish()
    return artifact


def splits(artifact: Artifact) -> dict[str, pa.Table]:
    return {s: artifact.read_parquet(f"{s}.parquet") for s in ("train", "valid", "test")}


def both(root: Path, uri: str, **params: Any) -> tuple[Artifact, Artifact] | None:
    """The streamed and the whole-table artifacts; None when both refused the data with the same message."""
    outcomes: list[Any] = []
    for step in (prepare, prepare_in_memory):
        try:
            outcomes.append(run(step, root, uri, **params))
        except DataCheckFailed as exc:
            outcomes.append(str(exc))
    streamed, whole = outcomes
    if isinstance(streamed, str) or isinstance(whole, str):
        assert streamed == whole
        return None
    return streamed, whole


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(30, 400), seed=st.integers(0, 10_000), files=st.integers(1, 3), key=st.sampled_from(["user", ""]),
       key_nulls=st.sampled_from([0.0, 0.01, 0.2]))
def test_a_hash_split_streams_the_same_rows_in_the_same_order(n, seed, files, key, key_nulls):
    table = events(n, seed, key_nulls=key_nulls)  # a null key now and then: its batch alone cannot tell
    with tempfile.TemporaryDirectory() as folder:
        uri = write_sources(Path(folder, "in"), table, files, row_group=23)
        pair = both(Path(folder, "out"), uri, key=key)
        if pair is None:
            return
        streamed, whole = pair
        for split, part in splits(streamed).items():
            other = splits(whole)[split]
            # Same schema, rows and order (compared as text: NaN equals NaN there, not in Table.equals).
            assert part.schema == other.schema and repr(part.to_pylist()) == repr(other.to_pylist()), split
            assert part.num_rows == streamed.metrics[f"rows_{split}"]
        assert streamed.read_json("schema.json") == whole.read_json("schema.json")
        assert streamed.metrics["label_rate"] == whole.metrics["label_rate"]
        check_stats(streamed.read_json("stats.json"), table)


def test_split_files_have_row_groups_of_the_fixed_size(tmp_path):
    artifact = run(prepare, tmp_path / "out", write_sources(tmp_path / "in", events(1000, 1), 2, 77))
    meta = pq.ParquetFile(artifact.file_uri("train.parquet").removeprefix("file://")).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sizes[:-1] == [50] * (len(sizes) - 1) and 0 < sizes[-1] <= 50, sizes


def exact_rank_window(values: np.ndarray, cut: float) -> tuple[float, float]:
    """Share of ``values`` strictly below ``cut`` and at or below it."""
    return float(np.mean(values < cut)), float(np.mean(values <= cut))


def check_stats(stats: dict[str, Any], table: pa.Table) -> None:
    """Streamed statistics against the exact ones: equal, float-close, or within the sketches' errors."""
    exact = column_stats(table)
    assert stats.keys() == exact.keys()
    for name, want in exact.items():
        got = stats[name]
        for field in ("type", "kind", "count", "nulls", "non_finite", "min", "max", "min_length", "max_length"):
            assert got.get(field) == want.get(field), (name, field)
        if want["kind"] == "numeric" and want["mean"] is not None:
            assert got["mean"] == pytest.approx(want["mean"], rel=1e-9, abs=1e-9)
            assert got["std"] == pytest.approx(want["std"], rel=1e-9, abs=1e-9)
            values = table[name].drop_null().cast(pa.float64()).to_numpy(zero_copy_only=False)
            values = values[np.isfinite(values)]
            if len(np.unique(values)) <= 10:
                assert got["edges"] == pytest.approx(want["edges"]) and got["fractions"] == pytest.approx(
                    want["fractions"])
                continue
            edges = np.array(got["edges"])
            assert edges[0] == values.min() and edges[-1] == values.max()
            for edge, q in zip(edges[1:-1], np.linspace(0, 1, 11)[1:-1], strict=False):
                below, upto = exact_rank_window(values, edge)
                assert below - EPS <= q or upto + EPS >= q  # some rank of the edge is within EPS of q
            shares, _, _ = _bin_shares(edges, values)
            assert np.allclose(got["fractions"], shares, atol=2 * EPS)
            assert sum(got["fractions"]) == pytest.approx(1.0)
        if want["kind"] == "string":
            assert abs(got["distinct"] - want["distinct"]) <= max(1, 0.05 * want["distinct"]), name
            if want["distinct"] <= 100:
                assert got["top"] == want["top"], name


def test_time_cut_points_of_a_compacted_sketch_are_still_the_exact_quantiles(tmp_path):
    n = 60_000  # well past the sketch's k: it compacts, the cut points are estimates
    table = events(n, 3)
    artifact = run(prepare, tmp_path / "out", write_sources(tmp_path / "in", table, 3, 10_000), split="time",
                   batch_rows=8192, row_group_rows=20_000)
    parts = splits(artifact)
    ticks = table["event_time"].cast(pa.int64()).to_numpy().astype(np.float64)
    for cut, rank in ((artifact.metrics["time_cut_test"], 0.8), (artifact.metrics["time_cut_valid"], 0.6)):
        below, upto = exact_rank_window(ticks, cut)
        assert below - EPS <= rank <= upto + EPS, (below, upto, rank, EPS)
    assert sum(p.num_rows for p in parts.values()) == n
    assert pa.compute.max(parts["train"]["event_time"]).as_py() < pa.compute.min(parts["valid"]["event_time"]).as_py()
    assert pa.compute.max(parts["valid"]["event_time"]).as_py() < pa.compute.min(parts["test"]["event_time"]).as_py()
    assert abs(parts["test"].num_rows - 0.2 * n) <= EPS * n + 1


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(30, 3 * KLL_K), seed=st.integers(0, 10_000), fractions=st.sampled_from([(0.2, 0.2), (0.1, 0.3)]))
def test_a_time_split_is_the_whole_table_path_for_distinct_times(n, seed, fractions):
    # The sketch only brackets each cut; the value is picked exactly, so the splits are the sorted path's.
    table = events(n, seed)
    valid, test = fractions
    with tempfile.TemporaryDirectory() as folder:
        uri = write_sources(Path(folder, "in"), table, 2, 17)
        pair = both(Path(folder, "out"), uri, split="time", valid_fraction=valid, test_fraction=test)
        if pair is None:
            return
        streamed, whole = (splits(artifact) for artifact in pair)
        for split in whole:
            assert streamed[split]["event_time"].to_pylist() == whole[split]["event_time"].to_pylist(), split


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 500), seed=st.integers(0, 10_000), cut=st.floats(0.0, 1.0))
def test_sketches_built_apart_and_merged_give_the_statistics_of_the_whole(n, seed, cut):
    table = events(n, seed, null_share=0.3)
    at = int(cut * n)
    whole, left, right = (TableSketch(table.schema) for _ in range(3))
    whole.update(table)
    left.update(table.slice(0, at))
    right.update(table.slice(at))
    left.merge(right)
    merged, alone = left.stats(), whole.stats()
    for name in alone:
        for field in ("count", "nulls", "non_finite", "min", "max", "min_length", "max_length"):
            assert merged[name].get(field) == alone[name].get(field), (name, field)
        if "distinct" in alone[name]:  # HLL: a merged estimate is within the sketch's error, not identical
            assert abs(merged[name]["distinct"] - alone[name]["distinct"]) <= max(1, 0.05 * alone[name]["distinct"])
        if alone[name].get("mean") is not None:
            assert merged[name]["mean"] == pytest.approx(alone[name]["mean"], rel=1e-9, abs=1e-12)
            assert merged[name]["std"] == pytest.approx(alone[name]["std"], rel=1e-9, abs=1e-12)
    check_stats(alone, table)


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.set_column(6, "clicked", pa.array([None] + [1] * (t.num_rows - 1), pa.int8())), "1 nulls in"),
    (lambda t: t.set_column(6, "clicked", pa.array([0, 1, 2] * (t.num_rows // 3), pa.int8())), "must be 0/1"),
    (lambda t: t.set_column(6, "clicked", pa.array([0] * t.num_rows, pa.int8())), "has only label 0"),
    (lambda t: t.drop_columns(["clicked"]), "'clicked' is not in the table"),
])
def test_the_checks_still_refuse_a_table_that_cannot_train(tmp_path, change, message):
    uri = write_sources(tmp_path / "in", change(events(300, 5)), 2, 40)
    artifact = Artifact(open_store(f"file://{tmp_path}/out"), Address("PrepareDataset", {"n": "x"}))
    writer = artifact.writer()
    params = {"sources": [uri], "split": "hash", "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 1,
              "label": "clicked", "time_column": "event_time", "batch_rows": 64}
    with pytest.raises(DataCheckFailed, match=message):
        prepare(StepContext(job="prepare-dataset", output=artifact, writer=writer, inputs={}, params=params,
                            run_id="t"))
    assert writer._files == {}  # nothing staged


# -- a window larger than the memory the step may use ---------------------------------------------------

LIMITED = """
    import uuid
    from caravan.addressing import Address
    from caravan.artifacts import Artifact
    from caravan.step import StepContext
    from caravan.storage import open_store
    import jobs.prepare_dataset as step

    # Everything imported (libraries mapped, thread pools started): the limit is what the data may add.
    limit_address_space({headroom_mb})
    artifact = Artifact(open_store("file://{out}"), Address("PrepareDataset", {{"n": uuid.uuid4().hex}}))
    writer = artifact.writer()
    params = {{"sources": ["{uri}"], "split": "time", "valid_fraction": 0.2, "test_fraction": 0.2, "seed": 1,
              "label": "clicked", "time_column": "event_time"}}
    try:
        getattr(step, "{function}")(StepContext(job="prepare-dataset", output=artifact, writer=writer, inputs={{}},
                                                params=params, run_id="t"))
        writer.publish()
    except MemoryError as exc:
        print("MemoryError", exc)
        sys.exit(3)
    print("rows", sum(artifact.metrics[k] for k in ("rows_train", "rows_valid", "rows_test")))
"""


def limited(function: str, uri: str, out: Path, headroom_mb: int) -> subprocess.CompletedProcess[str]:
    return run_limited(LIMITED.format(out=out, uri=uri, function=function, headroom_mb=headroom_mb))


def test_a_window_larger_than_the_memory_limit_streams_and_fails_whole(tmp_path):
    n = 1_000_000
    rng = np.random.default_rng(0)
    table = pa.table({  # about 150 MB in memory; the whole-table path needs several copies of it
        "event_time": pa.array(np.sort(rng.integers(0, 86_400_000_000, n)) + 1_772_323_200_000_000,
                               pa.timestamp("us", "UTC")),
        **{f"f{i}": pa.array(rng.random(n)) for i in range(16)},
        "clicked": pa.array((rng.random(n) < 0.2).astype(np.int8)),
    })
    uri = write_sources(tmp_path / "in", table, 4, 25_000)
    # The streamed step needs its batches and three row groups being filled; each split is staged from its
    # local file chunk by chunk (ArtifactWriter.write_file), never whole: well under 350 MiB here.
    streamed = limited("prepare", uri, tmp_path / "a", headroom_mb=350)
    assert streamed.returncode == 0, streamed.stdout + streamed.stderr
    assert f"rows {n}" in streamed.stdout
    whole = limited("prepare_in_memory", uri, tmp_path / "b", headroom_mb=350)
    assert whole.returncode == 3, whole.stdout + whole.stderr


def test_a_time_split_on_a_text_column_is_refused_naming_it(tmp_path):
    table = events(100, 2)
    table = table.set_column(5, "event_time", table["event_time"].cast(pa.string()))
    uri = write_sources(tmp_path / "in", table, 1, 40)
    with pytest.raises(DataCheckFailed, match="needs a timestamp, date or number in 'event_time', not string"):
        run(prepare, tmp_path / "out", uri, split="time", time_column="event_time", date=None)
