"""Triggers: from one monitoring report, retrain on new data, on degradation and on drift, each recorded with why.

What fires (:func:`evaluate`, pure; :class:`TriggerSettings` holds the thresholds):

- **new data**: a closed day of the event log not recorded yet dispatches ``retrain-ranker-backfill`` for that
  day. Only the newest such day is retrained (a run's window covers the days before it); older unrecorded days
  are recorded as superseded. Once per day: the record ``new-data-<day>`` is the claim, and a second dispatch
  of the same day would find its artifacts (addresses) and the promotion lock anyway.
- **degradation**: production's online AUC below the AUC its gate recorded minus ``degradation_tolerance``,
  over at least ``min_events`` labelled events. With ``rollback_on_degradation`` the previous model of the
  lineage (:func:`caravan.registry.base.rollback_target`) is replayed on the same logged rows and restored by
  the rollback protocol (promotion lock, check-and-set, a history entry) if it scores better; both scores are
  recorded (once per production model: ``rollback-from-<change id>``).
- **drift**: PSI above ``drift_threshold`` in at least ``drift_features`` features; the record names them.

Degradation and drift share one retrain (claim ``retrain-<n>``, n one more than the last claim, so two
monitors that read the same records claim the same id and one of them wins). It trains on the logged days up to
the latest closed day, and only when that day is newer than the logged data production (or a candidate the gate
already judged) was trained on (:func:`already_trained`): otherwise a retrain would rebuild the same model by
address, so the trigger is recorded as ``waiting for new data`` (once per latest closed day) and the next closed
day's new-data retrain covers it. Every retrain dispatched learns from the event log (``--events logged``;
Nomad: ``retrain-ranker-backfill`` with ``-meta date=DAY events=logged``). The **cool-down** caps them:
within ``cooldown_s`` of the last triggered retrain (of any kind) they are recorded as suppressed, once per
cool-down (``<last claim>.cooldown.<kind>``). A new-data retrain in the same run covers them. While a
retrain runs (:meth:`Dispatcher.running`: Nomad children of the retrain jobs that are pending or running),
every trigger is recorded as suppressed (``running.<child>.<kind>``) and nothing is dispatched; a deferred day
is dispatched by the first run after.

Records live beside the model pointer (:mod:`.triggers_store`) and every write is create-if-absent or
check-and-set. A claim is written ``dispatching`` (``replaying`` for a rollback) with a lease (``claim_lease_s``,
wall clock); a monitor that stops before recording the outcome leaves it so, and the first run after the lease
retakes it by check-and-set (of two racing monitors one does) and dispatches again: the same day's retrain has the
same artifact addresses, so a run that had started builds nothing twice. A stale retrain claim no longer wanted
is recorded ``abandoned``. ``caravan models history`` shows them in its timeline. ``caravan trigger retrain`` stays the
on-demand path and the periodic ``retrain-ranker`` the schedule.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import logging
import math
import re
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import CaravanError, ConfigurationError
from .report import MonitorReport, VersionWindow
from .triggers_store import TriggerStore, trigger_store

log = logging.getLogger("caravan.monitoring")

NEW_DATA, DEGRADATION, DRIFT = "new_data", "degradation", "drift"
KINDS = (NEW_DATA, DEGRADATION, DRIFT)
#: Outcomes of a claim that count as a retrain fired (a crash between claim and dispatch counts: never twice;
#: ``--dispatch none`` decides as if it had dispatched).
FIRED = ("dispatching", "dispatched", "not dispatched")
_RETRAIN = re.compile(r"retrain-(\d{6,})")
#: How long a rollback waits for the promotion lock (a promotion deciding meanwhile) before giving up this run.
LOCK_TIMEOUT_S = 60.0
#: Outcomes of a claim still being acted on by the monitor that wrote it; past its lease, the next run retakes it.
IN_PROGRESS = ("dispatching", "replaying")
#: The default ``--claim-lease``: twice the period of the monitor job (15 minutes).
CLAIM_LEASE_S = 30 * 60.0
#: A degradation/drift retrain with no logged data newer than what was trained already.
WAITING = "waiting for new data"
#: What the triggered retrains learn from: the event log the monitor reads (``RetrainRanker --events logged``).
EVENTS = "logged"


@dataclass(frozen=True)
class TriggerSettings:
    """The thresholds of the triggers (the ``caravan monitor`` flags of the same names)."""

    degradation_tolerance: float = 0.02
    min_events: int = 1000
    drift_threshold: float = 0.2
    drift_features: int = 1
    cooldown_s: float = 3 * 3600.0
    rollback_on_degradation: bool = False
    #: How long a claim may stay ``dispatching``/``replaying`` before the next run may retake it (the monitor that
    #: wrote it stopped before finishing): twice the periodic monitor's 15 minutes.
    claim_lease_s: float = CLAIM_LEASE_S

    def __post_init__(self) -> None:
        if self.min_events < 1 or self.drift_features < 1:
            raise ConfigurationError("--min-events and --drift-features must be at least 1")
        if not math.isfinite(self.claim_lease_s) or self.claim_lease_s <= 0:
            raise ConfigurationError(f"--claim-lease must be a finite duration > 0, not {self.claim_lease_s}")
        for name in ("degradation_tolerance", "drift_threshold", "cooldown_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"--{name.replace('_', '-').removesuffix('-s')} must be a finite number >= 0, "
                                         f"not {value}")


@dataclass(frozen=True)
class Trigger:
    """One decision of :func:`evaluate`: a record to create, and whether it dispatches a retrain."""

    record_id: str
    kinds: tuple[str, ...]
    dispatch: bool
    reason: str
    day: str | None = None  # the last day of the retrain's window (new data: the closed day)
    features: tuple[str, ...] = ()  # drift: the drifted features, most drifted first
    details: Mapping[str, Any] = field(default_factory=dict)
    status: str = ""  # the outcome of a trigger that does not dispatch (default: suppressed)

    @property
    def kind(self) -> str:
        """The kinds joined by ``+`` (degradation and drift share one retrain)."""
        return "+".join(self.kinds)

    def record(self, report: MonitorReport, now: dt.datetime) -> dict[str, Any]:
        """The record written at :attr:`record_id`."""
        outcome = "dispatching" if self.dispatch else (self.status or "suppressed")
        return {"at": stamp(now), "kind": self.kind, "outcome": outcome,
                "reason": self.reason, "day": self.day, "features": list(self.features),
                "production_artifact_id": report.production_artifact_id, "window_start": report.window_start,
                "window_end": report.window_end, **dict(self.details)}


@dataclass(frozen=True)
class TriggerOutcome:
    """What :func:`run_triggers` did with one trigger: ``outcome`` is the record's (or ``taken``: another
    monitor recorded it first)."""

    record_id: str
    kind: str
    outcome: str
    reason: str
    child: str | None = None


def stamp(moment: dt.datetime) -> str:
    """caravan's timestamp format (:func:`caravan.stamps.utc_now`) for ``moment``."""
    return moment.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    """An ISO-8601 time (``Z`` or an offset; naive means UTC)."""
    moment = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def _span(seconds: float) -> str:
    """``3h``, ``90m``, ``45s``: a duration as the flags write it."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")[:120] or "unknown"


# -- the conditions (pure) -----------------------------------------------------------------------------------------


def degradation(report: MonitorReport, settings: TriggerSettings) -> str | None:
    """Why production counts as degraded in ``report``, or None."""
    prod = report.production()
    gate = report.production_gate_auc
    if prod is None or prod.auc is None or gate is None or prod.labelled < settings.min_events:
        return None
    if prod.auc >= gate - settings.degradation_tolerance:
        return None
    return (f"production {prod.artifact_id} online AUC {prod.auc:.4f} over {prod.labelled} labelled events is below "
            f"its gate AUC {gate:.4f} minus the tolerance {settings.degradation_tolerance:g}")


def drifted(prod: VersionWindow | None, settings: TriggerSettings) -> list[tuple[str, float]]:
    """Features of ``prod`` whose PSI is above the threshold, most drifted first."""
    if prod is None:
        return []
    found = [(name, psi) for name, psi in prod.psi.items() if math.isfinite(psi) and psi > settings.drift_threshold]
    return sorted(found, key=lambda item: (-item[1], item[0]))


def _claimed(record: Mapping[str, Any] | None, record_id: str = "", stale: Collection[str] = ()) -> bool:
    """A claim that stands: a failed dispatch does not (the next run tries again), nor a claim left in progress
    past its lease (``stale``: the next run retakes it)."""
    return record is not None and record.get("outcome") != "failed" and record_id not in stale


def stale_claims(recorded: Mapping[str, Mapping[str, Any]], *, at: dt.datetime, lease_s: float) -> set[str]:
    """Ids of claims still ``dispatching``/``replaying`` after their lease: the monitor that wrote them stopped
    between its claim and its dispatch (or before recording it). A claim's lease ends at its ``lease_until``
    (wall clock, written with the claim); a claim without one, at its ``at`` plus ``lease_s``."""
    stale = set()
    for record_id, record in recorded.items():
        if record.get("outcome") not in IN_PROGRESS:
            continue
        try:
            until = (parse_time(str(record["lease_until"])) if record.get("lease_until")
                     else parse_time(str(record["at"])) + dt.timedelta(seconds=lease_s))
        except (KeyError, ValueError):
            until = None  # a claim whose times cannot be read is as good as abandoned
        if until is None or until < at:
            stale.add(record_id)
    return stale


def last_retrain(recorded: Mapping[str, Mapping[str, Any]],
                 stale: Collection[str] = ()) -> tuple[str, dt.datetime] | None:
    """The newest triggered retrain (claim id and time) in ``recorded`` (a ``stale`` claim is not one: it is
    retaken, and its new time counts)."""
    fired = []
    for record_id, record in recorded.items():
        if record_id in stale:
            continue
        if (record_id.startswith("new-data-") or _RETRAIN.fullmatch(record_id)) and record.get("outcome") in FIRED:
            try:
                fired.append((parse_time(str(record["at"])), record_id))
            except (KeyError, ValueError):
                continue
    if not fired:
        return None
    moment, record_id = max(fired)
    return record_id, moment


def next_retrain_id(recorded: Mapping[str, Any], stale: Collection[str] = ()) -> str:
    """``retrain-<n>``: the newest ``stale`` retrain claim (retaken), else one more than the highest claim,
    failed ones included, so racing monitors agree."""
    numbers = [int(m.group(1)) for record_id in recorded if (m := _RETRAIN.fullmatch(record_id))]
    retaken = [int(m.group(1)) for record_id in stale if (m := _RETRAIN.fullmatch(record_id))]
    return f"retrain-{max(retaken) if retaken else max(numbers, default=0) + 1:06d}"


@dataclass(frozen=True)
class Trained:
    """The newest logged data a model of this lineage was already trained on and judged: a retrain on days up to
    ``through`` would rebuild ``artifact_id`` (same addresses) and get the same verdict."""

    through: dt.date
    artifact_id: str
    how: str  # "production", or the history entry's action (promote, reject, ...)


_DATE = re.compile(r"(?:^|/)date=(\d{4}-\d{2}-\d{2})(?:/|$)")


def trained_window(artifact: Any, artifact_id: str) -> tuple[dt.date, str | None] | None:
    """The last day and the events of the data the model ``artifact_id`` was trained on: its manifest's dataset
    parameters (``date``, ``events``); without a readable manifest (``artifact`` None or unreadable), the
    ``date=`` partition of its id, events unknown (None)."""
    if artifact is not None:
        try:
            params = artifact.manifest().get("params") or {}
            if params.get("date"):
                return dt.date.fromisoformat(str(params["date"])), str(params.get("events") or "simulated")
        except Exception as exc:  # any failure to read it (missing, corrupt, an outage) falls back to the id
            log.info("model %s: manifest unreadable (%s: %s); its training day is read from its id", artifact_id,
                     type(exc).__name__, exc)
    found = _DATE.search(artifact_id)
    return (dt.date.fromisoformat(found.group(1)), None) if found else None


def already_trained(model: str, production_id: str | None, *, pointer: Any = None, artifact_store: Any = None,
                    history_entries: int = 20) -> Trained | None:
    """The newest logged day already trained on and judged in ``model``'s lineage: production's training window,
    and the candidates the gate promoted or rejected among the last ``history_entries`` history entries (a
    candidate trained on simulated data does not count: a retrain on the log learns something else)."""
    from ..step import artifact_at

    seen: list[tuple[str, str, str | None]] = []  # (artifact id, how, uri)
    if production_id:
        uri = None
        if pointer is not None:
            document = pointer.read(model).document or {}
            uri = document.get("artifact_uri") if document.get("artifact_id") == production_id else None
        seen.append((production_id, "production", uri))
    if pointer is not None:
        for entry in pointer.history(model)[-history_entries:]:
            if entry.get("artifact_id") and entry.get("action") in ("promote", "force", "reject", "rollback"):
                seen.append((str(entry["artifact_id"]), str(entry["action"]), entry.get("artifact_uri")))
    unique: dict[str, tuple[str, str, str | None]] = {}
    for artifact_id, how, uri in seen:  # each model read once (production first)
        unique.setdefault(artifact_id, (artifact_id, how, uri))
    best: Trained | None = None
    for artifact_id, how, uri in unique.values():
        artifact = None
        try:
            if uri:
                artifact = artifact_at(str(uri), artifact_id)
            elif artifact_store is not None:
                from ..artifacts import Artifact

                artifact = Artifact(artifact_store, artifact_id)
        except Exception as exc:  # an unknown scheme, a bad uri: the id is all there is
            log.info("model %s: cannot open %s (%s)", model, artifact_id, exc)
        window = trained_window(artifact, artifact_id)
        if window is None or window[1] not in (EVENTS, None):
            continue
        if best is None or window[0] > best.through:
            best = Trained(window[0], artifact_id, how)
    return best


def evaluate(report: MonitorReport, settings: TriggerSettings, *, now: dt.datetime,
             recorded: Mapping[str, Mapping[str, Any]], running: Sequence[str] = (),
             stale: Collection[str] = (), trained: Trained | None = None) -> list[Trigger]:
    """The triggers ``report`` fires given what is ``recorded`` (id -> record) and the retrain runs ``running``.

    Every returned trigger has an id that names what it decides, so evaluating the same state twice (or in two
    monitors) gives the same ids, and creating them once is firing once. Ids already recorded are left out
    (a failed dispatch excepted: it is tried again; so is a ``stale`` claim, one left in progress past its lease).
    ``trained`` is the newest logged day already trained on (:func:`already_trained`): a degradation or drift
    retrain on days no newer than it would build nothing new, so it waits for the next closed day instead.
    """
    found = _evaluate(report, settings, now=now, recorded=recorded, running=running, stale=stale, trained=trained)
    return [t for t in found if not _claimed(recorded.get(t.record_id), t.record_id, stale)]


def _evaluate(report: MonitorReport, settings: TriggerSettings, *, now: dt.datetime,
              recorded: Mapping[str, Mapping[str, Any]], running: Sequence[str], stale: Collection[str],
              trained: Trained | None) -> list[Trigger]:
    triggers: list[Trigger] = []
    busy = _safe(running[0]) if running else ""
    days = sorted(day for day in set(report.closed_days)
                  if not _claimed(recorded.get(f"new-data-{day}"), f"new-data-{day}", stale))
    new_day = days[-1] if days else None
    if new_day is not None and busy:
        triggers.append(Trigger(f"running.{busy}.new-data-{new_day}", (NEW_DATA,), False,
                                f"day {new_day} closed while the retrain {running[0]} runs; it is dispatched by the "
                                "first monitor run after that one ends", day=new_day))
    elif new_day is not None:
        for day in days[:-1]:
            triggers.append(Trigger(f"new-data-{day}", (NEW_DATA,), False,
                                    f"day {day} closed, superseded by the newer closed day {new_day} (its retrain's "
                                    "window covers the days before it)", day=day))
        triggers.append(Trigger(f"new-data-{new_day}", (NEW_DATA,), True,
                                f"day {new_day} of logged events closed: retrain on it", day=new_day,
                                details={"events": EVENTS}))

    wanted: list[tuple[str, str, tuple[str, ...], dict[str, Any]]] = []
    prod = report.production()
    why = degradation(report, settings)
    if why is not None and prod is not None:
        wanted.append((DEGRADATION, why, (), {"online_auc": prod.auc, "gate_auc": report.production_gate_auc,
                                              "labelled": prod.labelled}))
    features = drifted(prod, settings)
    if prod is not None and len(features) >= settings.drift_features:
        named = ", ".join(f"{name} (PSI {psi:.3f})" for name, psi in features)
        wanted.append((DRIFT, f"{len(features)} feature(s) of production {prod.artifact_id} drifted beyond PSI "
                       f"{settings.drift_threshold:g}: {named}", tuple(name for name, _ in features),
                       {"psi": dict(features)}))
    if not wanted:
        return triggers + _abandoned(triggers, stale, recorded, "production is healthy again")

    last = last_retrain(recorded, stale)
    latest = max(report.closed_days) if report.closed_days else None
    status = ""
    if busy:
        cause, because = f"running.{busy}", f"the retrain {running[0]} is running; not dispatched again"
    elif new_day is not None:
        # The same id as the cool-down it starts: the next runs find the suppression already recorded.
        cause, because = f"new-data-{new_day}.cooldown", f"the new-data retrain of {new_day} in this run covers it"
    elif last is not None and (now - last[1]).total_seconds() < settings.cooldown_s:
        until = last[1] + dt.timedelta(seconds=settings.cooldown_s)
        cause = f"{last[0]}.cooldown"
        because = (f"cool-down: the retrain {last[0]} fired at {stamp(last[1])}, less than "
                   f"{_span(settings.cooldown_s)} ago (next from {stamp(until)})")
    elif latest is None or (trained is not None and dt.date.fromisoformat(latest) <= trained.through):
        # Retraining on days already trained on rebuilds the same model by address: nothing would be learnt.
        cause, status = f"waiting.{latest or 'no-closed-day'}", WAITING
        because = "no closed day of logged events to retrain on yet"
        if trained is not None and latest is not None:
            by = "production" if trained.how == "production" else f"a candidate the gate judged ({trained.how})"
            because = (f"no logged data newer than what {by} {trained.artifact_id} was trained on (up to "
                       f"{trained.through}); the latest closed day is {latest}")
        because += "; the new-data retrain of the next closed day covers it"
    else:
        details: dict[str, Any] = {"events": EVENTS}
        for _, _, _, extra in wanted:
            details.update(extra)
        if trained is not None:
            details["newer_than"] = {"day": trained.through.isoformat(), "artifact_id": trained.artifact_id}
        newer = f"newer than {trained.through} ({trained.artifact_id})" if trained is not None else \
            "no trained model of this lineage found"
        retrain = Trigger(next_retrain_id(recorded, stale), tuple(k for k, *_ in wanted), True,
                          "; ".join(w for _, w, *_ in wanted) + f"; retrain on the logged days up to {latest}, the "
                          f"latest closed day ({newer})", day=latest,
                          features=next((f for *_, f, _ in wanted if f), ()), details=details)
        triggers.append(retrain)
        return triggers + _abandoned(triggers, stale, recorded, "a newer retrain claim replaces it")
    for kind, reason, names, extra in wanted:
        triggers.append(Trigger(f"{cause}.{kind}", (kind,), False, f"{reason}; {'' if status else 'suppressed: '}"
                                f"{because}", features=names, details=extra, status=status,
                                day=latest if status else None))
    return triggers + _abandoned(triggers, stale, recorded, because)


def _abandoned(triggers: Sequence[Trigger], stale: Collection[str], recorded: Mapping[str, Mapping[str, Any]],
               because: str) -> list[Trigger]:
    """Stale retrain claims no trigger of this run retakes: recorded as ``abandoned`` (whether the stopped
    monitor dispatched is unknown; nothing dispatches it again) so no claim stays ``dispatching`` forever.
    Stale day claims are retaken by the new-data trigger (or superseded), rollbacks by their own claim."""
    taken = {t.record_id for t in triggers}
    return [Trigger(record_id, tuple(str(recorded[record_id].get("kind") or "retrain").split("+")), False,
                    f"the claim of {recorded[record_id].get('at')} stayed '{recorded[record_id].get('outcome')}' "
                    f"past its lease (the monitor that wrote it stopped); not retaken: {because}",
                    day=recorded[record_id].get("day"), status="abandoned")
            for record_id in sorted(stale) if _RETRAIN.fullmatch(record_id) and record_id not in taken]


# -- dispatching -----------------------------------------------------------------------------------------------------


class Dispatcher(Protocol):
    """Starts retraining runs and says which are in flight."""

    def running(self) -> list[str]:
        """Ids of the retraining runs in flight (pending or running)."""

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        """Start a retraining run on ``day`` (None: the schedule's day); the run's id and a sentence saying how."""


class NomadDispatcher:
    """Retraining through Nomad: ``retrain-ranker-backfill`` dispatched with ``-meta date=DAY events=logged``, so
    the run learns from the event log the monitor read, whatever the image's luigi.cfg says.

    Always the backfill, also for yesterday: a periodic job's forced launch takes no meta (``POST
    /v1/job/:id/periodic/force`` has no body; ``PeriodicDispatch.ForceRun(jobID)`` in nomad/periodic.go derives the
    child from the parent alone), so the periodic ``retrain-ranker`` cannot be told to read the log. A backfill
    job published before it took ``events`` (its ``MetaOptional`` lacks it) is dispatched with the date alone, and
    the decision says so: that run learns from what luigi.cfg sets."""

    #: Nomad's job statuses of a child still in flight.
    IN_FLIGHT = ("pending", "running")

    def __init__(self, job: str = "retrain-ranker", backfill_job: str | None = None, *, api: Any = None,
                 now: Callable[[], dt.datetime] | None = None, events: str | None = EVENTS) -> None:
        self.job = job
        self.backfill_job = backfill_job or f"{job}-backfill"
        self.events = events
        self._api = api
        self._now = now

    @property
    def api(self) -> Any:
        """The Nomad API (``[nomad]`` settings), made on first use."""
        if self._api is None:
            from ..nomad_api import NomadAPI

            self._api = NomadAPI.from_config()
        return self._api

    def running(self) -> list[str]:
        # One listing covers both: "retrain-ranker" prefixes "retrain-ranker/periodic-*" and
        # "retrain-ranker-backfill/dispatch-*".
        listing = self.api.retry(f"GET jobs?prefix={self.job}", lambda: self.api.get("jobs", {"prefix": self.job}),
                                 deadline=time.monotonic() + 60.0)
        return sorted(str(child["ID"]) for child in listing or []
                      if child.get("ParentID") in (self.job, self.backfill_job)
                      and child.get("Status") in self.IN_FLIGHT)

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        from ..trigger import last_complete_day

        date = day or last_complete_day(self._now() if self._now else None)
        job_id, api = self.backfill_job, self.api
        found = api.retry(f"GET job {job_id}", lambda: api.read(f"job/{job_id}"), deadline=time.monotonic() + 60.0)
        where = f"Nomad namespace {api.namespace or 'default'!r} at {api.address}"
        if found is None:
            raise CaravanError(f"job {job_id!r} not found in {where}; publish it first (caravan publish --version TAG)")
        if found.get("Stop"):
            raise CaravanError(f"job {job_id!r} is stopped in {where}; publish it again to start it")
        params = found.get("ParameterizedJob") or {}
        required, optional = params.get("MetaRequired") or [], params.get("MetaOptional") or []
        if not found.get("ParameterizedJob") or "date" not in required:
            raise CaravanError(f"job {job_id!r} is not a parameterized job that requires meta 'date'; the monitor "
                               "dispatches a retrain with -meta date=YYYY-MM-DD")
        meta = {"date": date.isoformat()}
        note = ""
        if self.events and "events" in [*required, *optional]:
            meta["events"] = self.events
        elif self.events:
            note = (f"; the published {job_id!r} takes no 'events' meta (publish this release), so the run learns "
                    "from what the image's luigi.cfg sets")
            log.warning("model %s: %s", model, note[2:])
        # Sent once: a dispatch that got no answer may have happened (a duplicate run would build nothing anyway).
        answer = api.post(f"job/{job_id}/dispatch", {"Meta": meta})
        return str(answer["DispatchedJobID"]), (f"dispatched {job_id!r} with "
                                                + " ".join(f"{k}={v}" for k, v in meta.items()) + note)


class LocalDispatcher:
    """Retraining here, as a subprocess that runs the pipeline to the end (the local executor's way): on the
    day's logged events, ``luigi --module pipelines.ranker RetrainRanker --events logged --local-scheduler``."""

    def __init__(self, command: Sequence[str] | None = None, timeout_s: float = 6 * 3600.0) -> None:
        self.command = list(command or [sys.executable, "-m", "luigi", "--module", "pipelines.ranker", "RetrainRanker",
                                        "--events", "logged", "--local-scheduler"])
        self.timeout_s = timeout_s

    def running(self) -> list[str]:
        return []  # a local retrain runs to its end inside the monitor run that started it

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        from ..trigger import last_complete_day

        date = day or last_complete_day()
        command = [*self.command, "--model", model, "--events-model", model, "--date", date.isoformat()]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise CaravanError(f"local retrain of {model} on {date} did not finish within {self.timeout_s:g} s") \
                from None
        if done.returncode != 0:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise CaravanError(f"local retrain of {model} on {date} exited {done.returncode}: {tail}")
        return f"local:{date.isoformat()}", f"ran RetrainRanker on {date} here ({' '.join(command[1:4])} ...)"


class NotDispatched(CaravanError):
    """A dispatcher that decides but starts nothing (``--dispatch none``): the claim stands as ``not dispatched``."""


class RecordOnly:
    """Records triggers and dispatches nothing (``--dispatch none``): decisions as if dispatched, cool-down
    included."""

    def running(self) -> list[str]:
        return []

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        raise NotDispatched("not dispatched: --dispatch none")


def dispatcher_for(kind: str = "auto") -> Dispatcher:
    """``auto``: Nomad when the executor is Nomad (``CARAVAN_EXECUTOR`` / ``[caravan] executor``), else local."""
    if kind == "auto":
        from ..config import caravan, section, setting

        kind = setting("CARAVAN_EXECUTOR", section(caravan).executor)
    if kind == "nomad":
        return NomadDispatcher()
    if kind == "local":
        return LocalDispatcher()
    if kind == "none":
        return RecordOnly()
    raise ConfigurationError(f"unknown --dispatch {kind!r}; caravan knows auto, nomad, local and none")


# -- rollback on degradation ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replay:
    """The previous model and production scored on the same logged rows."""

    previous_auc: float | None
    production_auc: float | None
    rows: int


#: ``replay(report, previous pointer entry) -> Replay``.
Replayer = Callable[[MonitorReport, Mapping[str, Any]], Replay]


def _rollback(report: MonitorReport, settings: TriggerSettings, pointer: Any, store: TriggerStore,
              replayer: Replayer, now: dt.datetime, claims: _Claims) -> TriggerOutcome | None:
    """Replay the previous model on production's logged rows; restore it if it scores better. Once per production
    model (the claim ``rollback-from-<change id>``; one left ``replaying`` past its lease is retaken)."""
    from ..errors import PointerConflict
    from ..registry.base import NothingToRollBack, rollback_target

    why = degradation(report, settings)
    if why is None:
        return None
    model = report.model
    state = pointer.read(model)
    if state.document is None or state.artifact_id != report.production_artifact_id:
        return None  # the pointer moved since the report: its numbers are not the current model's
    record_id = f"rollback-from-{_safe(str(state.document.get('change_id') or state.artifact_id))}"
    record = {"at": stamp(now), "kind": "rollback", "outcome": "replaying", "reason": why,
              "production_artifact_id": state.artifact_id, "window_start": report.window_start,
              "window_end": report.window_end, **claims.lease()}
    version = store.create(model, record_id, record)
    if version is None:
        version = _retake(store, model, record_id, record, claims)
    if version is None:
        return TriggerOutcome(record_id, "rollback", "taken", "another monitor replays this production model")

    def finish(outcome: str, reason: str, **extra: Any) -> TriggerOutcome:
        store.replace(model, record_id, {**record, **extra, "outcome": outcome, "reason": reason}, version)
        log.warning("model %s: %s", model, reason)
        return TriggerOutcome(record_id, "rollback", outcome, reason)

    pointer.repair_history(model)
    try:
        target, _ = rollback_target(model, state, pointer.history(model))
    except (NothingToRollBack, PointerConflict) as exc:
        return finish("not rolled back", f"{why}; no rollback: {exc}")
    try:
        replay = replayer(report, target)
    except Exception as exc:  # any failure to replay means "no rollback", recorded with its cause
        return finish("not rolled back", f"{why}; replaying {target.get('artifact_id')} failed: "
                      f"{type(exc).__name__}: {exc}")
    scores = {"previous_artifact_id": target.get("artifact_id"), "previous_auc": replay.previous_auc,
              "production_auc": replay.production_auc, "replayed_rows": replay.rows}
    if replay.previous_auc is None or replay.production_auc is None or replay.previous_auc <= replay.production_auc:
        return finish("not rolled back", f"{why}; the previous model {target.get('artifact_id')} does not score "
                      f"better on the same {replay.rows} logged rows ({_fmt(replay.previous_auc)} vs production "
                      f"{_fmt(replay.production_auc)})", **scores)
    reason = (f"monitor: {why}; the previous model scores better on the same {replay.rows} logged rows "
              f"(AUC {replay.previous_auc:.4f} vs production {replay.production_auc:.4f})")

    def decide(current: Any) -> dict[str, Any] | None:
        if current.artifact_id != state.artifact_id:
            return None  # someone moved the pointer meanwhile: their change wins
        again, undone = rollback_target(model, current, pointer.history(model))
        if again.get("artifact_id") != target.get("artifact_id"):
            return None
        return {"artifact_uri": again["artifact_uri"], "artifact_id": again["artifact_id"],
                "metrics": again.get("metrics"), "action": "rollback", "promoted_by": "monitor",
                "target_change_id": again.get("change_id"), "rolled_back": undone, "reason": reason}

    try:
        with pointer.lock(model, holder=f"monitor:{record_id}", timeout_s=LOCK_TIMEOUT_S):
            _, written = pointer.change(model, decide)
    except CaravanError as exc:  # the lock held too long, the pointer racing: recorded, the next model's turn
        return finish("not rolled back", f"{reason}; the rollback failed: {exc}", **scores)
    if written is None:
        return finish("not rolled back", f"{why}; the pointer moved before the rollback; left alone", **scores)
    return finish("rolled back", reason, **scores, rolled_back_to=target.get("artifact_id"))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def replay_logged_rows(store: Any, *, attribution_window_s: float | None = None) -> Replayer:
    """A :data:`Replayer` over the event log on ``store``: production's labelled predictions of the report's
    window (joined with their feedback as the training join does), scored again by the previous model; production's
    own AUC is that of the scores it logged for the very same rows."""

    def replay(report: MonitorReport, previous: Mapping[str, Any]) -> Replay:
        import lightgbm as lgb
        import numpy as np
        import pyarrow.compute as pc

        from ..events.join import DEFAULT_ATTRIBUTION_WINDOW_S, LABEL, join_events
        from ..events.log import FEEDBACK, PREDICTIONS, read_events
        from ..ml.features import feature_matrix
        from ..ml.metrics import roc_auc
        from ..registry.gate import model_schema
        from ..step import artifact_at

        window_s = DEFAULT_ATTRIBUTION_WINDOW_S if attribution_window_s is None else attribution_window_s
        start, end = parse_time(report.window_start), parse_time(report.window_end)
        days = [start.date() + dt.timedelta(days=i) for i in range((end.date() - start.date()).days + 1)]
        predictions = read_events(store, report.model, PREDICTIONS, days)
        labelled_until = end - dt.timedelta(seconds=window_s)  # later rows' windows are still open
        keep = pc.and_(pc.and_(pc.greater_equal(predictions["ts"], start), pc.less(predictions["ts"], labelled_until)),
                       pc.equal(predictions["artifact_id"], str(report.production_artifact_id)))
        predictions = predictions.filter(keep)
        feedback = read_events(store, report.model, FEEDBACK, [*days, end.date() + dt.timedelta(days=1)])
        joined, _ = join_events(predictions, feedback, window_s)
        if joined.num_rows == 0:
            return Replay(None, None, 0)
        y = np.asarray(joined[LABEL].to_numpy(zero_copy_only=False), dtype=np.float64)
        # The logged score of each joined row, in the join's order: the first logged (request_id, row).
        by_event = {(r, int(w or 0)): s for r, w, s in zip(predictions["request_id"].to_pylist(),
                                                            predictions["row"].to_pylist(),
                                                            predictions["score"].to_pylist(), strict=True)}
        ids = joined["event_id"].to_pylist()
        logged = np.asarray([by_event.get(_event_key(i), math.nan) for i in ids], dtype=np.float64)
        artifact = artifact_at(str(previous["artifact_uri"]), str(previous["artifact_id"]))
        schema = model_schema(artifact)
        booster = lgb.Booster(model_str=artifact.read_text("model.txt"))
        scores = np.asarray(booster.predict(feature_matrix(joined, [f["name"] for f in schema["features"]])),
                            dtype=np.float64)
        ok = np.isfinite(logged)
        return Replay(_auc(roc_auc, y[ok], scores[ok]), _auc(roc_auc, y[ok], logged[ok]), int(ok.sum()))

    return replay


def _event_key(event_id: str) -> tuple[str, int]:
    request, _, row = str(event_id).rpartition("#")
    return (request, int(row)) if request and row.isdigit() else (str(event_id), 0)


def _auc(fn: Callable[[Any, Any], float], y: Any, scores: Any) -> float | None:
    try:
        value = float(fn(y, scores))
    except ValueError:  # one class only
        return None
    return value if math.isfinite(value) else None


# -- running them ------------------------------------------------------------------------------------------------


def run_triggers(report: MonitorReport, settings: TriggerSettings, *, pointer: Any = None,
                 dispatcher: Dispatcher | None = None, now: dt.datetime | None = None,
                 store: TriggerStore | None = None, replayer: Replayer | None = None,
                 artifact_store: Any = None, attribution_window_s: float | None = None,
                 clock: Callable[[], dt.datetime] | None = None) -> list[TriggerOutcome]:
    """Evaluate ``report``, record every trigger (create-if-absent), dispatch what fires, roll back if asked.

    ``pointer`` defaults to the configured one, ``store`` to the records beside it, ``dispatcher`` to
    :func:`dispatcher_for` ``("auto")``; ``replayer`` (rollback) to :func:`replay_logged_rows` over
    ``artifact_store`` (default: the artifact root's store) with the monitor's ``attribution_window_s``.
    ``now`` is the report's time (decisions, cool-down); ``clock`` (default: the wall clock) times the claims'
    leases, which must hold in real time whatever time the report is of.
    """
    if pointer is None and (store is None or settings.rollback_on_degradation):
        from ..registry import open_pointer

        pointer = open_pointer()
    store = store or trigger_store(pointer)
    dispatcher = dispatcher or dispatcher_for("auto")
    now = now or dt.datetime.now(dt.timezone.utc)
    clock = clock or (lambda: dt.datetime.now(dt.timezone.utc))
    model = report.model
    recorded = {record_id: record for record_id, (record, _) in store.records(model).items()}
    stale = stale_claims(recorded, at=clock(), lease_s=settings.claim_lease_s)
    trained = None
    if degradation(report, settings) is not None or len(drifted(report.production(), settings)) >= \
            settings.drift_features:  # only then: a healthy run reads no manifest
        trained = already_trained(model, report.production_artifact_id, pointer=pointer,
                                  artifact_store=artifact_store)
    decide = functools.partial(evaluate, report, settings, now=now, recorded=recorded, stale=stale, trained=trained)
    triggers = decide()
    if any(t.dispatch for t in triggers):  # only then ask the cluster: a healthy run does not need Nomad
        triggers = decide(running=dispatcher.running())
    # A dispatch may take long (a local retrain runs to its end inside this run): the claim's lease covers it.
    lease_s = max(settings.claim_lease_s, float(getattr(dispatcher, "timeout_s", 0.0) or 0.0) + 60.0)
    claims = _Claims(clock, lease_s, settings.claim_lease_s)
    outcomes = [_fire(trigger, report, now, store, dispatcher, recorded, claims) for trigger in triggers]
    if settings.rollback_on_degradation:
        if replayer is None:
            if artifact_store is None:
                from ..config import artifact_root
                from ..storage import open_store

                artifact_store = open_store(artifact_root())
            replayer = replay_logged_rows(artifact_store, attribution_window_s=attribution_window_s)
        rolled = _rollback(report, settings, pointer, store, replayer, now, claims)
        if rolled is not None:
            outcomes.append(rolled)
    return outcomes


@dataclass(frozen=True)
class _Claims:
    """How this run times its claims: ``clock`` (wall clock), the lease it writes (``lease_s``, which covers the
    dispatcher's own time limit), and the lease assumed for a claim that records none (``default_s``)."""

    clock: Callable[[], dt.datetime]
    lease_s: float
    default_s: float

    def lease(self) -> dict[str, str]:
        """The claim's wall-clock stamps: when it was written, and until when its writer counts as alive."""
        at = self.clock()
        return {"claimed_at": stamp(at), "lease_until": stamp(at + dt.timedelta(seconds=self.lease_s))}

    def stale(self, record_id: str, record: Mapping[str, Any]) -> bool:
        return record_id in stale_claims({record_id: record}, at=self.clock(), lease_s=self.default_s)


def _retake(store: TriggerStore, model: str, record_id: str, record: dict[str, Any], claims: _Claims) -> int | None:
    """Replace the record at ``record_id`` if it is a failed dispatch or a claim left in progress past its lease,
    at the version read (check-and-set: of two monitors retaking it, one does). The new version, or None (not
    retakable, or another monitor retook it first)."""
    existing = store.read(model, record_id)
    if existing is None:
        return None
    old, version = existing
    if old.get("outcome") == "failed":
        pass
    elif claims.stale(record_id, old):
        record["retaken"] = {k: old.get(k) for k in ("at", "outcome", "claimed_at", "lease_until") if old.get(k)}
        record["reason"] = (f"{record['reason']}; retaken: the claim of {old.get('at')} stayed "
                            f"'{old.get('outcome')}' past its lease (its monitor stopped before finishing)")
    else:
        return None
    if not store.replace(model, record_id, record, version):
        return None
    return (store.read(model, record_id) or ({}, 0))[1]


def _fire(trigger: Trigger, report: MonitorReport, now: dt.datetime, store: TriggerStore, dispatcher: Dispatcher,
          recorded: Mapping[str, Mapping[str, Any]], claims: _Claims) -> TriggerOutcome:
    model = report.model
    record = trigger.record(report, now)
    if trigger.dispatch:
        record.update(claims.lease())
    version = store.create(model, trigger.record_id, record)
    if version is None and (trigger.dispatch or trigger.record_id in recorded):
        # A failed dispatch is retried under the same id, and a stale claim retaken, by whoever replaces it first.
        version = _retake(store, model, trigger.record_id, record, claims)
    if version is None:
        return TriggerOutcome(trigger.record_id, trigger.kind, "taken", "another monitor recorded it first")
    if not trigger.dispatch:
        log.info("model %s: %s trigger %s: %s", model, trigger.kind, record["outcome"], record["reason"])
        return TriggerOutcome(trigger.record_id, trigger.kind, str(record["outcome"]), str(record["reason"]))
    day = dt.date.fromisoformat(trigger.day) if trigger.day else None
    reason = str(record["reason"])
    try:
        child, how = dispatcher.retrain(model, day)
    except NotDispatched as exc:
        store.replace(model, trigger.record_id, {**record, "outcome": "not dispatched", "how": str(exc)}, version)
        return TriggerOutcome(trigger.record_id, trigger.kind, "not dispatched", reason)
    except CaravanError as exc:
        store.replace(model, trigger.record_id, {**record, "outcome": "failed", "error": str(exc)}, version)
        log.error("model %s: %s trigger could not dispatch: %s", model, trigger.kind, exc)
        return TriggerOutcome(trigger.record_id, trigger.kind, "failed", f"{reason}; dispatch failed: {exc}")
    if not store.replace(model, trigger.record_id, {**record, "outcome": "dispatched", "child": child, "how": how},
                         version):
        log.warning("model %s: trigger record %s changed while dispatching", model, trigger.record_id)
    log.info("model %s: %s trigger dispatched %s: %s", model, trigger.kind, child, reason)
    return TriggerOutcome(trigger.record_id, trigger.kind, "dispatched", reason, child)


# -- the CLI's part --------------------------------------------------------------------------------------------------


def _duration(text: str) -> float:
    from ..entrypoint import parse_duration  # 90s, 15m, 3h, 1d; argparse's error when it is not one

    return parse_duration(text)


def _boolean(text: str) -> bool:
    """``true``/``false`` (what a Nomad spec's bool variable renders as), also 1/0 and yes/no."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not true or false")
    return value


def add_trigger_arguments(parser: argparse.ArgumentParser) -> None:
    """The trigger flags of ``caravan monitor`` (defaults: :class:`TriggerSettings`)."""
    defaults = TriggerSettings()
    group = parser.add_argument_group("triggers", "what the monitor run starts, recorded under "
                                      "caravan/<env>/models/M/triggers/ and shown by caravan models history")
    group.add_argument("--no-triggers", action="store_true", help="compute and publish only; fire nothing")
    group.add_argument("--degradation-tolerance", type=float, default=defaults.degradation_tolerance, metavar="X",
                       help="retrain when production's online AUC < its gate AUC - X (default %(default)s)")
    group.add_argument("--min-events", type=int, default=defaults.min_events, metavar="N",
                       help="labelled events production needs before its AUC counts (default %(default)s)")
    group.add_argument("--drift-threshold", type=float, default=defaults.drift_threshold, metavar="PSI",
                       help="a feature drifts when its PSI is above this (default %(default)s)")
    group.add_argument("--drift-features", type=int, default=defaults.drift_features, metavar="N",
                       help="retrain when at least N features drift (default %(default)s)")
    group.add_argument("--cooldown", type=_duration, default=defaults.cooldown_s, metavar="DURATION",
                       help="at most one degradation/drift retrain per model within this (default 3h)")
    group.add_argument("--rollback-on-degradation", nargs="?", const=True, default=False, type=_boolean,
                       metavar="true|false", help="on degradation, replay the previous model on the same logged rows "
                       "and roll back to it if it scores better (both scores recorded)")
    group.add_argument("--claim-lease", type=_duration, default=defaults.claim_lease_s, metavar="DURATION",
                       help="a claim left 'dispatching'/'replaying' longer than this (its monitor stopped) is "
                       "retaken by the next run (default 30m: twice the monitor job's period)")
    group.add_argument("--dispatch", choices=["auto", "nomad", "local", "none"], default="auto",
                       help="how retrains start: nomad (retrain-ranker-backfill / the periodic job), local (a "
                       "pipeline subprocess), none (record only); auto: nomad when the executor is nomad")


def settings_from_args(args: argparse.Namespace) -> TriggerSettings:
    """The :class:`TriggerSettings` of parsed :func:`add_trigger_arguments` flags."""
    return TriggerSettings(degradation_tolerance=args.degradation_tolerance, min_events=args.min_events,
                           drift_threshold=args.drift_threshold, drift_features=args.drift_features,
                           cooldown_s=args.cooldown, rollback_on_degradation=args.rollback_on_degradation,
                           claim_lease_s=getattr(args, "claim_lease", CLAIM_LEASE_S))


def run_from_args(report: MonitorReport, args: argparse.Namespace, **kwargs: Any) -> list[TriggerOutcome]:
    """What ``caravan monitor`` calls after publishing: nothing with ``--no-triggers``, else :func:`run_triggers`."""
    if getattr(args, "no_triggers", False):
        return []
    if getattr(args, "attribution_window", None) and "attribution_window_s" not in kwargs:
        kwargs["attribution_window_s"] = _duration(str(args.attribution_window))  # the monitor's own flag
    return run_triggers(report, settings_from_args(args), dispatcher=dispatcher_for(getattr(args, "dispatch", "auto")),
                        **kwargs)


def history_entries(pointer: Any, model: str) -> list[dict[str, Any]]:
    """The trigger records of ``model`` as ``caravan models history`` entries (``"action": "trigger"``), oldest
    first; ``at`` is when the monitor decided, ``trigger_id`` the record's id."""
    entries = [{**record, "action": "trigger", "trigger_id": record_id}
               for record_id, (record, _) in trigger_store(pointer).records(model).items()]
    return sorted(entries, key=lambda e: (str(e.get("at") or ""), e["trigger_id"]))


def outcome_lines(outcomes: Sequence[TriggerOutcome]) -> list[str]:
    """One line per outcome, for the monitor's summary."""
    return [f"trigger {o.kind}: {o.outcome}" + (f" ({o.child})" if o.child else "") + f" - {o.reason}"
            for o in outcomes]


__all__ = ["Dispatcher", "LocalDispatcher", "NomadDispatcher", "NotDispatched", "RecordOnly", "Replay", "Trigger",
           "TriggerOutcome", "TriggerSettings", "add_trigger_arguments", "degradation", "dispatcher_for", "drifted",
           "evaluate", "history_entries", "outcome_lines", "replay_logged_rows", "run_from_args", "run_triggers",
           "settings_from_args"]
