"""``python -m pipelines.demo_loop``: the loop, end to end: serve -> log -> monitor -> retrain -> gate -> A/B test ->
drift caught. Embedded defaults: local executor, local store and file pointer under a fresh ``--root``
(default ``./.caravan/loop/<UTC time>``), luigi's local scheduler, a SIMULATED world (:mod:`pipelines.world`).

What happens (each step is one line of the printed timeline, with why):

1. **Production model.** ``RetrainRanker`` on one day of the SIMULATED click log: grid, gate, promotion.
2. **Day 1.** ``caravan serve`` (with its event log) answers simulated users: each visit is one request of
   ``candidates`` rows; the user looks down the list in score order (lower ranks are looked at less often)
   and clicks by the world's hidden model; clicks come back as ``POST /feedback`` for their row.
3. **The day closes** once the clock passes midnight plus an hour with everything shipped.
4. **Monitor** (what ``caravan monitor ranker`` runs: :func:`caravan.monitoring.compute.compute`,
   :func:`~caravan.monitoring.publish.publish_monitoring`, :func:`~caravan.monitoring.triggers.run_triggers`).
   The new closed day fires the *new data* trigger. Its dispatcher is the demo's: instead of
   ``RetrainRanker`` (which promotes by itself), the demo trains on the logged day
   (``GridSearchRanker --events logged``) and gates the winner (:func:`caravan.registry.gate.judge`), so that a
   candidate that passes is A/B-tested before it replaces production.
5. **Experiment.** ``caravan experiment start`` (its Python entry, :func:`caravan.experiments.commands.start`;
   fixed 50/50, users stick to their arm); ``caravan gateway`` with one ``caravan worker`` per arm answers
   the users; ``experiment status`` reads the counters; ``experiment stop --winner`` promotes the arm with the
   higher probability of being best through the gate. ``caravan serve`` reloads the new production.
6. **Drift.** Prices rise and users grow more price-sensitive; ``caravan serve`` answers again; the monitor's
   *drift* trigger names the drifted feature (and *degradation* fires when online AUC falls far enough). Its
   retrain waits for new data when production was trained on the latest closed day (a retrain on the same days
   would rebuild the same model): the next closed day's new-data retrain covers it. The demo ends there.

Why both servers: the gateway counts (and logs) feedback only while an experiment runs (its ``/feedback``
answers 409 otherwise: a reward is only meaningful for an arm), so days without an experiment are served by
``caravan serve``, which logs every prediction and feedback; the experiment goes through the gateway.

Time: every event is stamped with SIMULATED time. The servers run with the event log's ``clock`` set to
:class:`pipelines.world.SimClock` (``EventLog(clock=...)``, the log's way to inject time; see
:mod:`pipelines.loop_servers`), a file the demo moves forward as the simulated hours pass, so a day of traffic
takes seconds and lands in its own ``date=/hour=`` folders. Every server is stopped on exit, on errors and on
Ctrl-C (SIGTERM first: the event log drains).

``--quick`` is the reduced size the test suite runs (tests/integration/test_demo_loop.py). The timeline is also
written to ``<root>/timeline.json`` and the figure to ``<root>/loop.png``; the server pids to ``servers.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .loop_servers import Servers, free_port, health
from .world import SimClock, World

MODEL = "ranker"
BOOTSTRAP_DAY = dt.date(2026, 11, 22)  # the SIMULATED click log the first model learns from
DAY1 = dt.date(2026, 11, 23)  # served by caravan serve, then closed
DAY2 = dt.date(2026, 11, 24)  # the experiment (morning), the drift (afternoon)
GRID = {"num_leaves": [15]}
#: How much worse than production (holdout AUC) a candidate may be and still pass the gate.
TOLERANCE = 0.01
#: Examination by rank: the user looks at the i-th best-scored candidate with this probability.
EXAMINE = np.array([1.0, 0.7, 0.5, 0.35, 0.25, 0.2])
PROJECT = Path(__file__).resolve().parent.parent

@dataclass(frozen=True)
class Size:
    """How big the run is: users, visits per phase, rows of the bootstrap log."""

    users: int
    day_visits: int
    experiment_visits: int
    drift_visits: int
    bootstrap_rows: int
    candidates: int = 4


FULL = Size(users=400, day_visits=2500, experiment_visits=1000, drift_visits=800, bootstrap_rows=8000)
QUICK = Size(users=150, day_visits=1000, experiment_visits=400, drift_visits=300, bootstrap_rows=3000)


@dataclass
class Entry:
    """One line of the timeline: simulated time, seconds since the start, what happened and why."""

    kind: str
    at: str
    wall_s: float
    event: str
    reason: str
    data: dict[str, Any] = field(default_factory=dict)


class Timeline:
    """What happened and why, printed as it happens and kept for the JSON and the figure."""

    def __init__(self, clock: SimClock) -> None:
        self.clock, self.started = clock, time.monotonic()
        self.entries: list[Entry] = []

    def add(self, kind: str, event: str, reason: str, **data: Any) -> Entry:
        moment = self.clock.now()
        entry = Entry(kind, moment.isoformat().replace("+00:00", "Z"), round(time.monotonic() - self.started, 1),
                      event, reason, data)
        self.entries.append(entry)
        print(f"{moment:%m-%d %H:%M}  {entry.wall_s:6.1f}s  {event:<22} {reason}", flush=True)
        return entry


@dataclass
class Batch:
    """Outcome of one slice of simulated time, for the figure."""

    at: float
    phase: str
    arm: str
    rows: int
    clicks: int


class Traffic:
    """Simulated users sending visits to a server: requests, clicks by the hidden model, feedback."""

    def __init__(self, world: World, clock: SimClock, threads: int = 4) -> None:
        self.world, self.clock = world, clock
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="user")
        self.local = threading.local()
        self.batches: list[Batch] = []
        self.counter = 0

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _session(self) -> Any:
        import requests

        if not hasattr(self.local, "session"):
            self.local.session = requests.Session()
        return self.local.session

    def _clicks(self, visit: Any, scores: list[float]) -> np.ndarray:
        """Which candidates the user clicks: looked at by rank of score, clicked by the hidden model."""
        order = np.argsort(-np.asarray(scores), kind="stable")
        rank = np.empty(len(order), dtype=np.int64)
        rank[order] = np.arange(len(order))
        examined = EXAMINE[np.minimum(rank, len(EXAMINE) - 1)]
        rng = np.random.default_rng(int(visit.draw * 2**32))
        return np.asarray(rng.random(len(scores)) < examined * visit.p_click)

    def _serve_visit(self, url: str, visit: Any, request_id: str) -> tuple[str, int, int]:
        session = self._session()
        answer = session.post(f"{url}/predict", json={"rows": visit.rows}, timeout=30,
                              headers={"x-request-id": request_id, "x-unit-id": str(visit.user_id)})
        answer.raise_for_status()
        clicks = self._clicks(visit, answer.json()["predictions"])
        for row in np.flatnonzero(clicks):
            session.post(f"{url}/feedback", json={"request_id": request_id, "reward": 1, "row": int(row)},
                         timeout=30).raise_for_status()
        return "", len(visit.rows), int(clicks.sum())

    def _gateway_visit(self, url: str, visit: Any) -> tuple[str, int, int]:
        session = self._session()
        answers = []
        for row in visit.rows:  # one request per candidate: the gateway's feedback is per request
            answer = session.post(f"{url}/predict", json={"visitor": str(visit.user_id), **row}, timeout=30)
            answer.raise_for_status()
            answers.append(answer.json())
        clicks = self._clicks(visit, [a["prediction"] for a in answers])
        for answer, clicked in zip(answers, clicks, strict=True):
            session.post(f"{url}/feedback", json={"request_id": answer["request_id"], "reward": int(clicked)},
                         timeout=30).raise_for_status()
        return answers[0]["arm"], len(visit.rows), int(clicks.sum())

    def run(self, phase: str, url: str, start: dt.datetime, end: dt.datetime, visits: int, *,
            gateway: bool = False, slices: int = 48) -> tuple[int, int]:
        """Spread ``visits`` over ``[start, end)`` in ``slices`` steps of the clock; (rows, clicks) in total."""
        span = (end - start).total_seconds()
        per_slice = np.diff(np.linspace(0, visits, slices + 1).round().astype(int))
        rows = clicks = 0
        for i, count in enumerate(per_slice):
            at = start.timestamp() + span * i / slices
            self.clock.set(at)
            futures = []
            for _ in range(count):
                visit = self.world.visit()
                self.counter += 1
                if gateway:
                    futures.append(self.pool.submit(self._gateway_visit, url, visit))
                else:
                    futures.append(self.pool.submit(self._serve_visit, url, visit, f"{phase}-{self.counter}"))
            per_arm: dict[str, list[int]] = {}
            for future in futures:
                arm, n, c = future.result()  # a failed request stops the demo with its error
                per_arm.setdefault(arm, [0, 0])
                per_arm[arm][0] += n
                per_arm[arm][1] += c
            for arm, (n, c) in per_arm.items():
                self.batches.append(Batch(at, phase, arm, n, c))
                rows, clicks = rows + n, clicks + c
        return rows, clicks


class DemoDispatcher:
    """The monitor's dispatcher in the demo: a retrain is handed to the demo, which trains, gates and A/B-tests."""

    def __init__(self) -> None:
        self.requested: list[tuple[str, dt.date | None]] = []

    def running(self) -> list[str]:
        return []

    def retrain(self, model: str, day: dt.date | None) -> tuple[str, str]:
        self.requested.append((model, day))
        what = f"logged day {day}" if day else "the next closed day"
        return f"demo-loop-{len(self.requested)}", f"handed to the demo: train on {what}, gate, A/B test"


_ARTIFACT_ID = re.compile(r"\b([A-Z][A-Za-z]+)/[^\s;()]*--([0-9a-f]{8})[0-9a-f]*")


def _short(artifact_id: str | None) -> str:
    """An artifact id as family and the start of its digest (the full id is in timeline.json and the store)."""
    return _shorten(artifact_id) if artifact_id else "-"


def _shorten(text: str) -> str:
    return _ARTIFACT_ID.sub(lambda m: f"{m.group(1)}…{m.group(2)}", text)


def _setup(root: Path) -> None:
    os.environ.update(CARAVAN_ARTIFACT_ROOT=str(root / "artifacts"), CARAVAN_POINTER_ROOT=str(root / "pointers"),
                      CARAVAN_EXECUTOR="local")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), os.environ.get("PYTHONPATH", "")) if p)
    from caravan import config

    config.reload()


def _build(tasks: list[Any]) -> bool:
    import luigi

    return bool(luigi.build(tasks, local_scheduler=True, workers=2, log_level="WARNING"))


class Loop:
    """The demo's phases, sharing the world, the clock, the servers and the timeline."""

    def __init__(self, root: Path, size: Size, seed: int, servers: Servers) -> None:
        from caravan.config import artifact_root
        from caravan.storage import open_store

        self.root, self.size, self.servers = root, size, servers
        self.clock = SimClock(root / "clock")
        self.clock.set(dt.datetime.combine(DAY1, dt.time(), dt.timezone.utc))
        self.timeline = Timeline(self.clock)
        self.world = World(users=size.users, seed=seed, candidates=size.candidates, source_day=BOOTSTRAP_DAY,
                           source_rows=size.bootstrap_rows)
        self.traffic = Traffic(self.world, self.clock)
        self.store = open_store(artifact_root())
        self.monitor_reports: list[Any] = []
        self.dispatched: list[tuple[str, dt.date | None]] = []
        self.serve_url = ""

    # -- helpers --------------------------------------------------------------------------------------------------

    def at(self, day: dt.date, hour: int, minute: int = 0) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(hour, minute), dt.timezone.utc)

    def pointer(self) -> Any:
        from caravan.registry import open_pointer

        return open_pointer()

    def production(self) -> str | None:
        found: str | None = self.pointer().read(MODEL).artifact_id
        return found

    def wait(self, what: str, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                raise RuntimeError(f"demo loop: gave up waiting {timeout_s:g} s for {what}")
            time.sleep(0.1)

    def shipped(self, url: str) -> bool:
        state = health(f"{url}/health").get("event_log") or {}
        return state.get("buffered_rows") == 0 and state.get("spool_files") == 0

    # -- phases ---------------------------------------------------------------------------------------------------

    def bootstrap(self) -> None:
        from pipelines.ranker import RetrainRanker

        retrain = RetrainRanker(date=BOOTSTRAP_DAY, window_days=1, rows_per_day=self.size.bootstrap_rows,
                                grid=GRID, model=MODEL, tolerance=TOLERANCE)
        if not _build([retrain]):
            raise RuntimeError("demo loop: the bootstrap RetrainRanker failed (see the luigi output above)")
        verdict = retrain.output().read_json("run.json")["promotion"]
        self.timeline.add("production", "production model", f"{_short(self.production())}: RetrainRanker on the "
                          f"SIMULATED log of {BOOTSTRAP_DAY}, gate: {verdict['decision']}: "
                          f"{'; '.join(verdict['reasons'])}", artifact_id=self.production())

    def launch_serve(self) -> None:
        """Start ``caravan serve`` now: it waits for a first model and loads it once one is promoted."""
        port = free_port()
        self.serve_url = f"http://127.0.0.1:{port}"
        self.servers.launch("serve", [sys.executable, "-m", "pipelines.loop_servers", "serve", "--model", MODEL,
                                      "--port", str(port), "--clock", str(self.clock.path),
                                      "--spool-dir", str(self.root / "spool" / "serve")], env=dict(os.environ))

    def serving(self) -> None:
        production = self.production()
        self.servers.wait("serve", f"{self.serve_url}/health")
        self.wait("caravan serve to load production",
                  lambda: health(f"{self.serve_url}/health").get("model") == production)
        self.timeline.add("serve", "caravan serve up", f"{self.serve_url}, event log on, serving "
                          f"{_short(production)}")

    def day_one(self) -> None:
        rows, clicks = self.traffic.run("day1", self.serve_url, self.at(DAY1, 0), self.at(DAY1, 23, 50),
                                        self.size.day_visits)
        self.timeline.add("traffic", "users on caravan serve", f"{self.size.day_visits} visits, {rows} rows scored, "
                          f"{clicks} clicks ({clicks / max(rows, 1):.1%} per row)")
        from caravan.events.log import closed_days

        self.clock.set(self.at(DAY2, 1, 1))  # past midnight + the log's one-hour close delay
        self.wait(f"day {DAY1} to close", lambda: DAY1 in closed_days(self.store, MODEL))
        self.timeline.add("closed", "day closed", f"{DAY1}: every writer passed midnight + 1 h with nothing "
                          "unshipped (its .closed marker)")

    def monitor(self, start: dt.datetime, end: dt.datetime, settings: Any) -> list[Any]:
        """What ``caravan monitor`` does (compute, publish, triggers), with the demo's dispatcher."""
        from caravan.monitoring.compute import compute
        from caravan.monitoring.publish import publish_monitoring
        from caravan.monitoring.triggers import run_triggers

        self.clock.set(end)
        monitoring = compute(MODEL, store=self.store, pointer=self.pointer(), window_start=start, window_end=end,
                             now=end)
        artifact, _ = publish_monitoring(self.store, monitoring, (end - start).total_seconds())
        report = monitoring.report
        self.monitor_reports.append(report)
        prod = report.production()
        psi = sorted((prod.psi if prod else {}).items(), key=lambda kv: -kv[1])[:2]
        auc = f"{prod.auc:.3f}" if prod and prod.auc is not None else "-"
        self.timeline.add("monitor", "monitor ran", f"window {start:%m-%d %H:%M}-{end:%H:%M}: production "
                          f"{prod.requests if prod else 0} rows, online AUC {auc} (gate "
                          f"{report.production_gate_auc or 0:.3f}), top PSI "
                          + ", ".join(f"{k} {v:.2f}" for k, v in psi) + f"; closed days {list(report.closed_days)}",
                          artifact=artifact.uri)
        dispatcher = DemoDispatcher()
        outcomes = run_triggers(report, settings, pointer=self.pointer(), dispatcher=dispatcher, now=end)
        from caravan.monitoring.triggers_store import trigger_store

        records = trigger_store(self.pointer()).records(MODEL)  # what the triggers recorded, drifted features too
        for outcome in outcomes:
            record = outcome.record_id
            recorded: dict[str, Any] = records[record][0] if record in records else {}
            features = list(recorded.get("features") or [])
            self.timeline.add(f"trigger:{outcome.kind}", f"trigger {outcome.kind}", f"{outcome.outcome}: "
                              + _shorten(outcome.reason), record=record, outcome=outcome.outcome, features=features)
        self.dispatched = dispatcher.requested
        return list(outcomes)

    def retrain(self, day: dt.date) -> Any:
        from caravan.artifacts import Artifact
        from caravan.registry.gate import judge
        from caravan.step import artifact_at
        from pipelines.ranker import GridSearchRanker

        grid = GridSearchRanker(date=day, window_days=1, events="logged", events_model=MODEL, grid=GRID)
        if not _build([grid]):
            raise RuntimeError(f"demo loop: GridSearchRanker on the logged day {day} failed (see the luigi output)")
        winner = grid.output().read_json("summary.json")["winner"]
        self.timeline.add("retrain", "retrained", f"GridSearchRanker --events logged --date {day}: "
                          f"{_short(winner['model'])} valid AUC {winner.get('valid_auc', 0):.3f}",
                          artifact_id=winner["model"])
        candidate = Artifact(self.store, winner["model"])
        document = self.pointer().read(MODEL).document or {}
        current = artifact_at(document["artifact_uri"], document["artifact_id"]) if document else None
        verdict = judge(candidate, current, tolerance=TOLERANCE)
        self.timeline.add("gate", f"gate: {verdict['decision']}", _shorten("; ".join(verdict["reasons"]))
                          + f" (the candidate's holdout: logged rows of {day})", decision=verdict["decision"])
        return candidate if verdict["decision"] == "promote" else None

    def experiment(self, candidate: Any) -> None:
        from caravan.errors import CaravanError
        from caravan.experiments import commands, experiment_store

        store = experiment_store()
        self.clock.set(self.at(DAY2, 1, 30))
        exp = commands.start(self.pointer(), store, MODEL, ["control=current", f"challenger={candidate.uri}"],
                             weights="50,50", policy="fixed", unit="visitor", reward="click", operator="demo-loop")
        env = {**os.environ, "CARAVAN_SECRET_GATEWAY_SIGNING_KEY": secrets.token_hex(32)}
        flags, healths = [], {}
        for arm in ("control", "challenger"):  # launched together, then waited for: their start-ups overlap
            grpc_port, http_port = free_port(), free_port()
            self.servers.launch(f"worker-{arm}", [sys.executable, "-m", "caravan.cli", "worker", "--model", MODEL,
                                                  "--arm", arm, "--host", "127.0.0.1", "--grpc-port", str(grpc_port),
                                                  "--http-port", str(http_port), "--no-isolation"], env=env)
            healths[f"worker-{arm}"] = f"http://127.0.0.1:{http_port}/health"
            flags += ["--worker", f"{arm}=127.0.0.1:{grpc_port}"]
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        self.servers.launch("gateway", [sys.executable, "-m", "pipelines.loop_servers", "gateway", "--model", MODEL,
                                        "--port", str(port), "--clock", str(self.clock.path),
                                        "--spool-dir", str(self.root / "spool" / "gateway"), *flags], env=env)
        healths["gateway"] = f"{url}/health"
        for name, health_url in healths.items():
            self.servers.wait(name, health_url)
        self.wait("the gateway to follow the experiment",
                  lambda: (health(f"{url}/health").get("experiment") or {}).get("state") == "running")
        self.timeline.add("experiment", "experiment started", "control=production vs challenger="
                          f"{_short(candidate.id)}, fixed 50/50 by visitor; caravan gateway + 2 caravan workers",
                          salt=exp.salt)
        self.traffic.run("experiment", url, self.at(DAY2, 1, 30), self.at(DAY2, 11, 50), self.size.experiment_visits,
                         gateway=True, slices=24)
        sent = sum(b.rows for b in self.traffic.batches if b.phase == "experiment")
        self.wait("the gateway's counters to reach the experiment store",
                  lambda: sum(a.requests for a in commands.status(store, MODEL)) >= sent)
        arms = {a.name: a for a in commands.status(store, MODEL)}
        described = ", ".join(f"{a.name} {a.rewards}/{a.requests} = {a.rate:.1%} (P(best) {a.prob_best:.2f})"
                              for a in arms.values())
        self.timeline.add("traffic", "users on the gateway", f"{self.size.experiment_visits} visits; {described}")
        winner = max(arms.values(), key=lambda a: a.prob_best).name
        self.clock.set(self.at(DAY2, 12))
        try:
            _, outcome = commands.stop(self.pointer(), store, MODEL, winner, tolerance=TOLERANCE,
                                       operator="demo-loop")
        except CaravanError as exc:  # the gate turned the winner down: production stays
            _, outcome = commands.stop(self.pointer(), store, MODEL, "control", operator="demo-loop")
            outcome = f"{exc}; control kept"
        self.timeline.add("concluded", "experiment concluded", f"winner {winner} (higher P(best)): "
                          + _shorten(outcome), winner=winner, production=self.production())
        self.servers.stop("gateway", "worker-challenger", "worker-control")
        production = self.production()
        self.wait("caravan serve to load the new production",
                  lambda: health(f"{self.serve_url}/health").get("model") == production)

    def drift(self, settings: Any) -> None:
        self.world.drift()
        start = self.at(DAY2, 12)
        self.clock.set(start)
        self.timeline.add("drift", "the world drifts", "prices x2.5 (item_price shifts), users twice as "
                          "price-sensitive (the hidden click model moves)")
        rows, clicks = self.traffic.run("drift", self.serve_url, start, self.at(DAY2, 23, 20), self.size.drift_visits)
        self.timeline.add("traffic", "users on caravan serve", f"{self.size.drift_visits} visits, {rows} rows "
                          f"scored, {clicks} clicks ({clicks / max(rows, 1):.1%} per row)")
        self.clock.set(self.at(DAY2, 23, 55))
        self.wait("caravan serve's event log to ship", lambda: self.shipped(self.serve_url))
        self.monitor(start, self.at(DAY2, 23, 55), settings)


def _settings(size: Size) -> Any:
    from caravan.monitoring.triggers import TriggerSettings

    # Degradation needs enough labelled rows to mean something; the demo's days are small.
    return TriggerSettings(min_events=max(200, size.drift_visits * size.candidates // 2))


#: Timeline entries the figure marks, numbered in the list beside it.
MARKED = ("closed", "trigger:new_data", "retrain", "gate", "experiment", "concluded", "drift", "trigger:drift",
          "trigger:degradation", "trigger:degradation+drift")


def figure(loop: Loop, path: Path) -> None:
    """Clicks per scored row by phase and arm over simulated time, the timeline's key events numbered, and the
    last monitor run's PSI per feature."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.dates import date2num

    fig = plt.figure(figsize=(12, 8.5))
    grid = fig.add_gridspec(2, 2, height_ratios=[3, 2], width_ratios=[3, 2])
    top, events, bottom = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    buckets: dict[tuple[str, float], list[int]] = {}
    for batch in loop.traffic.batches:  # two simulated hours per point
        label = f"{batch.phase} ({batch.arm})" if batch.arm else batch.phase
        totals = buckets.setdefault((label, batch.at // 7200 * 7200 + 3600), [0, 0])
        totals[0] += batch.rows
        totals[1] += batch.clicks
    for label in dict.fromkeys(name for name, _ in buckets):
        points = sorted((at, c / max(n, 1)) for (name, at), (n, c) in buckets.items() if name == label)
        top.plot([date2num(dt.datetime.fromtimestamp(at, dt.timezone.utc)) for at, _ in points],
                 [r for _, r in points], marker="o", label=label)
    lines: list[str] = []
    groups: list[tuple[dt.datetime, int, int]] = []  # first moment, first and last number: close events, one mark
    for entry in (e for e in loop.timeline.entries if e.kind in MARKED):
        number = len(lines) + 1
        moment = dt.datetime.fromisoformat(entry.at.replace("Z", "+00:00"))
        outcome = entry.data.get("outcome")
        lines.append(f"{number:>2}  {moment:%m-%d %H:%M}  {entry.event}" + (f" ({outcome})" if outcome else ""))
        if groups and (moment - groups[-1][0]).total_seconds() < 2 * 3600:
            groups[-1] = (groups[-1][0], groups[-1][1], number)
        else:
            groups.append((moment, number, number))
    for moment, low, high in groups:
        x = date2num(moment)
        top.axvline(x, color="grey", lw=0.6, ls=":")
        top.annotate(str(low) if low == high else f"{low}-{high}", (x, 1.01), xycoords=("data", "axes fraction"),
                     fontsize=8, ha="center", va="bottom")
    top.xaxis_date()
    top.set_ylabel("clicks per scored row")
    top.set_title("The loop on a SIMULATED world: serve, log, monitor, retrain, gate, A/B test, drift", pad=16)
    top.legend(fontsize=8, loc="lower left")
    events.axis("off")
    events.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8.5, transform=events.transAxes)
    final = loop.monitor_reports[-1].production() if loop.monitor_reports else None
    psi = sorted((final.psi if final else {}).items(), key=lambda kv: -kv[1])[:8]
    if psi:
        bottom.barh([k for k, _ in psi][::-1], [v for _, v in psi][::-1], color="tab:orange")
        bottom.axvline(0.2, color="red", ls="--", lw=1, label="drift threshold 0.2")
        bottom.legend(fontsize=8, loc="lower right")
    bottom.set_title("PSI vs the training data (last monitor run)", fontsize=9)
    bottom.tick_params(labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


_STOPPING = threading.Event()


def _interrupt(signum: int, frame: Any) -> None:
    """Ctrl-C or SIGTERM: the finally blocks stop every server, and the demo exits 130.

    Once only: later signals are ignored by the operating system (SIG_IGN, which unlike a Python handler
    outlives the interpreter's shutdown), so a second Ctrl-C, or a late one, can neither cut that cleanup
    short nor end the demo by the signal instead of its exit code. And a KeyboardInterrupt that Python
    swallows (raised inside an at-fork hook while luigi forks a task process: "Exception ignored in ...
    _releaseLock") is raised again at the next phase.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _STOPPING.is_set():
        return
    _STOPPING.set()
    raise KeyboardInterrupt


def _phase_boundary() -> None:
    """Stop here if an interrupt arrived where Python could not raise it."""
    if _STOPPING.is_set():
        raise KeyboardInterrupt


def _monitoring_missing() -> str | None:
    """What of the monitor is not there yet (this demo needs compute, publish and triggers), or None."""
    import importlib.util

    missing = [name for name in ("compute", "publish", "triggers")
               if importlib.util.find_spec(f"caravan.monitoring.{name}") is None]
    return ", ".join(f"caravan.monitoring.{m}" for m in missing) or None


@contextlib.contextmanager
def _quiet_logs() -> Iterator[None]:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for name in ("luigi", "luigi-interface", "caravan"):
        logging.getLogger(name).setLevel(logging.ERROR)
    yield


def run(loop: Loop, settings: Any) -> None:
    """The phases, in order (see the module docstring)."""
    loop.launch_serve()  # it waits for the first model while that model trains
    for phase in (loop.bootstrap, loop.serving, loop.day_one):
        phase()
        _phase_boundary()
    loop.monitor(loop.at(DAY1, 0), loop.at(DAY2, 1, 5), settings)
    _phase_boundary()
    day = next((d for _, d in loop.dispatched if d is not None), None)
    candidate = loop.retrain(day) if day is not None else None
    _phase_boundary()
    if candidate is not None:
        loop.experiment(candidate)
        _phase_boundary()
    loop.drift(settings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo_loop", description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, help="simulated users (default 400; --quick 150); the first model's "
                        "simulated log grows with them (20 rows per user)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the world: users, visits, clicks (default 7)")
    parser.add_argument("--root", help="a new or empty folder for the store, pointers, logs and the figure "
                        "(default ./.caravan/loop/<UTC time>)")
    parser.add_argument("--quick", action="store_true", help="the reduced size the test suite runs")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    if args.users is not None:
        if args.users < 1:
            parser.error("--users must be at least 1")
        # The world's users are the simulated log's (rows / 20): the first model has seen them all.
        size = Size(**{**asdict(size), "users": args.users,
                       "bootstrap_rows": max(size.bootstrap_rows, 20 * args.users)})
    root = Path(args.root or Path.cwd() / ".caravan" / "loop" / dt.datetime.now(dt.timezone.utc)
                .strftime("%Y%m%dT%H%M%SZ")).absolute()
    if root.exists() and any(root.iterdir()):
        print(f"demo loop: --root {root} is not empty; the loop starts from nothing: give a new folder",
              file=sys.stderr)
        return 2
    root.mkdir(parents=True, exist_ok=True)
    _setup(root)
    missing = _monitoring_missing()
    if missing:
        print(f"demo loop: the monitor is not there yet ({missing} missing); nothing to demonstrate",
              file=sys.stderr)
        return 3
    from caravan.errors import CaravanError

    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    started = time.monotonic()
    servers = Servers(root / "logs", record=root / "servers.json")
    loop: Loop | None = None
    code = 1
    try:
        with _quiet_logs(), servers:
            loop = Loop(root, size, args.seed, servers)
            print(f"the loop, on a SIMULATED world ({len(loop.world.user_id)} users, seed {args.seed}); root {root}\n")
            print(f"{'sim time':<11}  {'wall':>7}  {'event':<22} why", flush=True)
            try:
                run(loop, _settings(size))
            finally:
                loop.traffic.close()  # no user request in flight while the servers stop
            code = 0
    except KeyboardInterrupt:
        print("\ndemo loop: interrupted; every server is stopped", file=sys.stderr)
        code = 130
    except (CaravanError, RuntimeError, OSError) as exc:  # one line; the servers' own logs are under <root>/logs
        print(f"\ndemo loop: {type(exc).__name__}: {exc} (server logs: {root / 'logs'}); every server is stopped",
              file=sys.stderr)
        code = 1
    finally:
        if loop is not None:
            (root / "timeline.json").write_text(json.dumps([asdict(e) for e in loop.timeline.entries], indent=1))
    if loop is not None and code == 0:
        png = root / "loop.png"
        figure(loop, png)
        print(f"\nfigure: {png}\ntimeline: {root / 'timeline.json'}\nroot: {root} "
              f"(CARAVAN_ARTIFACT_ROOT={root / 'artifacts'} CARAVAN_POINTER_ROOT={root / 'pointers'} "
              f"caravan models history {MODEL})\nthe loop took {time.monotonic() - started:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main())
