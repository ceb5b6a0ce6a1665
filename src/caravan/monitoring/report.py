"""What one monitoring run saw: per model version and arm over a window (pure data, no I/O).

:func:`caravan.monitoring.compute.compute_report` fills it from the event log; the triggers read it; the
monitoring artifact stores :meth:`MonitorReport.to_json`. Rates and AUCs are ``None`` where they are undefined
(no labelled rows, one class only), never NaN, so the JSON stays plain.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _floats(value: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in dict(value or {}).items()}


@dataclass(frozen=True)
class VersionWindow:
    """One model version (artifact id) x arm over the window."""

    artifact_id: str
    arm: str  # "" when served by `caravan serve` (no experiment)
    requests: int
    labelled: int  # requests whose attribution window has ended (the join's rows)
    rewards: int
    reward_rate: float | None
    auc: float | None  # online AUC of scores against rewards; None if one class only
    calibration: float | None  # mean score / reward rate (1.0 = calibrated); None if no labels or no reward
    missing_rate: dict[str, float]  # per feature
    invalid_rate: dict[str, float]  # per feature (non-finite / wrong type / out of the schema)
    psi: dict[str, float]  # per feature, served vs training dataset statistics

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (feature maps sorted by name)."""
        return {
            "artifact_id": self.artifact_id,
            "arm": self.arm,
            "requests": self.requests,
            "labelled": self.labelled,
            "rewards": self.rewards,
            "reward_rate": self.reward_rate,
            "auc": self.auc,
            "calibration": self.calibration,
            "missing_rate": dict(sorted(self.missing_rate.items())),
            "invalid_rate": dict(sorted(self.invalid_rate.items())),
            "psi": dict(sorted(self.psi.items())),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VersionWindow:
        """The inverse of :meth:`to_json`."""
        return cls(
            artifact_id=str(d["artifact_id"]),
            arm=str(d.get("arm") or ""),
            requests=int(d["requests"]),
            labelled=int(d["labelled"]),
            rewards=int(d["rewards"]),
            reward_rate=_opt_float(d.get("reward_rate")),
            auc=_opt_float(d.get("auc")),
            calibration=_opt_float(d.get("calibration")),
            missing_rate=_floats(d.get("missing_rate")),
            invalid_rate=_floats(d.get("invalid_rate")),
            psi=_floats(d.get("psi")),
        )


def _weighted(pairs: list[tuple[float | None, float]]) -> float | None:
    """The mean of the defined values weighted by their weights; None when no weight is left."""
    kept = [(v, w) for v, w in pairs if v is not None and w > 0]
    total = sum(w for _, w in kept)
    if total <= 0:
        return None
    return sum(v * w for v, w in kept) / total


def _weighted_maps(pairs: list[tuple[dict[str, float], float]]) -> dict[str, float]:
    names = sorted({name for m, _ in pairs for name in m})
    out: dict[str, float] = {}
    for name in names:
        value = _weighted([(m.get(name), w) for m, w in pairs])
        if value is not None:
            out[name] = value
    return out


def merge_arms(rows: list[VersionWindow]) -> VersionWindow:
    """One artifact's rows over several arms as one row.

    Counts add up and the reward rate is recomputed exactly; calibration is exact too (the rows' score sums are
    ``calibration * rewards``). AUC is the labelled-weighted mean of the arms' AUCs and PSI and the feature rates
    the request-weighted means: an approximation (the arms' score and feature histograms are not kept), exact
    for the usual case of one arm.
    """
    if not rows:
        raise ValueError("merge_arms needs at least one row")
    ids = {r.artifact_id for r in rows}
    if len(ids) != 1:
        raise ValueError(f"merge_arms got rows of several artifacts: {sorted(ids)}")
    if len(rows) == 1:
        return rows[0]
    labelled = sum(r.labelled for r in rows)
    rewards = sum(r.rewards for r in rows)
    calibration = None
    if rewards > 0 and all(r.calibration is not None or r.rewards == 0 for r in rows):
        score_sum = sum((r.calibration or 0.0) * r.rewards for r in rows)
        calibration = score_sum / rewards
    return VersionWindow(
        artifact_id=rows[0].artifact_id,
        arm=",".join(sorted({r.arm for r in rows})),
        requests=sum(r.requests for r in rows),
        labelled=labelled,
        rewards=rewards,
        reward_rate=(rewards / labelled) if labelled else None,
        auc=_weighted([(r.auc, float(r.labelled)) for r in rows]),
        calibration=calibration,
        missing_rate=_weighted_maps([(r.missing_rate, float(r.requests)) for r in rows]),
        invalid_rate=_weighted_maps([(r.invalid_rate, float(r.requests)) for r in rows]),
        psi=_weighted_maps([(r.psi, float(r.requests)) for r in rows]),
    )


@dataclass(frozen=True)
class MonitorReport:
    """One monitoring run of one model over ``[window_start, window_end)``."""

    model: str
    window_start: str  # ISO-8601 UTC
    window_end: str  # ISO-8601 UTC
    production_artifact_id: str | None
    production_gate_auc: float | None  # the AUC the gate recorded when production was promoted
    versions: tuple[VersionWindow, ...]
    closed_days: tuple[str, ...]  # YYYY-MM-DD days of the event log that are closed

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data; :meth:`from_json` gives back an equal report."""
        return {
            "model": self.model,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "production_artifact_id": self.production_artifact_id,
            "production_gate_auc": self.production_gate_auc,
            "versions": [v.to_json() for v in self.versions],
            "closed_days": list(self.closed_days),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> MonitorReport:
        """The inverse of :meth:`to_json`."""
        prod = d.get("production_artifact_id")
        return cls(
            model=str(d["model"]),
            window_start=str(d["window_start"]),
            window_end=str(d["window_end"]),
            production_artifact_id=None if prod is None else str(prod),
            production_gate_auc=_opt_float(d.get("production_gate_auc")),
            versions=tuple(VersionWindow.from_json(v) for v in d.get("versions") or ()),
            closed_days=tuple(str(x) for x in d.get("closed_days") or ()),
        )

    def production(self) -> VersionWindow | None:
        """The production artifact's row merged over arms (:func:`merge_arms`); None if it served nothing here."""
        if self.production_artifact_id is None:
            return None
        rows = [v for v in self.versions if v.artifact_id == self.production_artifact_id]
        return merge_arms(rows) if rows else None


__all__ = ["MonitorReport", "VersionWindow", "merge_arms"]
