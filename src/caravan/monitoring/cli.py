"""``caravan monitor M [--window 24h] [--at ISO]``: compute the report, publish it, print the table, run the triggers.

The triggers (:mod:`caravan.monitoring.triggers`, when present) plug in through three names there:
``add_trigger_arguments(parser)`` adds their flags to this command, ``run_from_args(report, args, pointer=...,
now=..., artifact_store=...)`` runs after the artifact is published (the window's published report, its end as
``now``), and ``outcome_lines(outcomes)`` is what is printed of what it did.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from types import ModuleType
from typing import Any

from ..errors import ConfigurationError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` (a bare number: seconds) as seconds; a clear error otherwise."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not match or float(match.group(1)) <= 0:
        raise ConfigurationError(f"duration {text!r} must be a positive number with s, m, h or d (like 24h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_time(text: str | None) -> dt.datetime:
    """An ISO-8601 time (no zone: UTC); None: now, down to the minute (runs within a minute share a window)."""
    if text is None:
        return dt.datetime.now(dt.timezone.utc).replace(second=0, microsecond=0)
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ConfigurationError(f"--at {text!r} is not an ISO-8601 time (like 2026-11-29T18:00:00Z)") from None
    return moment.replace(tzinfo=dt.timezone.utc) if moment.tzinfo is None else moment.astimezone(dt.timezone.utc)


def _triggers() -> ModuleType | None:
    """The triggers module when it exists (only its absence is tolerated; an error inside it is raised)."""
    try:
        from . import triggers
    except ModuleNotFoundError as exc:
        if exc.name == f"{__package__}.triggers":
            return None
        raise
    return triggers


def add_monitor_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``monitor`` to the ``caravan`` subcommands."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "monitor", help="what the served models saw over a window: rates, online AUC, missing values, drift",
        description="Reads the event log of MODEL over the window hour by hour; per model version and arm: "
        "requests, labelled rows (attribution window ended), reward rate, online AUC and calibration, missing and "
        "invalid feature rates, PSI of each served feature against the version's training data. Publishes a "
        "Monitoring artifact (report.json, trends.png; the same window twice changes nothing) and prints a table.")
    parser.add_argument("model")
    parser.add_argument("--window", default="24h", help="length of the window ending at --at (default 24h)")
    parser.add_argument("--at", metavar="ISO", help="end of the window, UTC (default: now, to the minute)")
    parser.add_argument("--attribution-window", default="30m", metavar="DURATION",
                        help="a reward this long after a prediction labels it (default 30m, as the join)")
    parser.add_argument("--root", metavar="URI", help="artifact root with the event log and the models "
                        "(default: the one in effect)")
    parser.add_argument("--json", action="store_true", help="print report.json instead of the table")
    triggers = _triggers()
    if triggers is not None:
        triggers.add_trigger_arguments(parser)
    parser.set_defaults(func=cmd_monitor)
    return parser


def cmd_monitor(args: argparse.Namespace) -> int:
    """Compute, publish, print, then run the triggers (when there are any)."""
    from ..config import artifact_root
    from ..registry import open_pointer
    from ..storage import open_store
    from ..tables import terminal_width
    from .compute import compute
    from .publish import document, publish_monitoring, read_monitoring, summary_table

    window_s = parse_duration(args.window)
    at = parse_time(args.at)
    store = open_store(args.root or artifact_root())
    pointer = open_pointer()
    monitoring = compute(args.model, store=store, pointer=pointer, window_start=at - dt.timedelta(seconds=window_s),
                         window_end=at, now=at, attribution_window_s=parse_duration(args.attribution_window))
    artifact, outcome = publish_monitoring(store, monitoring, window_s)
    if outcome != "published":
        monitoring = read_monitoring(artifact)  # the window's first report stands
    if args.json:
        print(json.dumps(document(monitoring), indent=2, sort_keys=True))
    else:
        print(summary_table(monitoring.report, width=terminal_width()))
        for note in monitoring.notes:
            print(f"note: {note}")
        print(f"{outcome}: {artifact.uri}")
    sys.stdout.flush()
    triggers = _triggers()
    if triggers is not None:
        outcomes = triggers.run_from_args(monitoring.report, args, pointer=pointer, now=at, artifact_store=store)
        for line in triggers.outcome_lines(outcomes):
            print(line, file=sys.stderr if args.json else sys.stdout)  # --json: stdout stays one JSON document
    return 0


__all__ = ["add_monitor_parser", "cmd_monitor", "parse_duration", "parse_time"]
