"""The monitoring artifact (``report.json`` and ``trends.png``), published create-if-absent, and the summary table.

Address: family ``Monitoring``, partitioned by ``model``, named by the window's end and length
(``Monitoring/model=ranker/window_end=20261129T181500Z,window_s=86400--<digest>``), so monitoring the same
window again finds the published artifact and changes nothing; a published report is never rewritten.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from typing import Any

from ..addressing import Address
from ..artifacts import Artifact
from ..errors import ArtifactExistsError
from ..storage import Store
from ..tables import fit, render
from .compute import HourTrend, Monitoring
from .report import MonitorReport, VersionWindow

FAMILY = "Monitoring"
REPORT_FILE = "report.json"
PLOT_FILE = "trends.png"
#: Bump when what a monitoring artifact holds changes (a new address, never a rewrite).
CODE_VERSION = "1"


def window_stamp(moment: dt.datetime) -> str:
    """A window end as a path-friendly UTC stamp, ``20261129T181500Z`` (microseconds kept when there are any)."""
    moment = moment.astimezone(dt.timezone.utc)
    return moment.strftime("%Y%m%dT%H%M%S") + (f".{moment.microsecond:06d}" if moment.microsecond else "") + "Z"


def monitoring_address(model: str, window_end: dt.datetime, window_s: float) -> Address:
    """Where the report of ``model`` over the ``window_s`` seconds before ``window_end`` lives."""
    return Address(family=FAMILY, params={"model": model, "window_end": window_stamp(window_end),
                                          "window_s": f"{window_s:g}"},
                   code_version=CODE_VERSION, partition_key="model")


def monitoring_artifact(store: Store, model: str, window_end: dt.datetime, window_s: float) -> Artifact:
    """The monitoring artifact of that window (published or not)."""
    return Artifact(store, monitoring_address(model, window_end, window_s))


def document(monitoring: Monitoring) -> dict[str, Any]:
    """What ``report.json`` holds: the report, its hourly trends, notes, the attribution window."""
    return {**monitoring.report.to_json(), "hourly": [t.to_json() for t in monitoring.hourly],
            "notes": list(monitoring.notes), "attribution_window_s": monitoring.attribution_window_s}


def read_monitoring(artifact: Artifact) -> Monitoring:
    """A published monitoring artifact back as a :class:`Monitoring`."""
    data = artifact.read_json(REPORT_FILE)
    return Monitoring(MonitorReport.from_json(data), tuple(HourTrend(**t) for t in data.get("hourly") or ()),
                      tuple(str(n) for n in data.get("notes") or ()), float(data.get("attribution_window_s") or 0))


def publish_monitoring(store: Store, monitoring: Monitoring, window_s: float) -> tuple[Artifact, str]:
    """Publish ``monitoring`` unless its window's artifact exists; returns the artifact (read it for what it
    holds: the first report of a window stands) and ``"published"`` or ``"already published"``."""
    end = dt.datetime.fromisoformat(monitoring.report.window_end)
    artifact = monitoring_artifact(store, monitoring.report.model, end, window_s)
    if artifact.exists():
        return Artifact(store, artifact.id), "already published"
    try:
        with artifact.writer() as writer:
            writer.write_json(REPORT_FILE, document(monitoring))
            writer.write_bytes(PLOT_FILE, trends_png(monitoring))
            writer.metrics.update(_metrics(monitoring.report))
    except ArtifactExistsError:  # another run of the same window published first, with later data: theirs stands
        return Artifact(store, artifact.id), "already published"
    return Artifact(store, artifact.id), "published" if writer.outcome == "published" else "already published"


def _metrics(report: MonitorReport) -> dict[str, Any]:
    production = report.production()
    drift = [v for row in report.versions for v in row.psi.values()]
    return {"requests": sum(v.requests for v in report.versions), "labelled": sum(v.labelled for v in report.versions),
            "versions": len(report.versions), "production_auc": production.auc if production else None,
            "max_psi": max(drift) if drift else None}


def trends_png(monitoring: Monitoring) -> bytes:
    """Four panels by hour, one line per version x arm: requests, reward rate, AUC, top PSI (feature named)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), dpi=80)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    panels = (("requests", "requests"), ("reward_rate", "reward rate"), ("auc", "online AUC"),
              ("top_psi", "top PSI"))
    lines: dict[tuple[str, str], list[HourTrend]] = {}
    for trend in monitoring.hourly:
        lines.setdefault((trend.artifact_id, trend.arm), []).append(trend)
    for ax, (name, title) in zip(axes.flat, panels, strict=True):
        ax.set_title(title, fontsize=10)
        for (artifact_id, arm), trends in sorted(lines.items()):
            hours = [dt.datetime.fromisoformat(t.hour) for t in trends]
            values = [math.nan if getattr(t, name) is None else float(getattr(t, name)) for t in trends]
            label = artifact_id.rsplit("--", 1)[-1][:8] + (f" ({arm})" if arm else "")
            ax.plot(hours, values, marker="o", markersize=3, label=label)
        if name == "top_psi":
            ax.axhline(0.2, color="grey", linestyle=":", linewidth=1)
        ax.tick_params(labelsize=8)
    if lines:
        axes.flat[0].legend(fontsize=7)
    report = monitoring.report
    figure.suptitle(f"{report.model}: {report.window_start[:16]} to {report.window_end[:16]} UTC", fontsize=11)
    figure.autofmt_xdate()
    out = io.BytesIO()
    figure.savefig(out, format="png")
    return out.getvalue()


def _rate(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _top(values: dict[str, float], *, zero: bool = True) -> str:
    """The feature with the highest value and that value ('' when there is none, or it is 0 and ``zero`` is off)."""
    if not values:
        return ""
    name = max(values, key=lambda k: (values[k], k))
    return f"{name} {values[name]:.3f}" if zero or values[name] > 0 else ""


def summary_table(report: MonitorReport, *, width: int | None = None) -> str:
    """The report as text: a header line (window, production and its gate AUC, last closed day), then one row
    per version x arm; ``width`` fits the table to a terminal (None: every value in full)."""
    gate = "" if report.production_gate_auc is None else f" (gate AUC {report.production_gate_auc:.4f})"
    closed = report.closed_days[-1] if report.closed_days else "none"
    lines = [f"{report.model}: {report.window_start} to {report.window_end}",
             f"production: {report.production_artifact_id or 'none'}{gate}; last closed day: {closed}"]
    headers = ["artifact", "arm", "requests", "labelled", "rewards", "reward rate", "AUC", "calibration",
               "top missing", "top invalid", "top PSI"]
    rows = [[_mark(v, report), v.arm or "-", str(v.requests), str(v.labelled), str(v.rewards), _rate(v.reward_rate),
             _rate(v.auc), _rate(v.calibration, 3), _top(v.missing_rate, zero=False),
             _top(v.invalid_rate, zero=False), _top(v.psi)]
            for v in report.versions]
    lines.append(render(fit(rows, headers, width=width, id_columns=[0]), headers))
    return "\n".join(lines)


def _mark(row: VersionWindow, report: MonitorReport) -> str:
    return row.artifact_id + (" *" if row.artifact_id == report.production_artifact_id else "")


__all__ = ["FAMILY", "PLOT_FILE", "REPORT_FILE", "document", "monitoring_address", "monitoring_artifact",
           "publish_monitoring", "read_monitoring", "summary_table", "trends_png", "window_stamp"]
