"""Hold a local step to its memory ask, as a Nomad client's memory limit holds its task.

On a cluster a task's ``memory`` is a hard limit (the Docker and exec drivers set the cgroup's
``memory.max``; the kernel OOM-kills the task above it). Locally caravan watches the resident memory of the
step's whole session (the step and every process it started; it runs in its own session) a few times a
second and SIGKILLs the session above the ask, so a laptop run fails where the cluster would, with an error
naming the step and its ask instead of a swapping machine.

Why a watchdog and not ``RLIMIT_AS``: an address-space limit counts virtual memory, which Python, Arrow's
allocator and OpenMP reserve far beyond what they touch (a 256 MB limit stops ``import pyarrow``), and it is
per process, not per step. Resident memory is what a cgroup charges. What it does not do: RSS counts a page
shared by two processes twice (a cgroup counts it once) and misses the page cache a cgroup also charges,
and a spike shorter than the polling interval can pass. CPU is advisory locally: nothing throttles a step to
its ``cpu`` MHz (on Nomad it is a CPU share, enforced only when the node is contended).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

log = logging.getLogger("caravan.executors.memory")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_PROC = Path("/proc")


def session_rss_mb(session: int, proc: Path = _PROC) -> float | None:
    """Resident memory (MB) of every process in ``session``; None where ``/proc`` cannot tell (not Linux)."""
    if not (proc / "self" / "stat").exists():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        # After the command: state(3) ppid pgrp session(6) ... rss(24), in pages (proc(5)).
        if len(fields) > 21 and int(fields[3]) == session:
            total += int(fields[21])
    return total * _PAGE / (1024 * 1024)


class MemoryWatch:
    """Watches one step's session; past ``limit_mb`` of resident memory, SIGKILLs its process group."""

    def __init__(self, session: int, limit_mb: int, *, interval_s: float = 0.2) -> None:
        self.session = session
        self.limit_mb = limit_mb
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.exceeded_mb: float | None = None  # the resident memory that made the watch kill the step
        self.enforced = (_PROC / "self" / "stat").exists()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True, name=f"caravan-memory-{session}")

    def __enter__(self) -> MemoryWatch:
        if self.enforced:
            self._thread.start()
        else:
            log.warning("cannot read processes' memory here (no /proc): the step's memory ask of %d MB is not "
                        "enforced locally", self.limit_mb)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _watch(self) -> None:
        while not self._stop.is_set():
            used = session_rss_mb(self.session)
            if used is None:
                return
            self.peak_mb = max(self.peak_mb, used)
            if used > self.limit_mb:
                self.exceeded_mb = used
                try:
                    os.killpg(self.session, signal.SIGKILL)  # the kernel's OOM kill is a SIGKILL too
                except ProcessLookupError:
                    pass
                return
            self._stop.wait(self.interval_s)  # a process's RSS has no change event to wait on
