"""A background thread that never dies: whatever a step raises is logged, counted, remembered for ``/health``
(:attr:`RetryLoop.last_error`, None again once a step succeeds) and retried with exponential backoff; only
:meth:`RetryLoop.stop` ends it. The gateway's experiment follower, bandit updater and worker discovery are such
loops, as :class:`caravan.serving.watcher.Watcher` is for the model pointer.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("caravan.gateway")


class RetryLoop(threading.Thread, abc.ABC):
    """A thread that runs :meth:`step` until stopped, backing off after errors, and remembers them.

    ``on_error`` (if set) is called with the thread's kind (its name up to the first ``-``) after each error,
    for a metric."""

    def __init__(self, name: str, *, min_backoff_s: float = 0.5, max_backoff_s: float = 30.0,
                 on_error: Callable[[str], None] | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.min_backoff_s, self.max_backoff_s, self.on_error = min_backoff_s, max_backoff_s, on_error
        self.stopped = threading.Event()
        self.errors = 0
        self.last_error: str | None = None  # None once a step succeeds again
        self.steps = 0

    @abc.abstractmethod
    def step(self) -> float:
        """One unit of work; returns how long to wait before the next (0: at once)."""

    def run(self) -> None:
        backoff = self.min_backoff_s
        while not self.stopped.is_set():
            try:
                pause = self.step()
            except Exception as exc:  # whatever happened, the thread lives on: report, back off, retry
                self.errors += 1
                self.last_error = f"{type(exc).__name__}: {str(exc)[:500]}"
                log.warning("%s failed, retrying in %.1f s: %s", self.name, backoff, self.last_error)
                if self.on_error is not None:
                    self.on_error(self.name.split("-")[0])
                self.stopped.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            else:
                self.steps += 1
                self.last_error = None
                backoff = self.min_backoff_s
                if pause > 0:
                    self.stopped.wait(pause)

    def stop(self) -> None:
        self.stopped.set()
