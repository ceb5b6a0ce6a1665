"""What the served models saw over a window, read from the event log hour by hour: :func:`compute_report`.

Per model version (artifact id) and arm, over ``[window_start, window_end)``:

- ``requests``: logged prediction rows (one per scored row; a one-row request is one);
- ``labelled``/``rewards``: the rows whose attribution window has ended by ``now``, labelled by
  :func:`caravan.events.join.join_events` (feedback stamped after ``now`` is not seen, so a report for a
  past ``now`` is the same whenever it is computed), and how many of them were rewarded;
- ``auc`` of the scores against those labels (:func:`caravan.ml.metrics.roc_auc`; None with one class only),
  ``calibration`` = mean score / reward rate;
- per feature: ``missing_rate`` (NaN as logged, or the column absent), ``invalid_rate`` (infinite, or not a
  value of the feature's type in the served schema: a fraction for an integer, not 0/1 for a boolean) and
  ``psi`` of the finite values against the served artifact's training dataset (``upstream["dataset"]`` of its
  manifest; the quantile bins ``edges``/``fractions`` its ``stats.json`` holds, see
  :func:`caravan.ml.stats.column_stats`).

Bounded memory: one hour of predictions at a time (the columns it needs, not ``unit_id``), the feedback hours
the attribution window reaches, and per version only counts, bin counts per hour, and the scores and labels
of labelled rows (for the exact AUC: 9 bytes a row).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ArtifactCorruptError, ArtifactNotFoundError, CaravanError
from ..events.join import DEFAULT_ATTRIBUTION_WINDOW_S, LABEL, join_events
from ..events.log import FEATURE_PREFIX, FEEDBACK, PREDICTIONS, closed_days, event_keys, events_prefix
from ..ml.stats import PSI_EPSILON
from ..registry.base import ModelPointer
from ..storage import Store
from .report import MonitorReport, VersionWindow

log = logging.getLogger("caravan.monitoring")

_HOUR = dt.timedelta(hours=1)
_INTEGER_TYPES = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
#: The join hands this column back untouched ("features outside the schema follow"): it maps labels to rows.
_ROW_COLUMN = "__monitor_row"
_BASE_COLUMNS = ("request_id", "row", "ts", "arm", "artifact_id", "score")


class UnknownModel(CaravanError):
    """The model has neither a pointer nor an event log."""


# -- PSI from binned counts ---------------------------------------------------------------------------------------


def psi(expected_bins: Sequence[float] | np.ndarray, actual_counts: Sequence[float] | np.ndarray) -> float:
    """Population stability index of ``actual_counts`` against ``expected_bins`` (same bins, same order).

    Both are normalised to shares; a share below :data:`caravan.ml.stats.PSI_EPSILON` (an empty bin) counts
    as that epsilon, so the logarithm stays finite. PSI = sum of (a - e) * ln(a / e): 0 for identical
    distributions, never negative, and symmetric (swapping the two gives the same value). Values below 1e-12
    are 0. The same value as :func:`caravan.ml.stats.psi` on the raw values with :func:`reference_bins` and
    :func:`bin_counts`.
    """
    expected = np.asarray(expected_bins, dtype=np.float64)
    actual = np.asarray(actual_counts, dtype=np.float64)
    if expected.shape != actual.shape or expected.ndim != 1 or len(expected) == 0:
        raise ValueError(f"PSI needs two non-empty vectors of the same length, got {expected.shape} and "
                         f"{actual.shape}")
    if (expected < 0).any() or (actual < 0).any() or not (np.isfinite(expected).all() and np.isfinite(actual).all()):
        raise ValueError("PSI needs finite non-negative shares and counts")
    e_total, a_total = float(expected.sum()), float(actual.sum())
    if e_total <= 0 or a_total <= 0:
        raise ValueError("PSI needs at least one value on each side")
    e = np.maximum(expected / e_total, PSI_EPSILON)
    a = np.maximum(actual / a_total, PSI_EPSILON)
    value = float(np.sum((a - e) * np.log(a / e)))
    return value if value > 1e-12 else 0.0


def reference_bins(column_stats: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """One numeric column's training bins as (edges, expected shares with an open bin below and above, share 0);
    None when the statistics have no bins (not numeric, or empty)."""
    edges = np.asarray(column_stats.get("edges") or [], dtype=np.float64)
    fractions = np.asarray(column_stats.get("fractions") or [], dtype=np.float64)
    if column_stats.get("kind") != "numeric" or len(edges) < 2 or len(fractions) != len(edges) - 1:
        return None
    return edges, np.concatenate([[0.0], fractions, [0.0]])


def bin_counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts of the finite ``values`` below ``edges[0]``, in each bin [e_i, e_i+1) (the last closed), and above
    ``edges[-1]``: ``len(edges) + 1`` counts, the bins of :func:`caravan.ml.stats.psi`."""
    n_bins = len(edges) - 1
    finite = values[np.isfinite(values)]
    index = np.searchsorted(edges, finite, side="right") - 1  # -1 below, n_bins above
    index[finite == edges[-1]] = n_bins - 1  # the last bin is closed
    counts: np.ndarray = np.bincount(index + 1, minlength=n_bins + 2)
    return counts.astype(np.int64, copy=False)


# -- what is known about one served artifact ----------------------------------------------------------------------


@dataclass
class _Served:
    """One served artifact's feature types (its serving schema) and training bins; notes say what was missing."""

    types: dict[str, str] = field(default_factory=dict)
    bins: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _served(store: Store, artifact_id: str) -> _Served:
    from ..artifacts import Artifact
    from ..registry.gate import holdout_of

    served = _Served()
    artifact = Artifact(store, artifact_id)
    try:
        schema = artifact.read_json("features.json")
        served.types = {str(f["name"]): str(f["type"]) for f in schema["features"]}
    except (ArtifactNotFoundError, ArtifactCorruptError, KeyError, TypeError, ValueError) as exc:
        served.notes.append(f"{artifact_id}: no serving schema ({exc}); features taken from the log")
    try:
        dataset, _ = holdout_of(artifact)
        stats = dataset.read_json("stats.json")
    except (ArtifactNotFoundError, ArtifactCorruptError, ValueError) as exc:
        served.notes.append(f"{artifact_id}: no training statistics ({exc}); PSI not measured")
        return served
    for name, column in (stats or {}).items():
        bins = reference_bins(column) if isinstance(column, Mapping) else None
        if bins is not None:
            served.bins[str(name)] = bins
    return served


# -- accumulators --------------------------------------------------------------------------------------------------


@dataclass
class _Feature:
    """Per hour: rows looked at, missing, invalid, and (with training bins) the bin counts of finite values."""

    seen: np.ndarray
    missing: np.ndarray
    invalid: np.ndarray
    bins: np.ndarray | None


@dataclass
class _Version:
    hours: int
    requests: np.ndarray = field(init=False)
    labelled: np.ndarray = field(init=False)
    rewards: np.ndarray = field(init=False)
    score_sum: np.ndarray = field(init=False)
    scores: list[list[np.ndarray]] = field(init=False)
    labels: list[list[np.ndarray]] = field(init=False)
    features: dict[str, _Feature] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.requests = np.zeros(self.hours, np.int64)
        self.labelled = np.zeros(self.hours, np.int64)
        self.rewards = np.zeros(self.hours, np.int64)
        self.score_sum = np.zeros(self.hours, np.float64)
        self.scores = [[] for _ in range(self.hours)]
        self.labels = [[] for _ in range(self.hours)]

    def feature(self, name: str, bins: tuple[np.ndarray, np.ndarray] | None) -> _Feature:
        if name not in self.features:
            width = len(bins[1]) if bins is not None else 0
            self.features[name] = _Feature(np.zeros(self.hours, np.int64), np.zeros(self.hours, np.int64),
                                           np.zeros(self.hours, np.int64),
                                           np.zeros((self.hours, width), np.int64) if bins is not None else None)
        return self.features[name]


def _invalid(values: np.ndarray, kind: str | None) -> np.ndarray:
    """Values that are present (not NaN) but not a value of the feature: infinite, or not of its type."""
    bad: np.ndarray = np.isinf(values)
    if kind == "bool":
        bad |= ~np.isnan(values) & (values != 0) & (values != 1)
    elif kind in _INTEGER_TYPES:
        finite = np.isfinite(values)
        bad |= finite & (np.floor(np.where(finite, values, 0)) != np.where(finite, values, 0))
        if kind.startswith("uint"):
            bad |= finite & (values < 0)
    return bad


# -- reading the log hour by hour ---------------------------------------------------------------------------------


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _hour_floor(moment: dt.datetime) -> dt.datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def _micros(moment: dt.datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


class _Hours:
    """The Parquet files of one kind by hour, one listing per day."""

    def __init__(self, store: Store, model: str, kind: str) -> None:
        self.store, self.model, self.kind = store, model, kind
        self._days: dict[dt.date, dict[int, list[str]]] = {}

    def keys(self, hour: dt.datetime) -> list[str]:
        day = hour.date()
        if day not in self._days:
            by_hour: dict[int, list[str]] = {}
            prefix = f"{events_prefix(self.model, self.kind)}date={day.isoformat()}/hour="
            for key in event_keys(self.store, self.model, self.kind, day):
                text = key[len(prefix):].partition("/")[0]
                if key.startswith(prefix) and text.isdigit():
                    by_hour.setdefault(int(text), []).append(key)
            self._days[day] = by_hour
        return self._days[day].get(hour.hour, [])

    def read(self, hour: dt.datetime, wanted: Sequence[str] | None = None, prefix: str | None = None) -> Any:
        """The hour's rows as one table: ``wanted`` columns plus every column starting with ``prefix``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = []
        for key in self.keys(hour):
            source = pq.ParquetFile(pa.BufferReader(self.store.read(key)), pre_buffer=False)
            columns = [c for c in source.schema_arrow.names
                       if (wanted is None or c in wanted) or (prefix and c.startswith(prefix))]
            tables.append(source.read(columns=columns))
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="default") if len(tables) > 1 else tables[0]


def _between(table: Any, start_us: int, end_us: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = table.column("ts").cast(pa.int64())
    return table.filter(pc.and_(pc.greater_equal(ts, start_us), pc.less(ts, end_us)))


# -- the report -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HourTrend:
    """One version x arm in one hour of the window: what the trend plot shows."""

    hour: str  # ISO-8601 UTC start of the hour
    artifact_id: str
    arm: str
    requests: int
    labelled: int
    rewards: int
    reward_rate: float | None
    auc: float | None
    top_psi: float | None
    top_psi_feature: str | None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Monitoring:
    """A monitoring run's result: the report, its trends per hour, and notes on what could not be measured."""

    report: MonitorReport
    hourly: tuple[HourTrend, ...]
    notes: tuple[str, ...]
    attribution_window_s: float


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from ..ml.metrics import roc_auc

    finite = np.isfinite(scores)
    labels, scores = labels[finite], scores[finite]
    if len(labels) == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc(labels, scores))


def _psi_of(counts: np.ndarray | None, expected: np.ndarray) -> float | None:
    if counts is None or counts.sum() == 0:
        return None
    return psi(expected, counts)


def compute(model: str, *, store: Store, pointer: ModelPointer, window_start: dt.datetime,
            window_end: dt.datetime, now: dt.datetime | None = None,
            attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> Monitoring:
    """The report of ``model`` over ``[window_start, window_end)`` as of ``now`` (default ``window_end``), with
    its hourly trends and notes. Raises :class:`UnknownModel` when the model has no pointer and no event log."""
    start, end = _utc(window_start), _utc(window_end)
    as_of = _utc(now) if now is not None else end
    if end <= start:
        raise ValueError(f"monitoring window is empty: it ends ({end.isoformat()}) before it starts "
                         f"({start.isoformat()})")
    document = pointer.read(model).document
    if document is None and not any(True for _ in store.list_keys(events_prefix(model))):
        raise UnknownModel(f"unknown model {model!r}: no pointer in {pointer.name or 'the pointer backend'} and no "
                           f"event log under {store.uri(events_prefix(model))}")
    production = None if document is None else str(document.get("artifact_id"))
    gate_auc = None
    if document is not None:
        value = (document.get("metrics") or {}).get("gate_auc")
        gate_auc = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None

    first = _hour_floor(start)
    hours = [first + i * _HOUR for i in range(math.ceil((end - first) / _HOUR))]
    versions: dict[tuple[str, str], _Version] = {}
    served: dict[str, _Served] = {}
    predictions, feedback = _Hours(store, model, PREDICTIONS), _Hours(store, model, FEEDBACK)
    feedback_cache: dict[dt.datetime, Any] = {}
    reach = math.ceil(attribution_window_s / 3600)
    start_us, end_us, now_us = _micros(start), _micros(end), _micros(as_of)
    window_us = round(attribution_window_s * 1_000_000)

    for index, hour in enumerate(hours):
        table = predictions.read(hour, _BASE_COLUMNS, FEATURE_PREFIX)
        if table is None:
            continue
        table = _between(table, start_us, end_us)
        if table.num_rows == 0:
            continue
        needed = [hour + k * _HOUR for k in range(reach + 1)]
        for old in [h for h in feedback_cache if h not in needed]:
            del feedback_cache[old]  # the window only moves forward: an hour left behind is never needed again
        labels = _labels(table, [_feedback(feedback, feedback_cache, h, now_us) for h in needed],
                         attribution_window_s)
        labelled = _micros_of(table) + window_us <= now_us
        _accumulate(table, labels, labelled, index, len(hours), versions, served, store)

    rows, trends = [], []
    for (artifact_id, arm), acc in sorted(versions.items()):
        rows.append(_version_window(artifact_id, arm, acc, served[artifact_id]))
        trends += _trends(artifact_id, arm, acc, served[artifact_id], hours)
    if production is not None and not any(r.artifact_id == production for r in rows):
        rows.append(VersionWindow(production, "", 0, 0, 0, None, None, None, {}, {}, {}))  # it served nothing here
    notes = [note for s in served.values() for note in s.notes]
    if not versions:
        notes.append(f"no predictions of {model!r} logged between {start.isoformat()} and {end.isoformat()}")
    report = MonitorReport(model=model, window_start=start.isoformat(), window_end=end.isoformat(),
                           production_artifact_id=production, production_gate_auc=gate_auc, versions=tuple(rows),
                           closed_days=tuple(d.isoformat() for d in closed_days(store, model)))
    return Monitoring(report, tuple(sorted(trends, key=lambda t: (t.hour, t.artifact_id, t.arm))), tuple(notes),
                      attribution_window_s)


def compute_report(model: str, *, store: Store, pointer: ModelPointer, window_start: dt.datetime,
                   window_end: dt.datetime, now: dt.datetime | None = None,
                   attribution_window_s: float = DEFAULT_ATTRIBUTION_WINDOW_S) -> MonitorReport:
    """The :class:`MonitorReport` of ``model`` over ``[window_start, window_end)`` as of ``now`` (:func:`compute`)."""
    return compute(model, store=store, pointer=pointer, window_start=window_start, window_end=window_end, now=now,
                   attribution_window_s=attribution_window_s).report


def _micros_of(table: Any) -> np.ndarray:
    import pyarrow as pa

    return np.asarray(table.column("ts").cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


def _feedback(hours: _Hours, cache: dict[dt.datetime, Any], hour: dt.datetime, now_us: int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    if hour not in cache:
        table = hours.read(hour, ("request_id", "row", "ts", "reward"))
        if table is not None:
            table = table.filter(pc.less_equal(table.column("ts").cast(pa.int64()), now_us))
        cache[hour] = table
    return cache[hour]


def _labels(table: Any, feedback: list[Any], attribution_window_s: float) -> np.ndarray:
    """0/1 per row of ``table`` (its order) from the join; -1 for a row the join dropped as a duplicate."""
    import pyarrow as pa

    present = [t for t in feedback if t is not None and t.num_rows]
    events = pa.concat_tables(present, promote_options="default") if present else pa.table({
        "request_id": pa.array([], pa.string()), "row": pa.array([], pa.int32()),
        "ts": pa.array([], pa.timestamp("us", tz="UTC")), "reward": pa.array([], pa.float64())})
    rows = pa.table({"request_id": table.column("request_id"), "row": table.column("row"), "ts": table.column("ts"),
                     FEATURE_PREFIX + _ROW_COLUMN: pa.array(np.arange(table.num_rows, dtype=np.float64))})
    joined, _ = join_events(rows, events, attribution_window_s, schema=pa.schema([(LABEL, pa.int8())]))
    out = np.full(table.num_rows, -1, dtype=np.int8)
    where = np.asarray(joined.column(_ROW_COLUMN).to_numpy(zero_copy_only=False)).astype(np.int64)
    out[where] = np.asarray(joined.column(LABEL).to_numpy(zero_copy_only=False), dtype=np.int8)
    return out


def _groups(table: Any) -> Iterator[tuple[str, str, np.ndarray]]:
    """(artifact id, arm, row indices) of each version x arm in ``table`` (a null arm is "")."""
    artifacts = table.column("artifact_id").fill_null("").combine_chunks().dictionary_encode()
    arms = table.column("arm").fill_null("").combine_chunks().dictionary_encode()
    a_idx = np.asarray(artifacts.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    r_idx = np.asarray(arms.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    key = a_idx * len(arms.dictionary) + r_idx
    for value in np.unique(key):
        a, r = divmod(int(value), len(arms.dictionary))
        yield (str(artifacts.dictionary[a].as_py()), str(arms.dictionary[r].as_py()),
               np.flatnonzero(key == value))


def _accumulate(table: Any, labels: np.ndarray, labelled: np.ndarray, hour: int, n_hours: int,
                versions: dict[tuple[str, str], _Version], served: dict[str, _Served], store: Store) -> None:
    scores = np.asarray(table.column("score").to_numpy(zero_copy_only=False), dtype=np.float64)
    logged = [c for c in table.column_names if c.startswith(FEATURE_PREFIX)]
    columns = {c[len(FEATURE_PREFIX):]: table.column(c) for c in logged}
    values = {name: np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64) for name, col in columns.items()}
    present = {name: (np.asarray(col.is_valid().to_numpy(zero_copy_only=False), dtype=bool) if col.null_count
                      else None) for name, col in columns.items()}
    for artifact_id, arm, rows in _groups(table):
        if artifact_id not in served:
            served[artifact_id] = _served(store, artifact_id)
        info = served[artifact_id]
        acc = versions.setdefault((artifact_id, arm), _Version(n_hours))
        acc.requests[hour] += len(rows)
        done = rows[labelled[rows] & (labels[rows] >= 0)]
        if len(done):
            y = labels[done].astype(np.float64)
            acc.labelled[hour] += len(done)
            acc.rewards[hour] += int(y.sum())
            acc.score_sum[hour] += float(np.nansum(scores[done]))
            acc.scores[hour].append(scores[done])
            acc.labels[hour].append(y)
        for name in sorted(set(info.types) | set(values)):
            kind = info.types.get(name)
            if name in values:
                v = values[name][rows]
                mask = present[name]
                here = np.ones(len(rows), bool) if mask is None else mask[rows]
            else:  # a schema feature that no logged file of this hour has: missing in every row
                v, here = np.full(len(rows), np.nan), np.zeros(len(rows), bool)
            if kind is None:  # logged but not in the schema: measured where the column exists
                if not here.any():
                    continue
                v, here = v[here], np.ones(int(here.sum()), bool)
            feature = acc.feature(name, info.bins.get(name))
            feature.seen[hour] += len(v)
            feature.missing[hour] += int((~here | np.isnan(v)).sum())
            feature.invalid[hour] += int(_invalid(v[here], kind).sum())
            if feature.bins is not None:
                feature.bins[hour] += bin_counts(info.bins[name][0], v[here])


def _version_window(artifact_id: str, arm: str, acc: _Version, info: _Served) -> VersionWindow:
    labelled, rewards = int(acc.labelled.sum()), int(acc.rewards.sum())
    reward_rate = rewards / labelled if labelled else None
    scores = [s for hour in acc.scores for s in hour]
    labels = [y for hour in acc.labels for y in hour]
    auc = _auc(np.concatenate(labels), np.concatenate(scores)) if labels else None
    calibration = float(acc.score_sum.sum()) / rewards if rewards else None  # (sum / labelled) / (rewards / labelled)
    missing, invalid, drift = {}, {}, {}
    for name, feature in sorted(acc.features.items()):
        seen = int(feature.seen.sum())
        if seen:
            missing[name] = int(feature.missing.sum()) / seen
            invalid[name] = int(feature.invalid.sum()) / seen
        value = _psi_of(None if feature.bins is None else feature.bins.sum(axis=0), info.bins[name][1]) \
            if feature.bins is not None else None
        if value is not None:
            drift[name] = value
    return VersionWindow(artifact_id, arm, int(acc.requests.sum()), labelled, rewards, reward_rate, auc, calibration,
                         missing, invalid, drift)


def _trends(artifact_id: str, arm: str, acc: _Version, info: _Served, hours: list[dt.datetime]) -> list[HourTrend]:
    out = []
    for i, hour in enumerate(hours):
        if not acc.requests[i]:
            continue
        labelled, rewards = int(acc.labelled[i]), int(acc.rewards[i])
        auc = _auc(np.concatenate(acc.labels[i]), np.concatenate(acc.scores[i])) if acc.labels[i] else None
        drift = {name: _psi_of(f.bins[i], info.bins[name][1]) for name, f in acc.features.items()
                 if f.bins is not None}
        known = {k: v for k, v in drift.items() if v is not None}
        top = max(known, key=lambda k: (known[k], k)) if known else None
        out.append(HourTrend(hour.isoformat(), artifact_id, arm, int(acc.requests[i]), labelled, rewards,
                             rewards / labelled if labelled else None, auc,
                             known[top] if top is not None else None, top))
    return out


__all__ = ["HourTrend", "Monitoring", "UnknownModel", "bin_counts", "compute", "compute_report", "psi",
           "reference_bins"]
