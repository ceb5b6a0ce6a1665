"""Faults a test stages for what a real cluster does on a bad day."""

from __future__ import annotations

from .common import FAULTS


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
