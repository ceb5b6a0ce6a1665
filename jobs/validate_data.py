"""Step ``validate-data``: stop on schema skew, measure value drift against the production model's data.

Schema skew (a missing or unexpected column, a changed type, nulls where none are allowed) fails
the step with an error that lists every offending column. Value drift (population stability
index per numeric column against the statistics of a reference dataset, normally the one the
current production model was trained on) is recorded; ``fail_on_drift`` decides if it stops the run.

The reference dataset arrives as a parameter (``reference``, an artifact id), resolved by the
pipeline before this step's address was computed (``caravan.promotion.reference_dataset``): this
append-only step never reads the live pointer, so its address names everything it compared with.
A reference that cannot be read fails the step (an outage is retried; it is never "no drift").
"""

from __future__ import annotations

import pyarrow as pa

from caravan.artifacts import Artifact
from caravan.step import StepContext, run_step

from .common import SPLITS


class DriftError(ValueError):
    """Drift beyond the threshold, with fail_on_drift set."""


def reference_dataset(ctx: StepContext) -> Artifact | None:
    """The dataset to compare with, as given by id ('' or absent: none)."""
    reference = ctx.params.get("reference")
    if not reference:
        return None
    dataset = Artifact(ctx.output.store, str(reference))
    dataset.manifest()  # not found, corrupt or unreachable: the step fails and says which
    ctx.log.info("reference data: %s", dataset.id)
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
