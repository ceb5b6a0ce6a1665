"""The Nomad executor: dispatch the step's parameterized job and follow the child to its end.

- One child per artifact: before dispatching, the children of the job are searched for one
  carrying this artifact id in its meta; a live one is attached to, a finished one whose
  artifact is published is accepted. A dispatch sends an idempotency token derived from the
  artifact id (as the ``idempotency_token`` query parameter: python-nomad's own argument puts
  it in the body, where Nomad ignores it), so two workers racing get the same child.
- Waiting is blocking queries on the child job (``index``/``wait``, ``X-Nomad-Index``), with a
  client timeout above Nomad's ``wait * 17/16`` jitter; an evaluation that cannot place the
  job is reported instead of waited on.
- The child is stopped when the step times out or the luigi task is interrupted.
- Each allocation's stdout and stderr are copied beside the artifact before Nomad's garbage
  collector can take them; a failure raises :class:`~caravan.errors.StepFailed` with the child
  job id, allocation ids, exit code and the tail of stderr.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import time
from collections.abc import Callable
from typing import Any

import luigi

from ..config import section, setting
from ..errors import BackendRejected, BackendUnavailable, ConfigurationError, StepFailed
from .base import Executor, StepRequest, StepResult, tail

log = logging.getLogger("caravan.executors.nomad")


class nomad(luigi.Config):  # noqa: N801 - the class name is the luigi.cfg section name
    """``[nomad]``: how to reach the cluster. ``NOMAD_ADDR``, ``NOMAD_TOKEN``, ``NOMAD_NAMESPACE``,
    ``NOMAD_REGION``, ``NOMAD_CACERT``, ``NOMAD_CLIENT_CERT``, ``NOMAD_CLIENT_KEY`` win."""

    address = luigi.Parameter(default="http://127.0.0.1:4646", description="Nomad HTTP API address.")
    namespace = luigi.Parameter(default="", description="Namespace of the step jobs (default: Nomad's 'default').")
    region = luigi.Parameter(default="", description="Region (default: the agent's).")
    cacert = luigi.Parameter(default="", description="CA bundle to verify Nomad's TLS certificate.")
    client_cert = luigi.Parameter(default="", description="Client certificate for mutual TLS.")
    client_key = luigi.Parameter(default="", description="Client key for mutual TLS.")
    blocking_wait_s = luigi.IntParameter(default=60, description="Longest single blocking query (Nomad caps at 300).")
    request_timeout_s = luigi.FloatParameter(default=10.0, description="Timeout of non-blocking requests.")


DONE = "dead"
FAILED_EVAL = {"failed", "canceled"}


def idempotency_token(artifact_id: str, attempt: int) -> str:
    """The dispatch token for one attempt at one artifact (stable across workers and restarts)."""
    return f"caravan-{hashlib.sha256(artifact_id.encode()).hexdigest()[:32]}-{attempt}"


class NomadExecutor(Executor):
    """Runs steps as children of their parameterized jobs on a Nomad cluster."""

    name = "nomad"

    def __init__(self) -> None:
        # python-nomad's package is called `nomad`, like the project's folder of job specs; a regular
        # package wins over that namespace folder at run time, but type checkers resolve the folder.
        python_nomad: Any = importlib.import_module("nomad")

        from ..secrets import get_secret

        cfg = section(nomad)
        address = setting("NOMAD_ADDR", cfg.address)
        check_address(address)
        cacert = setting("NOMAD_CACERT", cfg.cacert)
        cert, key = setting("NOMAD_CLIENT_CERT", cfg.client_cert), setting("NOMAD_CLIENT_KEY", cfg.client_key)
        self.namespace = setting("NOMAD_NAMESPACE", cfg.namespace) or None
        self.wait_s = max(1, min(int(cfg.blocking_wait_s), 300))
        self.timeout_s = float(cfg.request_timeout_s)
        self.client = python_nomad.Nomad(
            address=address,
            token=get_secret("nomad", "token"),
            namespace=self.namespace,
            region=setting("NOMAD_REGION", cfg.region) or None,
            timeout=self.timeout_s,
            # python-nomad does not verify TLS unless told to; caravan always does.
            verify=cacert or True,
            cert=(cert, key) if cert and key else (),
        )
        self.address = address

    # -- HTTP, with client errors translated once, here ------------------------------------

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from nomad.api import exceptions as nx

        try:
            return fn(*args, **kwargs)
        except nx.BaseNomadException as exc:
            response = getattr(exc, "nomad_resp", None)
            status = getattr(response, "status_code", None)
            text = (getattr(response, "text", "") or str(response or exc)).strip()
            # No status: the request never got an answer. Nomad answers 500 for most refusals
            # (bad meta, unknown job), so only 429 and gateway errors count as "try again".
            if status is None or status in (429, 502, 503, 504):
                raise BackendUnavailable(f"{what}: {text}", backend=f"nomad {self.address}") from exc
            raise BackendRejected(f"{what}: HTTP {status}: {text}", backend=f"nomad {self.address}") from exc
        except Exception as exc:  # requests' own errors, e.g. a read timeout on a blocking query
            import requests

            if isinstance(exc, requests.RequestException):
                raise BackendUnavailable(f"{what}: {exc}", backend=f"nomad {self.address}") from exc
            raise

    def _get(self, *path: str, params: dict[str, Any] | None = None, timeout: float | None = None) -> Any:
        """GET /v1/job/... or /v1/evaluation/... (python-nomad adds ?namespace only to the former)."""
        params = dict(params or {})
        if path[0] == "evaluation" and self.namespace:
            params.setdefault("namespace", self.namespace)
        requester = self.client.job if path[0] == "job" else self.client.evaluation
        return self._call(f"GET /v1/{'/'.join(path)}", requester.request, *path[1:], method="get", params=params,
                          timeout=timeout or self.timeout_s)

    def _block(self, *path: str, index: int, wait_s: float) -> tuple[Any, int]:
        """One blocking query; returns the body and the new index (reset to 0 if it went backwards)."""
        wait = max(1, int(wait_s))
        response = self._get(*path, params={"index": index, "wait": f"{wait}s"}, timeout=wait * 17 / 16 + 5)
        new_index = int(response.headers.get("X-Nomad-Index", "0") or 0)
        return response.json(), (0 if new_index < index else new_index)

    # -- the step ----------------------------------------------------------------------------

    def run(self, request: StepRequest) -> StepResult:
        spec, artifact = request.spec, request.artifact
        children = self._children(spec.name, artifact.id)
        live = [c for c in children if c.get("Status") != DONE]
        eval_id = ""
        if live:
            child_id = live[-1]["ID"]
            log.info("attaching to %s, already running for %s", child_id, artifact.id)
        elif children and artifact.exists():
            child_id = children[-1]["ID"]
            log.info("%s already published by %s", artifact.id, child_id)
        else:
            child_id, eval_id = self._dispatch(request, attempt=len(children))
        deadline = time.monotonic() + request.timeout_s
        try:
            self._check_placement(child_id, eval_id, deadline)
            job = self._wait_dead(child_id, deadline)
        except TimeoutError:
            self._stop(child_id)
            result = self._finish(request, child_id, dead_job=None)
            raise StepFailed(f"step {spec.name} timed out after {request.timeout_s:g} s; child job stopped",
                             job_id=child_id, alloc_ids=result.alloc_ids, stderr_tail=result.details["stderr_tail"],
                             artifact=artifact.id) from None
        except BaseException:
            self._stop(child_id)
            raise
        result = self._finish(request, child_id, dead_job=job)
        if result.exit_code != 0 or not result.details["complete"]:
            raise StepFailed(f"step {spec.name} failed ({result.details['why']})", job_id=child_id,
                             alloc_ids=result.alloc_ids, exit_code=result.exit_code,
                             stderr_tail=result.details["stderr_tail"], artifact=artifact.id)
        return result

    def _children(self, job: str, artifact_id: str) -> list[dict[str, Any]]:
        stubs = self._call("GET /v1/jobs", self.client.jobs.request, method="get",
                           params={"prefix": f"{job}/dispatch-", "meta": "true"}, timeout=self.timeout_s).json()
        mine = [s for s in stubs if s.get("ParentID") == job and (s.get("Meta") or {}).get("caravan_artifact_id")
                == artifact_id]
        return sorted(mine, key=lambda s: (s.get("CreateIndex", 0), s.get("ID", "")))

    def _dispatch(self, request: StepRequest, attempt: int) -> tuple[str, str]:
        token = idempotency_token(request.artifact.id, attempt)
        body = {"Meta": dict(request.meta)}
        response = self._call(f"POST /v1/job/{request.spec.name}/dispatch", self.client.job.request,
                              request.spec.name, "dispatch", method="post", params={"idempotency_token": token},
                              json=body, timeout=self.timeout_s).json()
        child_id, eval_id = response["DispatchedJobID"], response.get("EvalID") or ""
        log.info("dispatched %s for %s (eval %s)", child_id, request.artifact.id, eval_id or "none: existing child")
        return str(child_id), str(eval_id)

    def _check_placement(self, child_id: str, eval_id: str, deadline: float) -> None:
        """Fail fast if the scheduler could not place the step (it would otherwise wait forever)."""
        if not eval_id:
            evals = self._get("job", child_id, "evaluations").json()
            pending = [e for e in evals if e.get("Status") == "pending"]
            blocked = [e for e in evals if e.get("Status") == "blocked" or e.get("FailedTGAllocs")]
            if blocked:
                self._raise_unplaceable(child_id, blocked[0])
            if not pending:
                return
            eval_id = pending[0]["ID"]
        index = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            evaluation, index = self._block("evaluation", eval_id, index=index, wait_s=min(self.wait_s, remaining))
            status = evaluation.get("Status")
            if evaluation.get("FailedTGAllocs") or evaluation.get("BlockedEval"):
                self._raise_unplaceable(child_id, evaluation)
            if status in FAILED_EVAL:
                raise StepFailed(f"evaluation {eval_id} {status}: {evaluation.get('StatusDescription', '')}",
                                 job_id=child_id)
            if status == "complete":
                return

    def _raise_unplaceable(self, child_id: str, evaluation: dict[str, Any]) -> None:
        failed = evaluation.get("FailedTGAllocs") or {}
        reasons = []
        for group, metric in failed.items():
            metric = metric or {}
            detail = {k: v for k, v in metric.items() if k in ("NodesEvaluated", "NodesFiltered", "NodesExhausted",
                                                                  "ConstraintFiltered", "DimensionExhausted",
                                                                  "ClassFiltered", "QuotaExhausted") and v}
            reasons.append(f"group {group!r}: {detail or 'no eligible node'}")
        self._stop(child_id)
        raise StepFailed("the scheduler could not place the step (" + "; ".join(reasons or ["blocked evaluation"])
                         + "); child job stopped", job_id=child_id)

    def _wait_dead(self, child_id: str, deadline: float) -> dict[str, Any]:
        index = 0
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            job, index = self._block("job", child_id, index=index, wait_s=min(self.wait_s, remaining))
            if job.get("Status") == DONE:
                return dict(job)

    def _stop(self, child_id: str) -> None:
        try:
            self._call(f"DELETE /v1/job/{child_id}", self.client.job.request, child_id, method="delete",
                       timeout=self.timeout_s)
            log.warning("stopped %s", child_id)
        except (BackendUnavailable, BackendRejected) as exc:
            log.error("could not stop %s: %s", child_id, exc)

    def _finish(self, request: StepRequest, child_id: str, dead_job: dict[str, Any] | None) -> StepResult:
        """Read the allocations' outcome and keep their logs beside the artifact."""
        allocs = self._get("job", child_id, "allocations", params={"all": "true"}).json()
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
                text = self._logs(alloc_id, task, kind)
                if text is None:
                    continue
                log_uris.append(request.artifact.write_log(request.run_id, f"{alloc_id[:8]}.{task}.{kind}.txt",
                                                           text.encode("utf-8")))
                if kind == "stderr" and text.strip():
                    stderr_tail = tail(text)
        heads = [a for a in allocs if not a.get("NextAllocation")]
        complete = bool(heads) and all(a.get("ClientStatus") == "complete" for a in heads)
        why = ", ".join(f"{a['ID'][:8]} {a.get('ClientStatus')}" for a in allocs) or "no allocation ran"
        if dead_job is not None and dead_job.get("Stop"):
            complete, why = False, f"child job was stopped ({why})"
        return StepResult(executor=self.name, job_id=child_id, alloc_ids=tuple(a["ID"] for a in allocs),
                          exit_code=exit_code if exit_code is not None else (0 if complete else None),
                          log_uris=log_uris, details={"complete": complete, "why": why, "stderr_tail": stderr_tail})

    def _logs(self, alloc_id: str, task: str, kind: str) -> str | None:
        try:
            response = self._call(f"GET /v1/client/fs/logs/{alloc_id}", self.client.client.stream_logs.request,
                                  alloc_id, method="get", timeout=self.timeout_s,
                                  params={"task": task, "type": kind, "plain": "true", "origin": "start"})
        except BackendRejected as exc:  # GC'd allocation, or a task that never started
            log.warning("no %s logs for allocation %s: %s", kind, alloc_id, exc)
            return None
        return str(response.text)


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


def check_address(address: str) -> None:
    """Refuse an address python-nomad would silently misread."""
    if not address.startswith(("http://", "https://")):
        raise ConfigurationError(f"Nomad address {address!r} must start with http:// or https://")
