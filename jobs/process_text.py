"""Step ``process-text``: tokenize and hash-vectorize text columns into numeric features, per split.

Deterministic (a stable hash, not Python's), so one artifact serves every training that uses it.
"""

from __future__ import annotations

from caravan.step import StepContext, run_step

from .common import SPLITS


def process(ctx: StepContext) -> None:
    from caravan.ml.text import text_features

    p = ctx.params
    dataset = ctx.inputs["dataset"]
    for split in SPLITS:
        table = dataset.read_parquet(f"{split}.parquet", columns=list(p["text_columns"]))
        parts = [text_features(table, column, int(p["n_features"]), seed=int(p["seed"]))
                 for column in p["text_columns"]]
        out = parts[0]
        for extra in parts[1:]:
            for name in extra.column_names:
                out = out.append_column(name, extra[name])
        ctx.writer.write_parquet(f"text_{split}.parquet", out)
        ctx.log.info("%s: %d rows, %d text features", split, out.num_rows, out.num_columns)
    ctx.writer.metrics["n_features"] = int(p["n_features"]) * len(p["text_columns"])


if __name__ == "__main__":
    run_step(process, job="process-text")
