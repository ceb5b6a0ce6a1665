"""The event log: what a server predicted and what users did next, as Parquet on the artifact store.

:mod:`.log` writes it (``caravan serve``, the gateway) and states the on-store format; :mod:`.join` turns a
closed day of it into the ranker's click-log schema. Nothing here knows HTTP: servers call
:meth:`EventLog.prediction` and :meth:`EventLog.feedback` and never wait on the store.
"""

from __future__ import annotations

from .join import JoinCounts, join_events
from .log import FEATURE_PREFIX, EventLog, closed_days, read_events

__all__ = ["FEATURE_PREFIX", "EventLog", "JoinCounts", "closed_days", "join_events", "read_events"]
