"""A two-step pipeline: one shared preparation step, several steps that use it.

Run it with ``luigi --module pipelines.example Summarize --date 2026-11-22 --local-scheduler``.
Each step is a job (``nomad/make-numbers.nomad.hcl``, ``nomad/summarize.nomad.hcl``) run by the
configured executor: a local subprocess by default, a Nomad dispatch with ``executor = nomad``.
"""

from __future__ import annotations

import luigi

from caravan.tasks import NomadJobTask


class MakeNumbers(NomadJobTask):
    """Deterministic pseudo-random numbers for a date (simulated data)."""

    job = "make-numbers"
    date = luigi.DateParameter(description="The day the numbers stand for.")
    count = luigi.IntParameter(default=1000, description="How many numbers to draw.")


class Summarize(NomadJobTask):
    """Mean of the numbers raised to ``power``: many of these share one MakeNumbers."""

    job = "summarize"
    date = luigi.DateParameter(description="The day to summarize.")
    power = luigi.IntParameter(default=2, description="Exponent applied before averaging.")

    def requires(self) -> dict[str, MakeNumbers]:
        return {"numbers": MakeNumbers(date=self.date)}
