"""Step ``gate-model``: judge a candidate model against the current one (see caravan.registry.gate)."""

from __future__ import annotations

from caravan.artifacts import Artifact
from caravan.step import StepContext, run_step

from .common import lightgbm_without_extras


def gate(ctx: StepContext) -> None:
    from caravan.registry.gate import judge

    p = ctx.params
    store = ctx.output.store
    candidate = Artifact(store, p["candidate"])
    current = Artifact(store, p["current"]) if p.get("current") else None
    verdict = judge(candidate, current, tolerance=float(p["tolerance"]), metric=p["metric"],
                    floor=list(p.get("floor") or ()), allow_schema_change=bool(p.get("allow_schema_change")),
                    batch_rows=int(p.get("batch_rows") or 0) or None)
    for reason in [*verdict["reasons"], *verdict.get("notes", [])]:
        ctx.log.info("%s: %s", verdict["decision"], reason)
    ctx.writer.write_json("verdict.json", verdict)
    ctx.writer.metrics.update({k: verdict.get(k) for k in ("decision", "candidate_score", "current_score")})


if __name__ == "__main__":
    lightgbm_without_extras()
    run_step(gate, job="gate-model")
