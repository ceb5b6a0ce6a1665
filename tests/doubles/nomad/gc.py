"""Job garbage collection, as ``nomad/core_sched.go`` jobGC does it (``PUT /v1/system/gc`` forces it)."""

from __future__ import annotations

import time

from .common import is_parent

FORCE_GC_THRESHOLD_S = 0.001  # core_sched.go forceGC: "a minimal threshold for all objects" (1 ms)
TERMINAL_EVALS = ("complete", "failed", "canceled")


class GarbageCollector:
    """Job GC (a mixin of :class:`NomadDouble`)."""

    def gc(self, threshold_s: float | None = None) -> list[str]:
        """Purge every job that is eligible and was submitted more than ``threshold_s`` ago (default: the
        double's ``gc_threshold_s``, Nomad's ``job_gc_threshold``), with its evals and allocs; return their
        ids, oldest first.

        Eligible (``nomad/state/schema.go`` jobIsGCable): a periodic or parameterized parent only once
        stopped; any other job once ``dead`` and either stopped or batch/sysbatch (dispatched and periodic
        children included), with every eval terminal. Age is the job's ``SubmitTime`` (jobGC skips jobs
        submitted after the cutoff). A purged child no longer counts in its parent's ``Children``, and its
        idempotency token can be dispatched again.
        """
        threshold = self.gc_threshold_s if threshold_s is None else threshold_s
        cutoff_ns = time.time_ns() - int(threshold * 1e9)
        with self._cond:
            doomed = []
            for key, rec in self._jobs.items():
                job = rec.job
                if is_parent(job):
                    eligible = bool(job["Stop"])
                else:
                    eligible = job["Status"] == "dead" and (job["Stop"] or job["Type"] in ("batch", "sysbatch"))
                evals = self._job_evals(key)
                if eligible and job["SubmitTime"] <= cutoff_ns and all(
                        e["Status"] in TERMINAL_EVALS for e in evals):
                    doomed.append(rec)
            doomed.sort(key=lambda r: r.job["SubmitTime"])
            if not doomed:
                return []
            idx = self._bump()
            for rec in doomed:
                key = (rec.job["Namespace"], rec.job["ID"])
                for ev in self._job_evals(key):
                    del self._evals[ev["ID"]]
                    self._wanted.pop(ev["ID"], None)
                for alloc in self._job_allocs(key):
                    del self._allocs[alloc.alloc["ID"]]
                del self._jobs[key]
                if rec.job["ParentID"]:
                    self._touch_summary((key[0], rec.job["ParentID"]), idx)
            for table in ("jobs", "evals", "allocs", "job_summary"):
                self._table(table, idx)
            self.stats["gc_purged"] += len(doomed)
            self._cond.notify_all()
        return [rec.job["ID"] for rec in doomed]
