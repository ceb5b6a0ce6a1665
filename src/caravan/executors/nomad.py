"""The Nomad executor: dispatch the step's parameterized job and follow the child to its end.

- **One child per artifact.** Before dispatching, the children of the job carrying this artifact id in
  their meta are listed: a live one is attached to (two live ones, the pre-1.11.2 race: the earliest is
  kept and the others stopped); a finished one whose artifact is published is accepted.
- **Idempotent dispatch on every Nomad version.** A dispatch sends an idempotency token (the
  ``idempotency_token`` query parameter; python-nomad's own argument puts it in the body, where Nomad
  ignores it) made of the artifact id and an attempt number that only grows: one more than the highest
  attempt among the artifact's children that still exist, read from their ``DispatchIdempotencyToken``. A
  job GC can remove old children but never makes a retry reuse the token of a surviving failed child.
  After a dispatch the child is confirmed (by id, then among the artifact's children): from 1.11.2 the
  loser of a race gets an id that never exists, and attaches to the winner instead. Before 1.11.2 the
  loser's own child may be stopped as the duplicate before the loser looks at it, or while it follows it: a
  child stopped by someone else is followed by a look at the artifact's children, and the kept one is
  attached to (or the one that published it accepted); only when there is none is the stop a failure.
- **Transient errors never stop a child.** Every request goes through :mod:`caravan.nomad_api`; a leader
  election, a reset or a read timeout is retried with backoff until the step's deadline. A dispatch that
  got no answer is followed by a look-up of the artifact's children before any new dispatch. Only the
  deadline, an interrupt, or a definitive answer (the child stopped or purged by someone else, a 4xx)
  end the wait, and :class:`~caravan.errors.StepFailed` says which.
- **Placement.** A child that cannot be placed because the cluster is full waits (logged once) until
  ``placement_timeout_s``; one that no node can ever take (constraints, class, driver, datacenter) fails at
  once, naming the filter (:mod:`caravan.executors.placement`).
- **Sizing.** A run that asks for other resources than the registered job's (``--cpu-mhz``, ``--memory-mb``)
  dispatches the job's sized twin ``<job>@<cpu>c<mem>m``, registered from the registered job when absent or
  stale (:mod:`caravan.executors.sizing` says why dispatch cannot carry an ask). The artifact's children are
  looked for across the job and its sized twins, so two sizes of one artifact never run at once. An ask that
  exceeds every eligible node fails at once, naming the ask, when the token may read nodes (Nomad reports it
  as exhaustion, like a full cluster).
- Waiting is blocking queries on the child job. The child is stopped only when the step times out, its
  placement times out or can never happen, or the luigi task is interrupted.
- Each allocation's stdout and stderr (UTF-8) are copied beside the artifact before Nomad's garbage
  collector can take them; a failure raises ``StepFailed`` with the child job id, allocation ids, exit
  code and the tail of stderr.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from ..config import section
from ..errors import BackendError, StepFailed
from ..nomad_api import NomadAPI, NomadRejected, NomadUnavailable, backoff_delay, check_address, nomad
from . import placement as pl
from . import sizing
from .base import Executor, StepRequest, StepResult, tail
from .gang import slot

log = logging.getLogger("caravan.executors.nomad")
_T = TypeVar("_T")

__all__ = ["NomadExecutor", "check_address", "idempotency_token", "nomad"]

DONE = "dead"
_TOKEN = re.compile(r"caravan-[0-9a-f]{32}-([0-9]+)")
# How long a dispatched child may stay invisible (a follower a little behind) before the dispatch is
# taken as one that never happened.
CONFIRM_S = 5.0


def idempotency_token(artifact_id: str, attempt: int) -> str:
    """The dispatch token for one attempt at one artifact (stable across workers and restarts)."""
    return f"caravan-{hashlib.sha256(artifact_id.encode()).hexdigest()[:32]}-{attempt}"


def token_attempt(token: str) -> int | None:
    """The attempt number inside a token made by :func:`idempotency_token` (None for any other token)."""
    found = _TOKEN.fullmatch(token or "")
    return int(found.group(1)) if found else None


class _Deadline(Exception):
    """The step's deadline passed while waiting."""


class NomadExecutor(Executor):
    """Runs steps as children of their parameterized jobs on a Nomad cluster."""

    name = "nomad"

    def __init__(self, api: NomadAPI | None = None) -> None:
        self.api = api or NomadAPI.from_config()
        cfg = section(nomad)
        self.placement_timeout_s = float(cfg.placement_timeout_s)

    # -- the step ----------------------------------------------------------------------------

    def run(self, request: StepRequest) -> StepResult:
        spec, artifact = request.spec, request.artifact
        deadline = time.monotonic() + request.timeout_s
        placement_s = (self.placement_timeout_s if request.placement_timeout_s is None
                       else float(request.placement_timeout_s))
        child_id = ""
        dispatched: list[str] = []  # what this call dispatched, known before the child is confirmed
        try:
            child_id, eval_id = self._start(request, deadline, dispatched)
            while True:
                job = self._follow(request, child_id, eval_id, deadline, placement_s)
                # A child stopped by someone else may have been stopped as a duplicate (pre-1.11.2 race: another
                # worker kept the earliest child, possibly after this one confirmed its own): never this run's
                # failure while the artifact has a kept child or is published.
                kept = self._kept(request, child_id, deadline) if job.get("Stop") else None
                if kept is None:
                    break
                child_id, eval_id = kept, ""
        except _Deadline:
            if child_id:
                self._stop(child_id)
            result = self._finish(request, child_id, dead_job=None) if child_id else None
            raise StepFailed(f"step {spec.name} timed out after {request.timeout_s:g} s"
                             + ("; child job stopped" if child_id else " before a child job was confirmed"),
                             job_id=child_id, alloc_ids=result.alloc_ids if result else (),
                             stderr_tail=result.details["stderr_tail"] if result else "",
                             artifact=artifact.id) from None
        except StepFailed:
            raise
        except NomadRejected as exc:  # a 4xx about caravan's own request (token, namespace): nothing to stop
            raise StepFailed(f"step {spec.name}: Nomad refused a request: {exc}", job_id=child_id,
                             artifact=artifact.id) from exc
        except BaseException:  # an interrupt (SIGTERM, Ctrl-C): the step must not run on, orphaned
            # Interrupted between the dispatch and its confirmation, there is no child_id yet: stop what we
            # dispatched (never a child we only attached to, which another worker follows).
            orphan = child_id or (dispatched[-1] if dispatched else "")
            if orphan:
                self._stop(orphan)
            raise
        result = self._finish(request, child_id, dead_job=job)
        if result.exit_code != 0 or not result.details["complete"]:
            raise StepFailed(f"step {spec.name} failed ({result.details['why']})", job_id=child_id,
                             alloc_ids=result.alloc_ids, exit_code=result.exit_code,
                             stderr_tail=result.details["stderr_tail"], artifact=artifact.id)
        return result

    def _retry(self, what: str, call: Callable[[], _T], deadline: float) -> _T:
        try:
            return self.api.retry(what, call, deadline=deadline)
        except NomadUnavailable:
            if time.monotonic() >= deadline:
                raise _Deadline from None
            raise

    # -- choosing the child: attach, accept, or dispatch -----------------------------------------

    def _start(self, request: StepRequest, deadline: float, dispatched: list[str]) -> tuple[str, str]:
        """The child to follow, and its dispatch eval (empty when attaching to an existing child). Each child
        Nomad names for a dispatch is appended to ``dispatched`` as soon as the answer arrives."""
        spec, artifact = request.spec, request.artifact
        target = ""
        for _ in range(5):  # a dispatch that never shows up and no other child: try again, a few times
            children = self._children(spec.name, slot(artifact.id, request.meta), deadline)
            live = self._live(children)
            if live:
                log.info("attaching to %s, already running for %s", live["ID"], artifact.id)
                return str(live["ID"]), ""
            if children and artifact.exists():
                published = _published(children)
                log.info("%s already published by %s", artifact.id, published)
                return published, ""
            attempt = self._next_attempt(children, deadline)
            target = target or self._target(request, deadline)
            started = self._dispatch(request, attempt, deadline, known={str(c["ID"]) for c in children},
                                     dispatched=dispatched, target=target)
            if started is not None:
                return started
        raise StepFailed(f"dispatching step {spec.name}: Nomad answered with child ids that never appeared, "
                         "and the artifact has no live child", artifact=artifact.id)

    def _target(self, request: StepRequest, deadline: float) -> str:
        """The job to dispatch: the step's own, or its sized twin (registered now if absent or stale) when the
        run asks for other resources than the registered job's."""
        spec = request.spec
        if request.cpu_mhz is None and request.memory_mb is None:
            return spec.name
        parent = self._retry(f"read {spec.name}", partial(self.api.read, f"job/{spec.name}"), deadline)
        if parent is None or parent.get("Stop"):
            return spec.name  # the dispatch gets Nomad's own answer: not found, or stopped
        registered = sizing.task_ask(parent, spec.task)
        ask = sizing.resolve(registered, request.cpu_mhz, request.memory_mb)
        if ask == registered:
            return spec.name
        sized_id = sizing.sized_job_id(spec.name, ask)
        current = self._retry(f"read {sized_id}", partial(self.api.read, f"job/{sized_id}"), deadline)
        why = sizing.stale(current, parent)
        if why:
            job = sizing.derive(parent, ask, spec.task)
            try:
                self._retry(f"register {sized_id}", lambda: self.api.post("jobs", json={"Job": job}), deadline)
            except NomadRejected as exc:
                raise StepFailed(f"step {spec.name} asks {ask} (registered: {registered}); registering its sized job "
                                 f"{sized_id} ({why}) was refused: {exc}. The token needs submit-job in the namespace "
                                 "to size a step", artifact=request.artifact.id) from exc
            log.info("registered %s for %s (%s)", sized_id, ask, why)
        return sized_id

    def _children(self, job: str, step: str, deadline: float) -> list[dict[str, Any]]:
        """The children of ``job`` and of its sized twins dispatched for ``step`` (an artifact id, or for a rank of
        a gang the artifact, gang and rank: :func:`caravan.executors.gang.slot`), oldest first."""
        stubs = self._retry("list children", lambda: self.api.get("jobs", {"prefix": job, "meta": "true"}), deadline)
        mine = [s for s in stubs or [] if sizing.in_family(str(s.get("ParentID") or ""), job)
                and slot(str((s.get("Meta") or {}).get("caravan_artifact_id")), s.get("Meta")) == step]
        return sorted(mine, key=lambda s: (int(s.get("CreateIndex") or 0), str(s.get("ID", ""))))

    def _live(self, children: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The one live child of an artifact; extra ones (two dispatches raced before Nomad 1.11.2) are
        stopped, keeping the earliest."""
        live = [c for c in children if c.get("Status") != DONE and not c.get("Stop")]
        for extra in live[1:]:
            log.warning("%s and %s both run artifact %s (dispatches raced); keeping the earliest, stopping %s",
                        live[0]["ID"], extra["ID"], (extra.get("Meta") or {}).get("caravan_artifact_id"),
                        extra["ID"])
            self._stop(str(extra["ID"]))
        return live[0] if live else None

    def _next_attempt(self, children: list[dict[str, Any]], deadline: float) -> int:
        """One more than the highest attempt among the children that still exist (0 if none)."""
        highest = -1
        for child in children:
            job = self._retry("read child", partial(self.api.read, f"job/{child['ID']}"), deadline)
            attempt = token_attempt(str((job or {}).get("DispatchIdempotencyToken") or ""))
            if attempt is not None:
                highest = max(highest, attempt)
        return highest + 1

    def _dispatch(self, request: StepRequest, attempt: int, deadline: float, known: set[str],
                  dispatched: list[str] | None = None, target: str = "") -> tuple[str, str] | None:
        """Dispatch and confirm the child; None when the answer named a child that never appeared and no
        other child of the artifact exists (the caller looks again). ``known``: the artifact's children
        before this dispatch; ``target``: the job to dispatch (default: the step's own)."""
        spec, artifact = request.spec, request.artifact
        token = idempotency_token(slot(artifact.id, request.meta), attempt)
        path = f"job/{target or spec.name}/dispatch"
        pauses = 0
        while True:
            try:
                answer = self.api.post(path, json={"Meta": dict(request.meta)}, params={"idempotency_token": token})
                break
            except NomadUnavailable as exc:
                # Ambiguous: the dispatch may have happened. Look before sending it again.
                if time.monotonic() >= deadline:
                    raise _Deadline from None
                log.warning("dispatch of %s for %s got no clear answer (%s); looking for its child first",
                            spec.name, artifact.id, exc)
                children = self._children(spec.name, slot(artifact.id, request.meta), deadline)
                live = self._live(children)
                if live:
                    return str(live["ID"]), ""
                new = [c for c in children if str(c["ID"]) not in known]
                if new:  # the dispatch did happen, and its child has already finished: follow it to its result
                    return str(new[0]["ID"]), ""
                pauses += 1
                time.sleep(min(backoff_delay(pauses), max(0.0, deadline - time.monotonic())))
            except NomadRejected as exc:
                raise StepFailed(f"Nomad refused to dispatch step {spec.name}: {exc}", artifact=artifact.id) from exc
        child_id, eval_id = str(answer["DispatchedJobID"]), str(answer.get("EvalID") or "")
        if dispatched is not None:
            dispatched.append(child_id)
        log.info("dispatched %s for %s, attempt %d (eval %s)", child_id, artifact.id, attempt,
                 eval_id or "none: existing child")
        return self._confirm(request, child_id, eval_id, deadline)

    def _confirm(self, request: StepRequest, child_id: str, eval_id: str, deadline: float) -> tuple[str, str] | None:
        """The child Nomad named, if it exists; else the live child of the artifact (another dispatch won)."""
        give_up = min(deadline, time.monotonic() + CONFIRM_S)
        pause = 0.05
        while True:
            found = self._retry("confirm child", lambda: self.api.read(f"job/{child_id}"), deadline)
            children = self._children(request.spec.name, slot(request.artifact.id, request.meta), deadline)
            live = self._live(children)  # two live children (pre-1.11.2 race): the later one is stopped
            if found is not None:
                # Ours may already be dead because another worker stopped it as the duplicate: still attach.
                if live is not None and live["ID"] != child_id and (found.get("Status") != DONE or found.get("Stop")):
                    log.warning("attaching to %s, the earliest child of %s", live["ID"], request.artifact.id)
                    return str(live["ID"]), ""
                if found.get("Stop") and live is None and request.artifact.exists():
                    return _published(children), ""
                return child_id, eval_id
            if live:
                log.warning("dispatch answer named %s, which does not exist: another worker's dispatch won; "
                            "attaching to %s", child_id, live["ID"])
                return str(live["ID"]), ""
            if children and request.artifact.exists():
                return _published(children), ""
            if time.monotonic() >= give_up:
                log.warning("dispatched child %s never appeared and %s has no live child; dispatching again",
                            child_id, request.artifact.id)
                return None
            time.sleep(pause)
            pause = min(pause * 2, 0.5)

    def _kept(self, request: StepRequest, stopped_id: str, deadline: float) -> str | None:
        """After ``stopped_id`` was stopped by someone else: the artifact's child to follow instead (the live one
        kept as the earliest, or the one that published it), or None when there is none (a real stop)."""
        children = self._children(request.spec.name, slot(request.artifact.id, request.meta), deadline)
        live = self._live(children)
        if live is not None and live["ID"] != stopped_id:
            log.warning("%s was stopped as a duplicate of %s for %s; attaching to it", stopped_id, live["ID"],
                        request.artifact.id)
            return str(live["ID"])
        if children and request.artifact.exists():
            published = _published(children)
            if published != stopped_id:
                log.warning("%s was stopped; %s is published by %s", stopped_id, request.artifact.id, published)
                return published
        return None

    # -- following the child -----------------------------------------------------------------

    def _follow(self, request: StepRequest, child_id: str, eval_id: str, deadline: float,
                placement_s: float) -> dict[str, Any]:
        """Block on the child job until it is dead; judge its placement while it is pending."""
        spec, artifact = request.spec, request.artifact
        if eval_id:  # the dispatch eval usually completes in milliseconds: see its verdict first
            self._wait_eval(eval_id, deadline)
        placement_deadline = time.monotonic() + placement_s
        waiting_for = ""
        no_eval_yet = False
        nodes_checked = False
        index = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Deadline
            wait = min(self.api.wait_s, remaining)
            if waiting_for:  # wake up in time to honour the placement timeout
                wait = min(wait, max(0.0, placement_deadline - time.monotonic()))
            if no_eval_yet:  # its evaluation's verdict would not wake a query on the job: look again soon
                wait = min(wait, 2.0)
            job, index = self._retry(f"wait for {child_id}", partial(self._block_job, child_id, index, wait),
                                     deadline)
            if job is None and artifact.exists():  # finished and already garbage-collected: the artifact says how
                log.warning("%s was garbage-collected before caravan saw it end; %s is published", child_id,
                            artifact.id)
                return {"ID": child_id, "Status": DONE}
            if job is None:
                raise StepFailed(f"child job {child_id} was purged by someone else while caravan waited on it",
                                 job_id=child_id, artifact=artifact.id)
            if job.get("Status") == DONE:
                return dict(job)
            if job.get("Status") != "pending" or job.get("Stop"):
                waiting_for, no_eval_yet = "", False
                continue
            verdict = self._placement(child_id, deadline)
            no_eval_yet = verdict.state == pl.PENDING and not verdict.eval_id
            if verdict.state in (pl.IMPOSSIBLE, pl.FAILED):
                self._stop(child_id)
                what = "can never be placed" if verdict.state == pl.IMPOSSIBLE else "could not be placed"
                raise StepFailed(f"step {spec.name} {what}: {verdict.reason}; child job stopped", job_id=child_id,
                                 artifact=artifact.id)
            if verdict.state == pl.PENDING and verdict.eval_id:
                self._wait_eval(verdict.eval_id, deadline)
                index = 0  # judge again at once
            elif verdict.state == pl.CAPACITY:
                if not nodes_checked:  # once: is it a full cluster, or an ask no node can ever hold?
                    nodes_checked = True
                    never = self._too_large(job, deadline)
                    if never:
                        self._stop(child_id)
                        raise StepFailed(f"step {spec.name} can never be placed: {never}; lower --cpu-mhz/--memory-mb "
                                         "(child job stopped)", job_id=child_id, artifact=artifact.id)
                if verdict.reason != waiting_for:
                    log.warning("%s waiting for capacity: %s (placement_timeout_s %g s)", child_id, verdict.reason,
                                placement_s)
                    waiting_for = verdict.reason
                if time.monotonic() >= placement_deadline:
                    self._stop(child_id)
                    raise StepFailed(f"step {spec.name} was not placed within placement_timeout_s = {placement_s:g} s "
                                     f"(waiting for capacity: {verdict.reason}); child job stopped",
                                     job_id=child_id, artifact=artifact.id)
            else:
                waiting_for = ""

    def _block_job(self, child_id: str, index: int, wait_s: float) -> tuple[dict[str, Any] | None, int]:
        try:
            return self.api.block(f"job/{child_id}", index=index, wait_s=wait_s)
        except NomadRejected as exc:
            if exc.status == 404:
                return None, 0
            raise

    def _wait_eval(self, eval_id: str, deadline: float) -> None:
        """Until the dispatch eval has run (pending → complete/blocked/failed); a missing eval is fine: the
        child's own state decides from here."""
        index = 0
        while time.monotonic() < deadline:
            wait = min(self.api.wait_s, deadline - time.monotonic())
            try:
                evaluation, index = self._retry(f"wait for eval {eval_id}", partial(
                    self.api.block, f"evaluation/{eval_id}", index=index, wait_s=wait), deadline)
            except NomadRejected as exc:
                if exc.status == 404:
                    return
                raise
            if evaluation.get("Status") != "pending":
                return
        raise _Deadline

    def _placement(self, child_id: str, deadline: float) -> pl.Placement:
        evals = self._retry("read evaluations", lambda: self.api.get(f"job/{child_id}/evaluations"), deadline)
        allocs = self._retry("read allocations", lambda: self.api.get(f"job/{child_id}/allocations"), deadline)
        return pl.judge(evals or [], allocs or [])

    def _too_large(self, job: dict[str, Any], deadline: float) -> str:
        """Why the child's ask exceeds every node it may run on ("" when some node could hold it, or when the
        token may not read nodes: then it waits like a step on a full cluster, up to placement_timeout_s)."""
        try:
            nodes = self._retry("read nodes", lambda: self.api.get("nodes", {"resources": "true"}), deadline)
        except NomadRejected as exc:
            log.warning("cannot read the nodes to tell a full cluster from a step too large for any node (%s); "
                        "waiting for capacity (a token with node:read fails such a step at once)", exc)
            return ""
        return pl.too_large(job, nodes or [])

    def live_gang(self, job: str, artifact_id: str, size: int) -> str | None:
        """The id of a gang of ``size`` ranks for ``artifact_id`` whose every rank still runs or waits, else None: a
        worker that restarts attaches to it (each rank to its child) instead of starting a second gang."""
        from .gang import gang_id_of

        try:
            stubs = self.api.retry("list gangs", lambda: self.api.get("jobs", {"prefix": job, "meta": "true"}),
                                   deadline=time.monotonic() + 30)
        except BackendError as exc:
            log.warning("could not look for a live gang of %s (%s); starting a new one", artifact_id, exc)
            return None
        ranks: dict[str, set[str]] = {}
        for stub in stubs or []:
            meta = stub.get("Meta") or {}
            if (sizing.in_family(str(stub.get("ParentID") or ""), job) and stub.get("Status") != DONE
                    and not stub.get("Stop") and meta.get("caravan_artifact_id") == artifact_id
                    and meta.get("caravan_num_machines") == str(size)):
                ranks.setdefault(gang_id_of(meta), set()).add(str(meta.get("caravan_rank")))
        whole = sorted(gang for gang, found in ranks.items() if found == {str(r) for r in range(size)})
        return whole[0] if whole else None

    def stop_gang(self, job: str, gang_id: str) -> None:
        """Stop every child of ``job`` (or its sized twins) that runs or waits as a rank of gang ``gang_id``: a rank
        still waiting for placement never sees the gang's abort mark."""
        try:
            stubs = self.api.retry("list gang", lambda: self.api.get("jobs", {"prefix": job, "meta": "true"}),
                                   deadline=time.monotonic() + 30)
        except BackendError as exc:
            log.error("could not list the ranks of gang %s to stop them: %s", gang_id, exc)
            return
        for stub in stubs or []:
            meta = stub.get("Meta") or {}
            if (sizing.in_family(str(stub.get("ParentID") or ""), job) and stub.get("Status") != DONE
                    and not stub.get("Stop") and f"#gang={gang_id}#" in slot("", meta)):
                self._stop(str(stub["ID"]))

    def _stop(self, child_id: str) -> None:
        """Stop a child (never purge: its record stays for an operator). Retried briefly through an outage."""
        try:
            self.api.retry(f"stop {child_id}", lambda: self.api.delete(f"job/{child_id}"),
                           deadline=time.monotonic() + 60)
            log.warning("stopped %s", child_id)
        except BackendError as exc:
            log.error("could not stop %s: %s", child_id, exc)

    # -- the outcome -------------------------------------------------------------------------

    def _finish(self, request: StepRequest, child_id: str, dead_job: dict[str, Any] | None) -> StepResult:
        """Read the allocations' outcome and keep their logs beside the artifact."""
        later = time.monotonic() + 120  # logs are worth waiting a short outage for, even past the deadline
        try:
            allocs = self._retry("read allocations",
                                 lambda: self.api.get(f"job/{child_id}/allocations", {"all": "true"}), later) or []
        except (BackendError, _Deadline) as exc:
            log.error("could not read the allocations of %s: %s", child_id, exc or "Nomad unavailable")
            allocs = []
        allocs = sorted(allocs, key=lambda a: a.get("CreateIndex", 0))
        task = request.spec.task
        exit_code: int | None = None
        log_uris: list[str] = []
        stderr_tail = ""
        for alloc in allocs:
            alloc_id = alloc["ID"]
            code = _exit_code(alloc.get("TaskStates") or {}, task)
            exit_code = code if code is not None else exit_code
            for kind in ("stdout", "stderr"):
                text = self._logs(alloc_id, task, kind, later)
                if text is None:
                    continue
                log_uris.append(request.artifact.write_log(request.run_id, f"{alloc_id[:8]}.{task}.{kind}.txt",
                                                           text.encode("utf-8")))
                if kind == "stderr" and text.strip():
                    stderr_tail = tail(text)
        heads = [a for a in allocs if not a.get("NextAllocation")]
        complete = bool(heads) and all(a.get("ClientStatus") == "complete" for a in heads)
        why = ", ".join(f"{a['ID'][:8]} {a.get('ClientStatus')}" for a in allocs) or "no allocation ran"
        if any(_oom_killed(a.get("TaskStates") or {}, task) for a in allocs):
            asked = _memory_ask(dead_job, task)
            why += (f"; killed for memory (OOM) above its memory ask{f' of {asked} MB' if asked else ''}: give it more "
                    "with --memory-mb")
        if not allocs and dead_job is not None and request.artifact.exists():
            complete, why = True, "allocations garbage-collected; the artifact is published"
        if dead_job is not None and dead_job.get("Stop"):
            complete, why = False, f"child job was stopped by someone else ({why})"
        return StepResult(executor=self.name, job_id=child_id, alloc_ids=tuple(a["ID"] for a in allocs),
                          exit_code=exit_code if exit_code is not None else (0 if complete else None),
                          log_uris=log_uris, details={"complete": complete, "why": why, "stderr_tail": stderr_tail})

    def _logs(self, alloc_id: str, task: str, kind: str, deadline: float) -> str | None:
        try:
            return self._retry(f"read {kind} of {alloc_id}", lambda: self.api.logs(alloc_id, task, kind), deadline)
        except (NomadRejected, _Deadline, NomadUnavailable) as exc:  # GC'd allocation, a task that never started
            log.warning("no %s logs for allocation %s: %s", kind, alloc_id, exc or "Nomad unavailable")
            return None


def _published(children: list[dict[str, Any]]) -> str:
    """The child that published an artifact: the latest one nobody stopped (a duplicate stopped in a race never
    ran to its end), else the latest."""
    ran = [c for c in children if not c.get("Stop")]
    return str((ran or children)[-1]["ID"])


def _oom_killed(task_states: dict[str, Any], task: str) -> bool:
    """Whether the task's last ``Terminated`` event says the kernel killed it for memory (``Details.oom_killed``,
    set by the task runner from the driver's exit result: ``client/allocrunner/taskrunner/task_runner.go``)."""
    events = (task_states.get(task) or {}).get("Events") or []
    last = next((e for e in reversed(events) if e.get("Type") == "Terminated"), None)
    return last is not None and (last.get("Details") or {}).get("oom_killed") == "true"


def _memory_ask(job: dict[str, Any] | None, task: str) -> int | None:
    """The task's memory ask in a job as the API shows it (None when the job or its task is not at hand)."""
    try:
        return sizing.task_ask(job or {}, task).memory_mb
    except (ValueError, TypeError):
        return None


def _exit_code(task_states: dict[str, Any], task: str) -> int | None:
    """The exit code of the task's last ``Terminated`` event (``Details.exit_code`` is a string)."""
    events = (task_states.get(task) or {}).get("Events") or []
    for event in reversed(events):
        if event.get("Type") == "Terminated":
            details = event.get("Details") or {}
            raw = details.get("exit_code", event.get("ExitCode"))
            try:
                return int(raw)
            except (TypeError, ValueError):
                return None
    return None
