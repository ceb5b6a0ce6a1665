"""Faults a test stages for what a real cluster does on a bad day."""

from __future__ import annotations

import time

from .common import FAULTS, Reply

LEADER_EVENTS = (None, "dispatch", "placement", "running")
NO_LEADER = "No cluster leader"  # nomad/structs/errors.go errNoLeader


class Faults:
    """Staged faults (a mixin of :class:`NomadDouble`)."""

    def inject(self, job_id: str, fault: str, count: int = 1) -> None:
        """Make the next ``count`` launches of ``job_id`` (dispatches, forced or plain runs) misbehave.

        ``fail``: every run writes "injected failure" to stderr and exits 3. ``hang``: every run sleeps
        until stopped. ``lose``: the first allocation's node goes down (ClientStatus ``lost``), and one
        replacement with ``PreviousAllocation`` runs the real command. ``block``: the eval cannot place
        the job (``FailedTGAllocs`` and a ``blocked`` eval); the child stays ``pending``, ``Queued 1``.
        """
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {FAULTS}")
        if count < 1:
            raise ValueError("count must be at least 1")
        with self._cond:
            self._faults[job_id].extend([fault] * count)

    def _take_fault(self, job_id: str) -> str | None:
        queue = self._faults.get(job_id)
        return queue.popleft() if queue else None

    def leader_loss(self, seconds: float, *, drop_connections: bool = False, after: str | None = None) -> None:
        """Lose the cluster leader for ``seconds``: the HTTP API answers, the cluster keeps working.

        While a window is open every API request answers HTTP 500 ``No cluster leader`` as text
        (``nomad/structs/errors.go`` ErrNoLeader; ``command/agent/http.go`` wrap makes an uncoded RPC error a 500,
        and Go's net/http labels the text ``text/plain; charset=utf-8``). With ``drop_connections`` every other
        request (the first one included) instead has its connection closed with no answer, as a restarting
        agent does. Evals, placements and running tasks carry on: only the servers' API is down.

        ``after``: None opens the window now. ``"dispatch"``: the next dispatch that creates a child is
        applied (the child and its eval exist) but its caller gets the window's answer instead of the reply
        (an ambiguous dispatch), and the window opens then. ``"placement"``: it opens when the next allocation
        is placed. ``"running"``: when the next task process starts.
        """
        if after not in LEADER_EVENTS:
            raise ValueError(f"after must be one of {LEADER_EVENTS}, not {after!r}")
        if seconds <= 0:
            raise ValueError("seconds must be positive")
        with self._cond:
            if after is None:
                self._open_window(seconds, drop_connections)
            else:
                self._leader_triggers.append((after, seconds, drop_connections))

    def _open_window(self, seconds: float, drop: bool) -> None:
        self._leader_windows.append((time.monotonic() + seconds, drop))

    def _leader_event(self, event: str) -> bool:
        """``event`` happened (the lock is held): open the first window waiting for it; True if one opened."""
        for number, (after, seconds, drop) in enumerate(self._leader_triggers):
            if after == event:
                del self._leader_triggers[number]
                self._open_window(seconds, drop)
                return True
        return False

    def _no_leader_reply(self, force: bool = False) -> Reply | None:
        """The answer while the leader is lost (None when a leader is known); ``force``: answer so even if
        the window has just closed (the caller's own request opened it)."""
        with self._cond:
            now = time.monotonic()
            self._leader_windows = [(end, drop) for end, drop in self._leader_windows if end > now]
            if not self._leader_windows and not force:
                return None
            drop = any(d for _, d in self._leader_windows)
            self._leader_answers += 1
            if drop and self._leader_answers % 2 == 1:
                self.stats["dropped_connections"] += 1
                return Reply(drop=True)
            self.stats["no_leader_answers"] += 1
            return Reply(raw=NO_LEADER.encode(), content_type="text/plain; charset=utf-8")
