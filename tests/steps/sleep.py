"""Step ``sleep``: sleeps ``seconds`` then publishes (a step that takes known time, or hangs)."""

from __future__ import annotations

import sys
import time

from caravan.step import StepContext, run_step


def sleep(ctx: StepContext) -> None:
    print(f"sleep step: sleeping {ctx.params['seconds']} s", file=sys.stderr, flush=True)
    time.sleep(float(ctx.params["seconds"]))
    ctx.writer.write_text("slept.txt", str(ctx.params["seconds"]))


if __name__ == "__main__":
    run_step(sleep, job="sleep")
