"""caravan's run summary: what this run built, what it reused, what is missing, and each task's own lines."""

from __future__ import annotations

import luigi

from caravan import progress
from caravan.artifacts import ArtifactTask

from ..servers import build


class SummaryBase(ArtifactTask):
    """An upstream artifact written in the worker."""

    day = luigi.IntParameter()

    def run(self) -> None:
        with self.output().writer() as writer:
            writer.write_text("x.txt", str(self.day))


class SummaryTop(ArtifactTask):
    """A downstream artifact that summarises itself."""

    day = luigi.IntParameter()

    def requires(self) -> SummaryBase:
        return SummaryBase(day=self.day)

    def run(self) -> None:
        with self.output().writer() as writer:
            writer.write_text("y.txt", str(self.day))

    def summary_lines(self) -> list[str]:
        return [f"top of day {self.day}", "a line said once"]


class SummaryEcho(SummaryTop):
    """Repeats its upstream's lines, as a retraining repeats its grid's table."""


def test_the_summary_tells_built_from_reused_and_missing(local_root):
    base, top = SummaryBase(day=1), SummaryTop(day=1)
    with base.output().writer(run_id="an-earlier-run") as writer:  # published by another run
        writer.write_text("x.txt", "1")
    assert build([top], workers=1)
    missing = SummaryTop(day=2)
    lines = progress.summary_lines([top, base, missing])
    assert lines[0].startswith("built 1, reused 1, NOT built 1 (artifacts under file://")
    assert lines[1].startswith("  reused ") and lines[1].endswith(base.output().id)
    assert lines[2].startswith("  built ") and lines[2].endswith(top.output().id)
    assert lines[3].startswith("  not built") and lines[3].endswith(missing.output().id)
    assert lines[4:] == ["", "top of day 1", "a line said once"]


def test_a_run_that_built_nothing_says_so(local_root):
    tasks = [SummaryBase(day=3), SummaryTop(day=3)]
    for task in tasks:
        with task.output().writer(run_id="an-earlier-run") as writer:
            writer.write_text("z.txt", "3")
    lines = progress.summary_lines(tasks)
    assert lines[0].startswith("built 0, reused 2: nothing rebuilt (artifacts under ")
    assert progress.summary_lines([]) == []


def test_lines_a_task_repeats_from_upstream_are_said_once(local_root):
    top, echo = SummaryTop(day=4), SummaryEcho(day=4)
    assert build([top, echo], workers=1)
    assert progress.summary_lines([top, echo])[-3:] == ["", "top of day 4", "a line said once"]
