"""The event log writer: predictions and feedback appended as complete Parquet files on the store.

Format on the store (the contract readers such as the join and the monitor rely on)::

    {root}/_events/{model}/predictions/date=YYYY-MM-DD/hour=HH/{writer}-{seq:010d}.parquet
    {root}/_events/{model}/feedback/date=YYYY-MM-DD/hour=HH/{writer}-{seq:010d}.parquet
    {root}/_events/{model}/_days/date=YYYY-MM-DD/{writer}.open     JSON, before the writer's first file of the day
    {root}/_events/{model}/_days/date=YYYY-MM-DD/{writer}.closed   JSON, after its last file of the day

- ``writer`` is unique per EventLog (``{host}-{pid}-{8 hex}``), ``seq`` counts its files; every file is written
  once with the store's create-if-absent write, so a file is complete or absent, never replaced. Date and hour
  are UTC, of each row's own ``ts``. Files of one writer never share a name; readers take every ``*.parquet``.
- **predictions**, one row per scored row: ``request_id`` string, ``row`` int32 (index of the row in its
  request; 0 for a one-row request), ``ts`` timestamp[us, UTC] (when it was answered), ``unit_id`` string or
  null (the user), ``arm`` string or null (null: no experiment, ``caravan serve``), ``artifact_id`` string (the
  model that scored), ``score`` float64, then one float64 column per model feature named
  ``f_<feature>`` (:data:`FEATURE_PREFIX`), holding the value **as scored** (NaN where it was missing). A
  monitor gets a feature's PSI from one column (``pyarrow.compute`` or numpy over a contiguous float64
  array), with no JSON or map to decode. Files written while different models served may have different
  ``f_`` columns; read them with schema unification (:func:`read_events` does), absent columns are null.
- **feedback**, one row per event: ``request_id`` string, ``row`` int32 or null (null: the whole request),
  ``ts`` timestamp[us, UTC], ``reward`` float64 (positive = the user did what the model hoped).
- **Day closing.** A writer creates ``{writer}.open`` for a day before its first file there, and
  ``{writer}.closed`` once its clock has passed the day's end plus ``close_delay_s`` (default one hour, so
  feedback on the day's last predictions is in too) and nothing it stamped before that moment is unshipped;
  or on a clean shutdown. A day is closed (:func:`closed_days`) when it has at least one ``.open`` marker and
  every ``.open`` has its ``.closed``. A writer killed without a shutdown leaves its days open (its spooled
  batches are shipped by the next writer started on the same spool directory, under their original names).

Requests never wait on the store: :meth:`EventLog.prediction` and :meth:`EventLog.feedback` append to a
buffer under a lock. A *flusher* thread turns the buffer into Parquet files in the local spool directory
every ``flush_rows`` rows or ``flush_s`` seconds (temp file + rename: complete or absent); a *shipper* thread
sends spooled files to the store, oldest first, and deletes each once the store has it. While the store is
down the spool grows up to ``spool_max_bytes``; a batch beyond that is dropped and its rows counted
(``dropped_rows``). :meth:`EventLog.close` (SIGTERM, through the server's shutdown) flushes the buffer, ships
what the store takes within ``drain_s`` and closes the writer's days; what it could not ship stays spooled.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..storage import Store

log = logging.getLogger("caravan.events")

FEATURE_PREFIX = "f_"
PREDICTIONS, FEEDBACK = "predictions", "feedback"
KINDS = (PREDICTIONS, FEEDBACK)
EVENTS_DIR = "_events"


def events_prefix(model: str, kind: str | None = None) -> str:
    """The store prefix of ``model``'s events (of one ``kind`` when given), ending with ``/``."""
    return f"{EVENTS_DIR}/{model}/" + (f"{kind}/" if kind else "")


def _writer_id() -> str:
    host = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _utc(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc)


def _day_end(day: dt.date) -> float:
    return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.timezone.utc).timestamp()


@dataclass
class _Prediction:
    ts: float
    request_id: str
    unit_id: str | None
    arm: str | None
    artifact_id: str
    names: tuple[str, ...]
    features: Any  # n x k floats (numpy) or n mappings name -> value
    scores: Sequence[float]


@dataclass
class _Stats:
    logged_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    shipped_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    dropped_rows: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    shipped_files: int = 0
    store_errors: int = 0
    last_store_error: str | None = None
    store_ok: bool = True


class EventLog:
    """Appends ``model``'s predictions and feedback to ``store`` (see the module docstring for the format)."""

    def __init__(self, store: Store, model: str, spool_dir: str | Path, *, flush_rows: int = 10_000,
                 flush_s: float = 10.0, spool_max_bytes: int = 1 << 30, close_delay_s: float = 3600.0,
                 drain_s: float = 20.0, retry_s: float = 1.0, writer_id: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store, self.model = store, model
        self.spool = Path(spool_dir)
        self.spool.mkdir(parents=True, exist_ok=True)
        self.flush_rows, self.flush_s, self.spool_max_bytes = flush_rows, flush_s, spool_max_bytes
        self.close_delay_s, self.drain_s, self.retry_s = close_delay_s, drain_s, retry_s
        self.writer = writer_id or _writer_id()
        self.clock = clock
        self.stats = _Stats()
        self._lock = threading.Lock()
        self._predictions: list[_Prediction] = []
        self._feedback: list[tuple[float, str, int | None, float]] = []
        self._buffered_rows = 0
        self._oldest_unspooled: float | None = None  # ts of the oldest row not yet in a spool file
        self._seq = 0
        self._spool_bytes = sum(p.stat().st_size for p in self.spool.glob("*.parquet"))
        self._opened: set[dt.date] = set()
        self._closed: set[dt.date] = set()
        self._wake_flusher, self._wake_shipper = threading.Event(), threading.Event()
        self._stopping = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="event-log-flush", daemon=True)
        self._shipper = threading.Thread(target=self._ship_loop, name="event-log-ship", daemon=True)
        self._started = False

    @classmethod
    def for_server(cls, model: str, *, port: int, root: str | None = None, spool_dir: str | None = None,
                   **options: Any) -> EventLog:
        """The log of a server of ``model`` on ``port``: on the artifact root (or ``root``), spooling to
        ``spool_dir`` (default: the Nomad allocation's data folder, else a temp folder named for model and port,
        so a restarted server ships what its predecessor left spooled)."""
        import tempfile

        from ..config import artifact_root
        from ..storage import open_store

        if spool_dir is None:
            alloc = os.environ.get("NOMAD_ALLOC_DIR")
            base = Path(alloc) / "data" if alloc else Path(tempfile.gettempdir())
            spool_dir = str(base / f"caravan-events-{model}-{port}")
        return cls(open_store(root or artifact_root()), model, spool_dir, **options)

    # -- what servers call (cheap, never touches the store) -----------------------------------------------------

    def prediction(self, request_id: str, *, unit_id: str | None, arm: str | None, artifact_id: str,
                   names: Sequence[str] | None, features: Any, scores: Sequence[float],
                   ts: float | None = None) -> None:
        """Log one answered request: ``features`` is an n x len(names) float array as scored, or n mappings of
        feature values (``names`` None: every key of the rows, in order of appearance; values that are not
        numbers are logged as NaN)."""
        if names is None:
            names = list(dict.fromkeys(key for row in features for key in row))
        entry = _Prediction(self.clock() if ts is None else ts, request_id, unit_id, arm, artifact_id,
                            tuple(names), features, scores)
        with self._lock:
            self._predictions.append(entry)
            self._note(entry.ts, len(scores), PREDICTIONS)

    def feedback(self, request_id: str, reward: float, *, row: int | None = None, ts: float | None = None) -> None:
        """Log one feedback event for ``request_id`` (``row``: one row of it; None: the whole request)."""
        at = self.clock() if ts is None else ts
        with self._lock:
            self._feedback.append((at, request_id, row, float(reward)))
            self._note(at, 1, FEEDBACK)

    def _note(self, ts: float, rows: int, kind: str) -> None:
        self.stats.logged_rows[kind] += rows
        self._buffered_rows += rows
        if self._oldest_unspooled is None or ts < self._oldest_unspooled:
            self._oldest_unspooled = ts
        if self._buffered_rows >= self.flush_rows:
            self._wake_flusher.set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> EventLog:
        """Start the flusher and shipper threads (spooled files of an earlier run are shipped first)."""
        if not self._started:
            self._started = True
            self._flusher.start()
            self._shipper.start()
        return self

    def close(self) -> None:
        """Flush the buffer, ship what the store takes within ``drain_s``, close this writer's days."""
        self._stopping.set()
        self._wake_flusher.set()
        if self._started:
            self._flusher.join()
        else:
            self._flush()
        self._wake_shipper.set()
        if self._started:
            self._shipper.join(self.drain_s + 5.0)
        else:
            self._ship_all(deadline=time.monotonic() + self.drain_s)
        if not self._spooled():
            self._close_days(everything=True)
        else:
            log.warning("event log: %d files stay spooled in %s (the store did not take them)",
                        len(self._spooled()), self.spool)

    def health(self) -> dict[str, Any]:
        """What ``/health`` and ``/metrics`` show: rows logged, shipped and dropped by kind, the spool, the store."""
        s = self.stats
        with self._lock:
            return {"writer": self.writer, "logged_rows": dict(s.logged_rows), "shipped_rows": dict(s.shipped_rows),
                    "dropped_rows": dict(s.dropped_rows), "buffered_rows": self._buffered_rows,
                    "spool_bytes": self._spool_bytes, "spool_files": len(self._spooled()),
                    "shipped_files": s.shipped_files, "store_ok": s.store_ok, "store_errors": s.store_errors,
                    "last_store_error": s.last_store_error}

    # -- flusher: buffer -> spool files ------------------------------------------------------------------------

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake_flusher.wait(self.flush_s)
            self._wake_flusher.clear()
            self._flush_guarded()
        self._flush_guarded()

    def _flush_guarded(self) -> None:
        try:
            self._flush()
        except Exception:  # a bug here must not stop logging for good; it is logged and the next flush tries again
            log.exception("event log: flushing failed")

    def _flush(self) -> None:
        with self._lock:
            predictions, self._predictions = self._predictions, []
            feedback, self._feedback = self._feedback, []
            self._buffered_rows = 0
            # Until the files exist the rows are in neither place: keep their oldest ts for day closing.
            oldest = self._oldest_unspooled
        for kind, day, hour, table in [*_prediction_tables(predictions), *_feedback_tables(feedback)]:
            self._spool_table(kind, day, hour, table)
        with self._lock:
            if self._oldest_unspooled == oldest:
                self._oldest_unspooled = None if not (self._predictions or self._feedback) else self._min_buffered()
        if predictions or feedback:
            self._wake_shipper.set()

    def _min_buffered(self) -> float:
        return min([p.ts for p in self._predictions] + [f[0] for f in self._feedback])

    def _spool_table(self, kind: str, day: dt.date, hour: int, table: Any) -> None:
        import pyarrow.parquet as pq

        sink = io.BytesIO()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue()
        with self._lock:
            if self._spool_bytes + len(data) > self.spool_max_bytes:
                self.stats.dropped_rows[kind] += table.num_rows
                log.warning("event log: spool full (%d of %d bytes): dropped %d %s rows", self._spool_bytes,
                            self.spool_max_bytes, table.num_rows, kind)
                return
            self._seq += 1
            seq = self._seq
            self._spool_bytes += len(data)
        # Sortable by time of spooling; the name carries where the file goes on the store.
        name = f"{time.time_ns():020d}__{kind}__{day.isoformat()}__{hour:02d}__{self.writer}-{seq:010d}.parquet"
        temp = self.spool / f".{name}.tmp"
        try:
            with open(temp, "wb") as out:
                out.write(data)
            os.replace(temp, self.spool / name)
        except OSError as exc:  # a full or broken local disk: the batch is lost, and counted as dropped
            temp.unlink(missing_ok=True)
            with self._lock:
                self._spool_bytes -= len(data)
                self.stats.dropped_rows[kind] += table.num_rows
            log.error("event log: could not spool %d %s rows to %s: %s", table.num_rows, kind, self.spool, exc)

    # -- shipper: spool files -> store ------------------------------------------------------------------------

    def _spooled(self) -> list[Path]:
        return sorted(self.spool.glob("*.parquet"))

    def _ship_loop(self) -> None:
        while True:
            stopping = self._stopping.is_set() and not self._flusher.is_alive()
            if stopping:
                self._ship_all(deadline=time.monotonic() + self.drain_s)
                return
            try:
                if self._ship_all(deadline=None):
                    self._close_days(everything=False)
            except Exception:  # counted and retried; the shipper must outlive any one failure
                log.exception("event log: shipping failed")
            self._wake_shipper.wait(self.retry_s if self._spooled() else self.flush_s)
            self._wake_shipper.clear()

    def _ship_all(self, deadline: float | None) -> bool:
        """Ship spooled files oldest first; True once the spool is empty.

        Without a deadline, the first store error ends the round (the loop retries after ``retry_s``); with
        one (draining at shutdown), rounds repeat every ``retry_s`` until the deadline.
        """
        while True:
            files = self._spooled()
            if not files:
                return True
            if all(self._ship(path) for path in files):
                continue
            if deadline is None or time.monotonic() + self.retry_s > deadline:
                return False
            time.sleep(self.retry_s)

    def _ship(self, path: Path) -> bool:
        _stamp, kind, day_text, hour, file_name = path.name.split("__", 4)
        day = dt.date.fromisoformat(day_text)
        writer = file_name.rsplit("-", 1)[0]
        key = f"{events_prefix(self.model, kind)}date={day_text}/hour={hour}/{file_name}"
        try:
            data = path.read_bytes()
            if writer == self.writer and day not in self._opened:
                self._marker(day, "open", {"opened_at": self.clock()})
                self._opened.add(day)
            self.store.create(key, data)  # False: an earlier attempt got there; the file is the same
        except Exception as exc:  # any store failure is an outage to ride out
            with self._lock:
                self.stats.store_errors += 1
                self.stats.store_ok = False
                self.stats.last_store_error = f"{type(exc).__name__}: {str(exc)[:300]}"
            return False
        rows = _parquet_rows(data)
        path.unlink()
        with self._lock:
            self._spool_bytes -= len(data)
            self.stats.shipped_rows[kind] = self.stats.shipped_rows.get(kind, 0) + rows
            self.stats.shipped_files += 1
            self.stats.store_ok = True
        return True

    def _marker(self, day: dt.date, state: str, body: dict[str, Any]) -> None:
        key = f"{events_prefix(self.model)}_days/date={day.isoformat()}/{self.writer}.{state}"
        self.store.create(key, json.dumps({"writer": self.writer, **body}).encode())

    def _close_days(self, everything: bool) -> None:
        """Close the days this writer opened that nothing unshipped of it can reach any more."""
        now = self.clock()
        with self._lock:
            oldest = self._oldest_unspooled
        for day in sorted(self._opened - self._closed):
            cutoff = _day_end(day) + self.close_delay_s
            if everything or (now >= cutoff and (oldest is None or oldest >= cutoff)):
                try:
                    self._marker(day, "closed", {"closed_at": now})
                except Exception as exc:  # retried on the next round
                    log.warning("event log: could not close %s: %s", day, exc)
                    return
                self._closed.add(day)


def register_metrics(event_log: EventLog, registry: Any) -> None:
    """Expose the log's counters on a Prometheus ``registry`` (read at scrape time from :meth:`EventLog.health`)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            state = event_log.health()
            for name, what in (("logged", "buffered"), ("shipped", "written to the store"),
                               ("dropped", "dropped because the spool was full")):
                family = CounterMetricFamily(f"caravan_event_log_{name}_rows", f"Event log rows {what}, by kind",
                                             labels=["kind"])
                for kind, count in state[f"{name}_rows"].items():
                    family.add_metric([kind], count)
                yield family
            yield GaugeMetricFamily("caravan_event_log_spool_bytes", "Bytes waiting in the event log's spool",
                                    value=state["spool_bytes"])
            yield CounterMetricFamily("caravan_event_log_store_errors", "Failed event log writes to the store",
                                      value=state["store_errors"])

    registry.register(_Collector())


def _parquet_rows(data: bytes) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return int(pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows)


def _hour_of(ts: float) -> tuple[dt.date, int]:
    moment = _utc(ts)
    return moment.date(), moment.hour


def _prediction_tables(entries: list[_Prediction]) -> Iterator[tuple[str, dt.date, int, Any]]:
    import pyarrow as pa

    groups: dict[tuple[dt.date, int, tuple[str, ...]], list[_Prediction]] = {}
    for entry in entries:
        groups.setdefault((*_hour_of(entry.ts), entry.names), []).append(entry)
    for (day, hour, names), group in groups.items():
        counts = np.array([len(e.scores) for e in group], dtype=np.int64)
        n = int(counts.sum())
        matrix = np.vstack([_as_matrix(e.features, e.names) for e in group]) if n else np.empty((0, len(names)))
        columns: dict[str, Any] = {
            "request_id": pa.array(np.repeat(np.array([e.request_id for e in group], dtype=object), counts),
                                   pa.string()),
            "row": pa.array(np.concatenate([np.arange(c, dtype=np.int32) for c in counts]), pa.int32()),
            "ts": pa.array(np.repeat(np.array([round(e.ts * 1e6) for e in group], dtype=np.int64), counts),
                           pa.timestamp("us", tz="UTC")),
            "unit_id": pa.array(np.repeat(np.array([e.unit_id for e in group], dtype=object), counts), pa.string()),
            "arm": pa.array(np.repeat(np.array([e.arm for e in group], dtype=object), counts), pa.string()),
            "artifact_id": pa.array(np.repeat(np.array([e.artifact_id for e in group], dtype=object), counts),
                                    pa.string()),
            "score": pa.array(np.concatenate([np.asarray(e.scores, dtype=np.float64) for e in group]), pa.float64()),
        }
        for i, name in enumerate(names):
            columns[FEATURE_PREFIX + name] = pa.array(np.ascontiguousarray(matrix[:, i], dtype=np.float64))
        yield PREDICTIONS, day, hour, pa.table(columns)


def _as_matrix(features: Any, names: tuple[str, ...]) -> np.ndarray:
    if isinstance(features, np.ndarray):
        return features.reshape(len(features), len(names)).astype(np.float64, copy=False)
    return np.array([[_number(row.get(name)) for name in names] for row in features], dtype=np.float64)


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def _feedback_tables(entries: list[tuple[float, str, int | None, float]]) -> Iterator[tuple[str, dt.date, int, Any]]:
    import pyarrow as pa

    groups: dict[tuple[dt.date, int], list[tuple[float, str, int | None, float]]] = {}
    for entry in entries:
        groups.setdefault(_hour_of(entry[0]), []).append(entry)
    for (day, hour), group in groups.items():
        yield FEEDBACK, day, hour, pa.table({
            "request_id": pa.array([e[1] for e in group], pa.string()),
            "row": pa.array([e[2] for e in group], pa.int32()),
            "ts": pa.array([round(e[0] * 1e6) for e in group], pa.timestamp("us", tz="UTC")),
            "reward": pa.array([e[3] for e in group], pa.float64()),
        })


# -- readers -----------------------------------------------------------------------------------------------------


def closed_days(store: Store, model: str) -> list[dt.date]:
    """Days of ``model``'s log that every writer that wrote to them has closed, oldest first (one listing)."""
    markers: dict[str, dict[str, set[str]]] = {}
    prefix = f"{events_prefix(model)}_days/"
    for key in store.list_keys(prefix):
        folder, _, name = key[len(prefix):].partition("/")
        writer, _, state = name.rpartition(".")
        if folder.startswith("date=") and state in ("open", "closed"):
            markers.setdefault(folder[5:], {"open": set(), "closed": set()})[state].add(writer)
    return sorted(dt.date.fromisoformat(day) for day, m in markers.items() if m["open"] and m["open"] <= m["closed"])


def event_keys(store: Store, model: str, kind: str, day: dt.date, hours: Sequence[int] | None = None) -> list[str]:
    """The Parquet files of one day (and some of its hours) of ``kind``, sorted."""
    prefix = f"{events_prefix(model, kind)}date={day.isoformat()}/"
    wanted = None if hours is None else {f"hour={h:02d}" for h in hours}
    return sorted(k for k in store.list_keys(prefix) if k.endswith(".parquet")
                  and (wanted is None or k[len(prefix):].partition("/")[0] in wanted))


def read_events(store: Store, model: str, kind: str, days: Sequence[dt.date],
                hours: Sequence[int] | None = None) -> Any:
    """One table of ``kind`` over ``days`` (files with different feature columns unified; absent = null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(pa.BufferReader(store.read(key)))
              for day in days for key in event_keys(store, model, kind, day, hours)]
    if not tables:
        return _empty(kind)
    return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _empty(kind: str) -> Any:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    if kind == PREDICTIONS:
        return pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", ts), ("unit_id", pa.string()),
                          ("arm", pa.string()), ("artifact_id", pa.string()), ("score", pa.float64())]).empty_table()
    return pa.schema([("request_id", pa.string()), ("row", pa.int32()), ("ts", ts),
                      ("reward", pa.float64())]).empty_table()
