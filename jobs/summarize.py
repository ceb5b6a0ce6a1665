"""Step ``summarize``: the mean of the numbers raised to a power."""

from __future__ import annotations

from caravan.step import StepContext, run_step


def summarize(ctx: StepContext) -> None:
    power = int(ctx.params["power"])
    numbers = [float(x) for x in ctx.inputs["numbers"].read_text("numbers.txt").split()]
    mean = sum(x**power for x in numbers) / len(numbers)
    ctx.writer.write_json("summary.json", {"power": power, "mean": mean})
    ctx.writer.metrics["mean"] = round(mean, 6)


if __name__ == "__main__":
    run_step(summarize, job="summarize")
