"""``caravan trigger retrain``: start a retraining run now instead of waiting for the schedule.

- No ``--date``, or yesterday's (UTC): force-launch the periodic job (``POST /v1/job/:id/periodic/force``).
  Its run computes the date itself when it starts, yesterday, exactly as a scheduled run does. Nomad
  answers with an evaluation, not the child: the child job id is that evaluation's ``JobID``
  (``retrain-ranker/periodic-<unix time>``).
- An earlier ``--date``: the periodic job cannot take one, so the parameterized sibling
  ``retrain-ranker-backfill`` (``nomad/retrain-ranker-backfill.nomad.hcl``, published with the rest) is
  dispatched with ``-meta date=YYYY-MM-DD``. Dates after yesterday are refused: the day is not complete.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from dataclasses import dataclass
from typing import Any

from .errors import CaravanError, ConfigurationError
from .publish import Publisher


def last_complete_day(now: dt.datetime | None = None) -> dt.date:
    """Yesterday in UTC: the day a scheduled retraining run trains on."""
    return (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)


@dataclass(frozen=True)
class Triggered:
    """What was started: the child job, and a sentence saying how."""

    child_id: str
    how: str


def _existing(publisher: Publisher, job_id: str) -> dict[str, Any]:
    found = publisher.read_job(job_id)
    if found is None:
        namespace = publisher.nomad.namespace or "default"
        raise CaravanError(f"job {job_id!r} not found in Nomad namespace {namespace!r} at "
                           f"{publisher.nomad.address}; publish it first (caravan publish --version TAG)")
    if found.get("Stop"):
        raise CaravanError(f"job {job_id!r} is stopped; publish it again to start it")
    return found


def _force(publisher: Publisher, job: str, hint: str) -> str:
    found = _existing(publisher, job)
    periodic = found.get("Periodic")
    if periodic is None:
        raise CaravanError(f"job {job!r} is not periodic (a {found.get('Type')} job without a periodic block); "
                           "trigger retrain force-launches a periodic job")
    if not periodic.get("Enabled", True):
        raise CaravanError(f"job {job!r} has its periodic launches disabled (periodic.enabled = false), and Nomad "
                           f"does not force-launch a disabled job; {hint}")
    nomad = publisher.nomad
    answer = nomad._call(f"POST /v1/job/{job}/periodic/force", publisher.client.job.request, job, "periodic",
                         "force", method="post", timeout=nomad.timeout_s).json()
    if answer.get("EvalID"):
        child = nomad._get("evaluation", str(answer["EvalID"])).json().get("JobID")
        if child:
            return str(child)
    # No evaluation to read: the newest child of the periodic job.
    children = nomad._call("GET /v1/jobs", publisher.client.jobs.request, method="get",
                           params={"prefix": f"{job}/periodic-"}, timeout=nomad.timeout_s).json()
    mine = sorted((c for c in children if c.get("ParentID") == job), key=lambda c: int(c.get("CreateIndex", 0)))
    if not mine:
        raise CaravanError(f"job {job!r} was force-launched but Nomad shows no child job")
    return str(mine[-1]["ID"])


def _dispatch(publisher: Publisher, job: str, date: dt.date) -> str:
    found = _existing(publisher, job)
    meta = (found.get("ParameterizedJob") or {}).get("MetaRequired") or []
    if found.get("ParameterizedJob") is None or "date" not in meta:
        raise CaravanError(f"job {job!r} is not a parameterized job that requires meta 'date'; "
                           "a backfill is dispatched with -meta date=YYYY-MM-DD")
    nomad = publisher.nomad
    answer = nomad._call(f"POST /v1/job/{job}/dispatch", publisher.client.job.request, job, "dispatch",
                         method="post", json={"Meta": {"date": date.isoformat()}}, timeout=nomad.timeout_s).json()
    return str(answer["DispatchedJobID"])


def trigger_retrain(job: str = "retrain-ranker", date: dt.date | None = None, backfill_job: str | None = None, *,
                    publisher: Publisher | None = None, now: dt.datetime | None = None) -> Triggered:
    """Force-launch the periodic ``job`` (``date`` None or yesterday), else dispatch its backfill for ``date``."""
    latest = last_complete_day(now)
    if date is not None and date > latest:
        raise ConfigurationError(f"--date {date} is not a complete day yet; the latest complete UTC day is {latest}")
    publisher = publisher or Publisher()
    backfill = backfill_job or f"{job}-backfill"
    if date is None or date == latest:
        hint = f"publish it with schedule_enabled = true, or dispatch {backfill!r} with --date {latest}"
        child = _force(publisher, job, hint)
        return Triggered(child, f"force-launched the periodic job {job!r}; the run retrains on {latest}")
    child = _dispatch(publisher, backfill, date)
    return Triggered(child, f"dispatched {backfill!r} with date={date} (the periodic {job!r} only does yesterday)")


def trigger_command(args: argparse.Namespace) -> int:
    """The CLI: the child job id on stdout (for scripts), what was done on stderr."""
    date = None
    if args.date:
        try:
            date = dt.date.fromisoformat(args.date)
        except ValueError:
            raise ConfigurationError(f"--date {args.date!r} is not a date (YYYY-MM-DD)") from None
    triggered = trigger_retrain(args.job, date, args.backfill_job)
    print(triggered.child_id)
    print(f"caravan: {triggered.how}; follow it with: nomad job status {triggered.child_id}", file=sys.stderr)
    return 0
