"""Time stamps and time-ordered ids: one format each, everywhere caravan writes one."""

from __future__ import annotations

import datetime as dt
import uuid


def utc_now() -> str:
    """Now, as an ISO 8601 UTC timestamp with microseconds: ``2026-11-22T08:15:02.123456Z``."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_id() -> str:
    """A unique id that sorts by creation time: ``20261122T081502123456Z-<12 hex>``.

    Microseconds, so ids made in one second still sort; 48 random bits, so two made in the same
    microsecond (two workers, two hosts) still differ. Used for run ids, write attempts and pointer changes.
    """
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:12]


__all__ = ["new_id", "utc_now"]
