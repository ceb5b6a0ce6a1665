"""Step ``fail``: exits non-zero after writing to stderr, publishing nothing."""

from __future__ import annotations

import sys

from caravan.step import StepContext, run_step


def fail(ctx: StepContext) -> None:
    ctx.writer.write_text("partial.txt", "half-done")
    print("about to fail", file=sys.stderr, flush=True)
    raise RuntimeError(f"deliberate failure with code {ctx.params.get('code')}")


if __name__ == "__main__":
    run_step(fail, job="fail")
