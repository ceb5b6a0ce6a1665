"""Monitoring: what the served models saw over a window, from the event log, as a report and an artifact.

:mod:`.report` holds the data (no I/O), :mod:`.compute` reads the event log and the training statistics,
:mod:`.publish` writes the monitoring artifact and the summary table. Heavy modules are imported by their users,
so ``import caravan.monitoring`` stays cheap.
"""

from __future__ import annotations

from .report import MonitorReport, VersionWindow, merge_arms

__all__ = ["MonitorReport", "VersionWindow", "merge_arms"]
