"""A closed day of the event log as a pipeline input: an external target identified by content, and the task
that joins it into the click-log schema (``--events logged`` in ``pipelines.ranker``).

:class:`LoggedDay` exists once the day is closed (:func:`caravan.events.log.closed_days`); its fingerprint lists
the day's prediction files and the feedback files of that day and the next (one listing each, as
:mod:`caravan.dataio` fingerprints any Parquet input), so the address of everything built from it changes
when the log does. :class:`JoinLoggedEvents` writes ``events.parquet`` (the click log) and the join's counts as
its metrics.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import luigi

from ..artifacts import ArtifactTask
from ..dataio import fingerprint_of, parquet_stats
from ..storage import open_store
from .join import DEFAULT_ATTRIBUTION_WINDOW_S, join_day
from .log import FEEDBACK, PREDICTIONS, closed_days, events_prefix


def _root(root: str) -> str:
    from ..config import artifact_root

    return (root or artifact_root()).rstrip("/")


class LoggedDayTarget(luigi.Target):
    """A day of ``model``'s event log on ``root``: exists when closed; :meth:`fingerprint` says what it holds."""

    def __init__(self, root: str, model: str, date: dt.date) -> None:
        self.root, self.model, self.date = root, model, date

    def uris(self) -> list[str]:
        """The folders the day's join reads: its predictions, its feedback and the next day's."""
        base = f"{self.root}/{events_prefix(self.model)}"
        after = self.date + dt.timedelta(days=1)
        return [f"{base}{PREDICTIONS}/date={self.date}/", f"{base}{FEEDBACK}/date={self.date}/",
                f"{base}{FEEDBACK}/date={after}/"]

    def exists(self) -> bool:
        return self.date in closed_days(open_store(self.root), self.model)

    def fingerprint(self) -> dict[str, Any]:
        """The day's identity by content: the size and version of every file the join reads."""
        stats = []
        for uri in self.uris():
            try:
                stats += parquet_stats(uri)[1]
            except FileNotFoundError:  # the next day may have no feedback yet
                continue
        return fingerprint_of(self.uris()[0], stats)


class LoggedDay(luigi.ExternalTask):
    """A closed day of a model's event log (written by ``caravan serve`` and the gateway)."""

    model = luigi.Parameter(description="Model whose served predictions and feedback are read.")
    date = luigi.DateParameter(description="The day (UTC).")
    root = luigi.Parameter(default="", description="Store of the log ('' = the artifact root).")

    def output(self) -> LoggedDayTarget:
        return LoggedDayTarget(_root(str(self.root)), str(self.model), self.date)


class JoinLoggedEvents(ArtifactTask):
    """One day of served predictions labelled by their feedback, in the click-log schema (``events.parquet``)."""

    path_params = ("model", "attribution_window_s")
    model = luigi.Parameter(description="Model whose event log is read.")
    date = luigi.DateParameter(description="The day (UTC).")
    attribution_window_s = luigi.FloatParameter(default=DEFAULT_ATTRIBUTION_WINDOW_S,
                                                description="Seconds after a prediction in which a positive "
                                                "reward makes its label 1.")
    root = luigi.Parameter(default="", description="Store of the log ('' = the artifact root).")

    def requires(self) -> LoggedDay:
        return LoggedDay(model=self.model, date=self.date, root=self.root)

    def run(self) -> None:
        target = self.input()
        table, counts = join_day(open_store(target.root), str(self.model), self.date,
                                 float(self.attribution_window_s))
        with self.output().writer() as writer:
            writer.write_parquet("events.parquet", table)
            writer.metrics.update(counts.as_dict())
