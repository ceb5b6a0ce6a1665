"""Step ``make-numbers``: deterministic pseudo-random numbers for a date (simulated data)."""

from __future__ import annotations

import random

from caravan.step import StepContext, run_step


def make_numbers(ctx: StepContext) -> None:
    date, count = ctx.params["date"], int(ctx.params["count"])
    rng = random.Random(f"{date}:{count}")
    numbers = [rng.gauss(0, 1) for _ in range(count)]
    ctx.writer.write_text("numbers.txt", "\n".join(f"{x:.6f}" for x in numbers) + "\n")
    ctx.writer.metrics["count"] = len(numbers)


if __name__ == "__main__":
    run_step(make_numbers, job="make-numbers")
