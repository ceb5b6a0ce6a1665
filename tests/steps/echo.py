"""Step ``echo``: writes back what it received, to show the contract carries it unchanged."""

from __future__ import annotations

import os

from caravan.step import StepContext, run_step


def echo(ctx: StepContext) -> None:
    ctx.writer.write_json("params.json", ctx.params)
    ctx.writer.write_json("inputs.json", {name: a.id for name, a in ctx.inputs.items()})
    upstream = {name: a.read_text("value.txt") for name, a in ctx.inputs.items()}
    ctx.writer.write_text("value.txt", repr(sorted(ctx.params.items())) + repr(sorted(upstream.items())))
    ctx.writer.write_json("env.json", {k: v for k, v in os.environ.items() if k.startswith("NOMAD_")
                                       and not k.startswith("NOMAD_META_")})
    print(f"echo step for {ctx.output.id}", flush=True)


if __name__ == "__main__":
    run_step(echo, job="echo")
