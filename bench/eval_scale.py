"""Scaling out, evaluation: the evaluate step streamed against the whole test split in memory, side by side.

For each size, a test split of that many rows (16 float features, a 0/1 label, row groups of 128 Ki
rows) and a small LightGBM model are published as artifacts (by a child, so this process stays small),
then ``evaluate`` (streamed) and ``evaluate_in_memory`` (the former path) run each in their own process.
Peak RSS is the child's ``ru_maxrss`` (from ``os.wait4``), wall time the step call alone; the AUCs of
both must be the same number. Goal: streamed peak RSS flat in the number of rows (largest at most 1.25x
the smallest) while the in-memory one grows.

    .venv/bin/python bench/eval_scale.py                          # 1M, 4M, 10M rows (a few minutes here)
    .venv/bin/python bench/eval_scale.py --sizes 200000,1000000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, verdict

WIDTH = 16

MAKE = """
import sys, uuid
sys.path.insert(0, {root!r})
from pathlib import Path
import lightgbm as lgb, numpy as np, pyarrow as pa, pyarrow.parquet as pq
from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.storage import open_store

store, rows, names = open_store("file://{store}"), {rows}, [f"f{{i}}" for i in range({width})]
path = Path("{store}", "split.parquet")
rng = np.random.default_rng(0)
with pq.ParquetWriter(path, pa.schema([*(pa.field(n, pa.float64()) for n in names), ("clicked", pa.int8())])) as out:
    for start in range(0, rows, 1_000_000):  # written in slices: this child stays small too
        n = min(1_000_000, rows - start)
        x = {{name: rng.random(n) for name in names}}
        clicked = (rng.random(n) < 0.2 + 0.6 * (x["f0"] > 0.5) * x["f1"]).astype(np.int8)
        out.write_table(pa.table({{**x, "clicked": clicked}}), row_group_size=131_072)
x = rng.random((20_000, len(names)))
booster = lgb.train({{"objective": "binary", "verbosity": -1, "num_threads": 1, "num_leaves": 15}},
                    lgb.Dataset(x, (rng.random(20_000) < 0.2 + 0.6 * (x[:, 0] > 0.5) * x[:, 1]).astype(int),
                                feature_name=names), num_boost_round=50)
dataset = Artifact(store, Address("PrepareDataset", {{"n": uuid.uuid4().hex}}))
with dataset.writer() as writer:
    writer.write_file("test.parquet", path)
path.unlink()
model = Artifact(store, Address("TrainRanker", {{"n": uuid.uuid4().hex}}, upstream={{"dataset": dataset.id}}))
with model.writer() as writer:
    writer.write_text("model.txt", booster.model_to_string())
    writer.write_json("curve.json", {{}})
    writer.write_json("features.json", {{"label": "clicked",
                                         "features": [{{"name": n, "type": "double"}} for n in names]}})
print(dataset.id, model.id)
"""

CHILD = """
import json, sys, time, uuid
sys.path.insert(0, {root!r})
from caravan.addressing import Address
from caravan.artifacts import Artifact
from caravan.step import StepContext
from caravan.storage import open_store
import jobs.evaluate as step

store = open_store("file://{store}")
inputs = {{"dataset": Artifact(store, "{dataset}"), "model": Artifact(store, "{model}")}}
artifact = Artifact(store, Address("EvaluateRanker", {{"n": uuid.uuid4().hex}}))
writer = artifact.writer()
started = time.perf_counter()
try:
    getattr(step, "{function}")(StepContext(job="evaluate", output=artifact, writer=writer, inputs=inputs,
                                            params={{"group_column": ""}}, run_id="bench"))
    writer.publish()
    outcome = "ok"
except MemoryError:
    outcome = "MemoryError"
seconds = time.perf_counter() - started
print(json.dumps({{"outcome": outcome, "seconds": seconds, "auc": artifact.metrics.get("test_auc") if outcome == "ok"
                  else None}}))
"""


def measure(code: str) -> dict[str, object]:
    """Run ``code`` in a child; its JSON line and peak RSS (bytes, ``ru_maxrss``)."""
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    assert child.stdout is not None
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    ok = os.waitstatus_to_exitcode(status) == 0
    result = json.loads(output.strip().splitlines()[-1]) if ok else {"outcome": f"exit {status}"}
    return {**result, "peak_rss": usage.ru_maxrss * 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,4000000,10000000", help="test-split rows, comma-separated")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="caravan-eval-scale-") as folder:
        for size in (int(s) for s in args.sizes.split(",")):
            store = Path(folder, str(size))
            store.mkdir()
            made = subprocess.run([sys.executable, "-c", MAKE.format(root=str(ROOT), store=store, rows=size,
                                                                     width=WIDTH)],
                                  check=True, capture_output=True, text=True)
            dataset, model = made.stdout.split()
            row: dict[str, object] = {"rows": size}
            for function in ("evaluate_in_memory", "evaluate"):
                row[function] = measure(CHILD.format(root=str(ROOT), store=store, dataset=dataset, model=model,
                                                     function=function))
            rows.append(row)
            whole, streamed = row["evaluate_in_memory"], row["evaluate"]
            assert isinstance(whole, dict) and isinstance(streamed, dict)
            print(f"{size:>11,} rows  in memory: {whole['peak_rss'] / 1e9:5.2f} GB {whole.get('seconds', 0):6.1f} s "
                  f"({whole['outcome']})  streamed: {streamed['peak_rss'] / 1e9:5.2f} GB "
                  f"{streamed.get('seconds', 0):6.1f} s ({streamed['outcome']})  AUC {streamed.get('auc')}",
                  flush=True)
    problems = []
    streamed_rss = [r["evaluate"]["peak_rss"] for r in rows]  # type: ignore[index]
    for r in rows:
        whole, streamed = r["evaluate_in_memory"], r["evaluate"]
        assert isinstance(whole, dict) and isinstance(streamed, dict)
        if streamed["outcome"] != "ok":
            problems.append(f"streaming failed at {r['rows']:,} rows ({streamed['outcome']})")
        elif whole["outcome"] == "ok" and whole["auc"] != streamed["auc"]:
            problems.append(f"AUC differs at {r['rows']:,} rows: {whole['auc']} in memory, {streamed['auc']} streamed")
    if max(streamed_rss) > 1.25 * min(streamed_rss):
        problems.append(f"streamed peak RSS not flat: {min(streamed_rss) / 1e9:.2f} GB to "
                        f"{max(streamed_rss) / 1e9:.2f} GB")
    return verdict("streamed peak RSS flat (<= 1.25x) and the same AUC as in memory", problems)


if __name__ == "__main__":
    sys.exit(main())
