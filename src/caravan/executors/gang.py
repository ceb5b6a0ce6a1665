"""A gang: one step run as N ranks at once by the configured executor, which all succeed or all stop.

A distributed training (``TrainRanker --num-machines N``) is the ``train-lightgbm-distributed`` job run N
times, rank 0 to N-1, each with the job contract's meta plus its place in the gang
(:func:`caravan.ml.distributed.gang_meta`). Nomad cannot dispatch one child with ``count = N`` (dispatch meta
never reaches a group's count), so on Nomad these are N children of the parameterized job, one allocation each;
locally, N processes, each with a free loopback port under the names Nomad uses.

:func:`run_gang` starts every rank through ``executor.run`` (each in a thread, since ``run`` blocks until its
step ends) and watches them. The first rank that fails aborts the gang: the abort mark in the gang's
rendezvous folder (:class:`caravan.ml.distributed.Rendezvous`) makes every other rank's watchdog end its
process, and on Nomad the gang's children that still run or wait for placement are stopped. An interrupt does
the same. The gang succeeds when rank 0 published the artifact; otherwise :class:`~caravan.errors.StepFailed`
names the rank that failed first and why (the last line of its stderr: a rendezvous timeout names the missing
ranks). The rendezvous folder is removed at the end either way.

On Nomad a gang outlives the worker that started it; a worker that runs the same training while all the ranks
of such a gang still run or wait attaches to it (``NomadExecutor.live_gang``: each rank follows its child)
instead of starting a second one. Locally the ranks die with their worker.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..errors import StepFailed
from ..ml.distributed import EXIT_ABORTED
from .base import Executor, StepRequest, StepResult

log = logging.getLogger("caravan.executors.gang")

#: How long after the step's timeout the gang waits for its ranks to report before giving up on them.
GRACE_S = 60.0


def slot(artifact_id: str, meta: Mapping[str, Any] | None) -> str:
    """What an executor keys a running step by: its artifact, and for a rank of a gang, the gang and the rank
    (two ranks of one artifact are two steps; a step without rank meta keys by its artifact alone)."""
    meta = meta or {}
    rank = meta.get("caravan_rank")
    if rank is None:
        return artifact_id
    return f"{artifact_id}#gang={gang_id_of(meta)}#rank={rank}"


def gang_id_of(meta: Mapping[str, Any]) -> str:
    """The gang id in a rank's meta ("" when there is none)."""
    try:
        return str(json.loads(str(meta.get("caravan_gang") or "{}")).get("id", ""))
    except ValueError:
        return ""


def rank_requests(request: StepRequest, size: int, gang_id: str, rendezvous_timeout_s: float,
                  socket_timeout_min: int = 10) -> list[StepRequest]:
    """The N requests of a gang: the same step and artifact, each with its rank's meta."""
    from ..ml.distributed import gang_meta

    return [replace(request, meta=gang_meta(request.meta, gang_id=gang_id, rank=rank, size=size,
                                            rendezvous_timeout_s=rendezvous_timeout_s,
                                            socket_timeout_min=socket_timeout_min))
            for rank in range(size)]


def run_gang(executor: Executor, request: StepRequest, size: int, *, rendezvous_timeout_s: float = 120.0,
             socket_timeout_min: int = 10, gang_id: str | None = None) -> StepResult:
    """Run ``request``'s step as ``size`` ranks through ``executor``; see the module docstring."""
    from ..ml.distributed import Rendezvous

    if gang_id is None:
        live = getattr(executor, "live_gang", None)  # Nomad: a gang a worker before this one started still runs
        gang_id = live(request.spec.name, request.artifact.id, size) if callable(live) else None
        if gang_id:
            log.info("%s: attaching to gang %s, whose %d ranks still run", request.artifact.id, gang_id, size)
    gang_id = gang_id or uuid.uuid4().hex[:16]
    requests = rank_requests(request, size, gang_id, rendezvous_timeout_s, socket_timeout_min)
    rendezvous = Rendezvous(request.artifact.store, request.artifact.key, gang_id)
    outcomes: dict[int, StepResult | BaseException] = {}
    order: list[int] = []  # ranks in the order they ended
    changed = threading.Condition()

    def run(rank: int) -> None:
        try:
            outcome: StepResult | BaseException = executor.run(requests[rank])
        except BaseException as exc:  # recorded, judged by the main thread
            outcome = exc
        with changed:
            outcomes[rank] = outcome
            order.append(rank)
            changed.notify_all()

    log.info("%s: gang %s of %d ranks of %s", request.artifact.id, gang_id, size, request.spec.name)
    threads = [threading.Thread(target=run, args=(rank,), name=f"caravan-gang-{gang_id}-{rank}", daemon=True)
               for rank in range(size)]
    started = time.monotonic()
    aborted = False
    try:
        for thread in threads:
            thread.start()
        deadline = started + request.timeout_s + GRACE_S
        with changed:
            while len(outcomes) < size:
                failed = [r for r in order if isinstance(outcomes[r], BaseException)]
                if failed and not aborted:
                    aborted = True
                    first = failed[0]
                    _abort(executor, request, rendezvous, gang_id,
                           f"rank {first} failed: {_headline(outcomes[first])}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                changed.wait(timeout=min(remaining, 1.0))
    except BaseException:  # an interrupt: no rank may run on, orphaned
        _abort(executor, request, rendezvous, gang_id, "the run was interrupted")
        _join(threads, GRACE_S)
        rendezvous.clear()
        raise
    if len(outcomes) < size:
        _abort(executor, request, rendezvous, gang_id, "ranks did not end within the step's timeout")
        _join(threads, GRACE_S)
    mark = rendezvous.aborted()
    rendezvous.clear()
    return _judge(request, size, gang_id, outcomes, order, mark, time.monotonic() - started)


def run_task(task: Any, job: str, size: int, *, rendezvous_timeout_s: float = 120.0,
             socket_timeout_min: int = 10) -> StepResult | None:
    """What :meth:`caravan.tasks.NomadJobTask.run` does, with the step run as a gang of ``size`` ranks of ``job``
    (None when the artifact turned out to be published already)."""
    from ..artifacts import completion_index, current_run_id
    from ..tasks import stop_on_sigterm
    from .base import get_executor
    from .jobspec import load_spec

    artifact = task.output()
    if artifact.exists():  # a fresh look: another worker may have published it meanwhile
        log.info("%s is already published", artifact.uri)
        return None
    spec = load_spec(job)
    meta = {**task.meta(), "caravan_job": json.dumps({"name": spec.name, "sha256": spec.sha256})}
    request = StepRequest(spec=spec, artifact=artifact, meta=meta, run_id=current_run_id(),
                          timeout_s=float(task.timeout_s), placement_timeout_s=task.placement_timeout_s,
                          cpu_mhz=task.cpu_mhz, memory_mb=task.memory_mb)
    for each in rank_requests(request, size, "check", rendezvous_timeout_s, socket_timeout_min):
        spec.check_meta(each.meta)
    executor = get_executor()
    with stop_on_sigterm():
        result = run_gang(executor, request, size, rendezvous_timeout_s=rendezvous_timeout_s,
                          socket_timeout_min=socket_timeout_min)
    if not task.output().exists():
        raise StepFailed(f"step {spec.name} exited 0 but published no manifest", job_id=result.job_id,
                         alloc_ids=result.alloc_ids, artifact=artifact.id)
    completion_index.mark(task.output())
    log.info("%s published by gang %s of %d (%s)", artifact.uri, result.details.get("gang"), size, executor.name)
    return result


def _abort(executor: Executor, request: StepRequest, rendezvous: Any, gang_id: str, reason: str) -> None:
    log.warning("%s: aborting gang %s: %s", request.artifact.id, gang_id, reason)
    rendezvous.abort("executor", reason)
    stop = getattr(executor, "stop_gang", None)  # Nomad: children still waiting for placement never see the mark
    if callable(stop):
        stop(request.spec.name, gang_id)


def _join(threads: list[threading.Thread], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))


def _headline(outcome: StepResult | BaseException) -> str:
    """One line about a rank's failure: the last line of its stderr that says why, else the exception's first line."""
    tail = str(getattr(outcome, "stderr_tail", "") or "")
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    for line in reversed(lines):
        if "caravan step" in line or "caravan gang" in line:
            return line
    head = str(outcome).splitlines()[0] if str(outcome) else type(outcome).__name__
    code = getattr(outcome, "exit_code", None)
    if code is not None and "code" not in head:
        head += f" (exit code {code}{': killed' if code in KILLED else ''})"
    return head


#: Exit codes of a process killed by SIGKILL: locally (Popen: -9) and on Nomad (128 + 9, the OOM killer's too).
KILLED = (-9, 137)


def _cause(order: list[int], failures: Mapping[int, BaseException],
           mark: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """The rank whose failure brought the gang down, and why, from what each rank's executor saw and the abort mark.

    A rank killed outright is the cause (its peers then fail on their sockets, or are stopped). Otherwise the rank
    that wrote the abort mark is: it failed on its own (a rendezvous timeout naming the missing ranks, an error in
    its data) and every other rank was stopped because of it. Else the first rank to fail."""
    def code(rank: int) -> Any:
        return getattr(failures[rank], "exit_code", None)

    failed = [r for r in order if r in failures]
    killed = [r for r in failed if code(r) in KILLED]
    if killed:
        return killed[0], _headline(failures[killed[0]])
    by = str((mark or {}).get("by", ""))
    if by.startswith("rank ") and by[5:].isdigit():
        return int(by[5:]), str((mark or {}).get("reason", ""))
    own = [r for r in failed if code(r) not in (EXIT_ABORTED, None)]
    if own or failed:
        rank = (own or failed)[0]
        return rank, _headline(failures[rank])
    return None


def _judge(request: StepRequest, size: int, gang_id: str, outcomes: Mapping[int, StepResult | BaseException],
           order: list[int], mark: Mapping[str, Any] | None, duration_s: float) -> StepResult:
    results = {r: o for r, o in outcomes.items() if isinstance(o, StepResult)}
    failures = {r: o for r, o in outcomes.items() if isinstance(o, BaseException)}
    missing = [r for r in range(size) if r not in outcomes]
    published = request.artifact.exists()
    if published and 0 in results:
        if failures or missing:
            log.warning("%s published by rank 0; ranks %s ended badly afterwards", request.artifact.id,
                        sorted([*failures, *missing]))
        return StepResult(executor=results[0].executor, job_id=results[0].job_id,
                          alloc_ids=tuple(a for r in sorted(results) for a in results[r].alloc_ids),
                          exit_code=0, log_uris=[u for r in sorted(results) for u in results[r].log_uris],
                          details={"gang": gang_id, "num_machines": size, "duration_s": round(duration_s, 3),
                                   "job_ids": [results[r].job_id for r in sorted(results)]})
    found = _cause(order, failures, mark)
    if found is None:
        why = (f"ranks {missing} did not end within the step's timeout" if missing
               else "rank 0 exited 0 but published no manifest")
        raise StepFailed(f"distributed step {request.spec.name} (gang {gang_id}, {size} machines) failed: {why}",
                         artifact=request.artifact.id)
    first, why = found
    cause: Any = failures.get(first)
    others = sorted(r for r in range(size) if r != first)
    raise StepFailed(f"distributed step {request.spec.name} (gang {gang_id}, {size} machines) failed: rank {first}: "
                     f"{why}; the other ranks ({', '.join(map(str, others))}) were stopped",
                     job_id=getattr(cause, "job_id", ""), alloc_ids=getattr(cause, "alloc_ids", ()),
                     exit_code=getattr(cause, "exit_code", None), stderr_tail=getattr(cause, "stderr_tail", ""),
                     artifact=request.artifact.id) from cause
