"""Step ``sleep``: sleeps ``seconds`` then publishes (a step that takes known time, or hangs)."""

from __future__ import annotations

import time

from caravan.step import StepContext, run_step


def sleep(ctx: StepContext) -> None:
    time.sleep(float(ctx.params["seconds"]))
    ctx.writer.write_text("slept.txt", str(ctx.params["seconds"]))


if __name__ == "__main__":
    run_step(sleep, job="sleep")
