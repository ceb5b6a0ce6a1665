"""A two-step artifact pipeline: one shared preparation step, several steps that use it.

Run it with ``luigi --module pipelines.example Summarize --date 2026-11-22 --local-scheduler``.
It is the smallest pipeline that shows the artifact contract: every output lands at a path
that shows its parameters, and a second run builds nothing.
"""

from __future__ import annotations

import random

import luigi

from caravan import ArtifactTask


class MakeNumbers(ArtifactTask):
    """Deterministic pseudo-random numbers for a date (simulated data)."""

    date = luigi.DateParameter(description="The day the numbers stand for.")
    count = luigi.IntParameter(default=1000, description="How many numbers to draw.")

    def run(self) -> None:
        rng = random.Random(f"{self.date}:{self.count}")
        numbers = [rng.gauss(0, 1) for _ in range(self.count)]
        with self.output().writer() as writer:
            writer.write_text("numbers.txt", "\n".join(f"{x:.6f}" for x in numbers) + "\n")
            writer.metrics["count"] = len(numbers)


class Summarize(ArtifactTask):
    """Mean of the numbers raised to ``power``: many of these share one MakeNumbers."""

    date = luigi.DateParameter(description="The day to summarize.")
    power = luigi.IntParameter(default=2, description="Exponent applied before averaging.")

    def requires(self) -> MakeNumbers:
        return MakeNumbers(date=self.date)

    def run(self) -> None:
        numbers = [float(x) for x in self.input().read_text("numbers.txt").split()]
        mean = sum(x**self.power for x in numbers) / len(numbers)
        with self.output().writer() as writer:
            writer.write_json("summary.json", {"power": self.power, "mean": mean})
            writer.metrics["mean"] = round(mean, 6)
