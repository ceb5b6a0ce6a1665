"""``caravan trigger retrain``: start a retraining run now instead of waiting for the schedule.

Nomad is reached through :class:`caravan.nomad_api.NomadAPI` (``[nomad]`` settings, ``NOMAD_*`` variables).

- No ``--date``, or yesterday's (UTC): force-launch the periodic job (``POST /v1/job/:id/periodic/force``).
  Its run computes the date itself when it starts, yesterday, exactly as a scheduled run does. Nomad
  answers with an evaluation, not the child: the child job id is that evaluation's ``JobID``
  (``retrain-ranker/periodic-<unix time>``). Nomad refuses to force a periodic job whose schedule is
  disabled (``periodic.enabled = false``: ``Job.PeriodicForce`` answers "periodic job is not enabled"), so then
  the backfill sibling is dispatched for yesterday instead: the same run.
- An earlier ``--date``: the periodic job cannot take one, so the parameterized sibling
  ``retrain-ranker-backfill`` (``nomad/retrain-ranker-backfill.nomad.hcl``, published with the rest) is
  dispatched with ``-meta date=YYYY-MM-DD``. Dates after yesterday are refused: the day is not complete.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import CaravanError, ConfigurationError
from .nomad_api import NomadAPI

_T = TypeVar("_T")
#: How long a read waits out a leader election. Launches are sent once: a launch that got no answer may
#: have happened, and sending it again could start a second run.
READ_RETRY_S = 60.0


def last_complete_day(now: dt.datetime | None = None) -> dt.date:
    """Yesterday in UTC: the day a scheduled retraining run trains on."""
    return (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).date() - dt.timedelta(days=1)


@dataclass(frozen=True)
class Triggered:
    """What was started: the child job, and a sentence saying how."""

    child_id: str
    how: str


def _read(api: NomadAPI, what: str, call: Callable[[], _T]) -> _T:
    return api.retry(what, call, deadline=time.monotonic() + READ_RETRY_S)


def _existing(api: NomadAPI, job_id: str) -> dict[str, Any]:
    found = _read(api, f"GET job {job_id}", lambda: api.read(f"job/{job_id}"))
    if found is None:
        namespace = api.namespace or "default"
        raise CaravanError(f"job {job_id!r} not found in Nomad namespace {namespace!r} at "
                           f"{api.address}; publish it first (caravan publish --version TAG)")
    if found.get("Stop"):
        raise CaravanError(f"job {job_id!r} is stopped; publish it again to start it")
    return dict(found)


def _periodic_enabled(api: NomadAPI, job: str) -> bool:
    """Whether ``job`` is a periodic job with its schedule enabled (it must be periodic)."""
    found = _existing(api, job)
    periodic = found.get("Periodic")
    if periodic is None:
        raise CaravanError(f"job {job!r} is not periodic (a {found.get('Type')} job without a periodic block); "
                           "trigger retrain force-launches a periodic job")
    return bool(periodic.get("Enabled", True))


def _force(api: NomadAPI, job: str) -> str:
    answer = api.post(f"job/{job}/periodic/force")
    if answer.get("EvalID"):
        eval_id = str(answer["EvalID"])
        child = _read(api, f"GET evaluation {eval_id}", lambda: api.get(f"evaluation/{eval_id}")).get("JobID")
        if child:
            return str(child)
    # No evaluation to read: the newest child of the periodic job.
    children = _read(api, "GET jobs", lambda: api.get("jobs", {"prefix": f"{job}/periodic-"}))
    mine = sorted((c for c in children if c.get("ParentID") == job), key=lambda c: int(c.get("CreateIndex", 0)))
    if not mine:
        raise CaravanError(f"job {job!r} was force-launched but Nomad shows no child job")
    return str(mine[-1]["ID"])


def _dispatch(api: NomadAPI, job: str, date: dt.date) -> str:
    found = _existing(api, job)
    meta = (found.get("ParameterizedJob") or {}).get("MetaRequired") or []
    if found.get("ParameterizedJob") is None or "date" not in meta:
        raise CaravanError(f"job {job!r} is not a parameterized job that requires meta 'date'; "
                           "a backfill is dispatched with -meta date=YYYY-MM-DD")
    answer = api.post(f"job/{job}/dispatch", {"Meta": {"date": date.isoformat()}})
    return str(answer["DispatchedJobID"])


def trigger_retrain(job: str = "retrain-ranker", date: dt.date | None = None, backfill_job: str | None = None, *,
                    api: NomadAPI | None = None, now: dt.datetime | None = None) -> Triggered:
    """Force-launch the periodic ``job`` (``date`` None or yesterday), else dispatch its backfill for ``date``."""
    latest = last_complete_day(now)
    if date is not None and date > latest:
        raise ConfigurationError(f"--date {date} is not a complete day yet; the latest complete UTC day is {latest}")
    api = api or NomadAPI.from_config()
    backfill = backfill_job or f"{job}-backfill"
    if date is None or date == latest:
        if not _periodic_enabled(api, job):
            child = _dispatch(api, backfill, latest)
            return Triggered(child, f"the periodic job {job!r} has its schedule disabled, which Nomad does not "
                             f"force-launch; dispatched {backfill!r} with date={latest} instead (the same run)")
        child = _force(api, job)
        return Triggered(child, f"force-launched the periodic job {job!r}; the run retrains on {latest}")
    child = _dispatch(api, backfill, date)
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
