"""Step ``validate-data``: stop on schema skew, measure value drift against the production model's data.

Schema skew (a missing or unexpected column, a changed type, nulls where none are allowed) fails
the step with an error that lists every offending column. Value drift (population stability
index per numeric column against the statistics of a reference dataset, normally the one the
current production model was trained on) is recorded; ``fail_on_drift`` decides if it stops the run.
"""

from __future__ import annotations

import pyarrow as pa

from caravan.artifacts import Artifact
from caravan.step import StepContext, run_step

from .common import SPLITS


class DriftError(ValueError):
    """Drift beyond the threshold, with fail_on_drift set."""


def reference_dataset(ctx: StepContext) -> Artifact | None:
    """The dataset to compare with: given by id, or the one the model's current version was trained on."""
    p = ctx.params
    if p.get("reference"):
        return Artifact(ctx.output.store, p["reference"])
    if not p.get("reference_model"):
        return None
    from caravan.registry import open_pointer
    from caravan.registry.gate import holdout_of
    from caravan.step import artifact_at

    document = open_pointer().read(p["reference_model"]).document
    if document is None:
        return None
    try:
        dataset, _ = holdout_of(artifact_at(document["artifact_uri"], document["artifact_id"]))
        dataset.manifest()
    except Exception as exc:  # a broken pointer must not stop new data from being validated; say so loudly
        ctx.log.warning("current model %s of %s is unreadable (%s): drift not measured", document["artifact_id"],
                        p["reference_model"], exc)
        ctx.writer.metrics["reference_error"] = f"{type(exc).__name__}: {exc}"
        return None
    ctx.log.info("reference data: %s (trained %s, current model of %s)", dataset.id, document["artifact_id"],
                 p["reference_model"])
    return dataset


def validate(ctx: StepContext) -> None:
    from caravan.ml.stats import check_schema, drift_report

    p = ctx.params
    dataset = ctx.inputs["dataset"]
    table = pa.concat_tables([dataset.read_parquet(f"{split}.parquet") for split in SPLITS])
    reference = reference_dataset(ctx)
    expected = p.get("expected_schema") or (reference.read_json("schema.json") if reference else None)
    if expected:
        check_schema(expected, table, non_nullable=p.get("non_nullable") or ())
    report: dict[str, object] = {"schema_checked": bool(expected), "reference": reference.id if reference else None}
    drifted: dict[str, float] = {}
    if reference is not None:
        psi = drift_report(reference.read_json("stats.json"), table, p.get("drift_columns") or None)
        drifted = {c: v for c, v in sorted(psi.items()) if v > float(p["drift_threshold"])}
        report.update(psi=psi, drifted=drifted, threshold=float(p["drift_threshold"]))
        ctx.writer.metrics.update(max_psi=round(max(psi.values(), default=0.0), 6), drifted_columns=sorted(drifted))
        for column, value in drifted.items():
            ctx.log.warning("drift in %s: PSI %.3f > %.3f", column, value, float(p["drift_threshold"]))
    else:
        ctx.log.info("no reference dataset (no production model yet): drift not measured")
    ctx.writer.metrics["rows"] = table.num_rows
    if drifted and p.get("fail_on_drift"):
        raise DriftError("value drift beyond the threshold in: " + ", ".join(f"{c} (PSI {v:.3f})"
                                                                               for c, v in drifted.items()))
    ctx.writer.write_json("report.json", report)


if __name__ == "__main__":
    run_step(validate, job="validate-data")
