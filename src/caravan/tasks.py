"""``NomadJobTask``: a luigi task whose work is a step run by the configured executor.

The luigi worker only decides and waits; the step itself runs as a Nomad job (or a local
subprocess under the same contract), so nothing heavy runs in the worker process.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, ClassVar

import luigi

from .artifacts import ArtifactTask, completion_index, current_run_id
from .errors import JobSpecError, StepFailed
from .executors.base import StepRequest, executor_name, get_executor
from .executors.jobspec import load_spec
from .executors.sizing import cpu_parameter, memory_parameter
from .jsonable import plain as plain  # re-exported: pipelines import it from here
from .progress import configure_for_luigi as configure_for_luigi  # registers the luigi CLI's story (progress.py)

log = logging.getLogger("caravan.tasks")


class _Interrupted(BaseException):
    """Raised in the worker when it is told to stop (SIGTERM), so the running step is stopped too."""


@contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Within it, SIGTERM raises in the main thread, so the step the task is running (or a gang's ranks) is
    stopped with it; elsewhere (another thread, a handler already set) it changes nothing."""
    # luigi terminates a task process with SIGTERM (worker timeout, shutdown); without a handler
    # Python exits at once and the step would run on, orphaned.
    if threading.current_thread() is not threading.main_thread() or callable(signal.getsignal(signal.SIGTERM)):
        # Not ours to set, or already set: caravan.entrypoint's handler raises too, and also stops the luigi
        # worker around this task (replacing it here would let the worker carry on with the next task).
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise _Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class NomadJobTask(ArtifactTask):
    """An artifact task whose ``run()`` hands the step to the executor and waits for its artifact.

    Subclasses name their job (``job = "train-lightgbm"``: ``nomad/train-lightgbm.nomad.hcl``)
    and may override :meth:`hyperparameters` and :meth:`inputs`.
    """

    job: ClassVar[str] = ""
    timeout_s = luigi.FloatParameter(default=6 * 3600.0, significant=False,
                                     description="Stop the step and fail the task after this many seconds.")
    placement_timeout_s = luigi.OptionalFloatParameter(
        default=None, significant=False,
        description="On Nomad, how long the step may wait for a full cluster to make room before it fails "
        "(default: [nomad] placement_timeout_s). A step no node can ever take fails at once.")
    # Sizing (caravan.executors.sizing): insignificant, so a step at another size is the same artifact.
    cpu_mhz = cpu_parameter()
    memory_mb = memory_parameter()

    def clone(self, cls: type[luigi.Task] | None = None, **kwargs: Any) -> Any:
        """luigi's ``clone``, except that another step does not inherit this one's size: ``TrainRanker
        --memory-mb 16384`` sizes the training, not the ``self.clone(PrepareDataset)`` it requires."""
        if cls is None or cls is type(self):
            return super().clone(cls, **kwargs)
        new = {name: kwargs[name] if name in kwargs else getattr(self, name) for name, _ in cls.get_params()
               if name in kwargs or (hasattr(self, name) and name not in ("cpu_mhz", "memory_mb"))}
        return cls(**new)

    @property
    def resources(self) -> dict[str, int]:  # type: ignore[override]
        # Local steps share this machine: luigi's scheduler bounds them with [resources] caravan_local_steps.
        return {"caravan_local_steps": 1} if executor_name() == "local" else {}

    def hyperparameters(self) -> dict[str, Any]:
        """What the step receives as ``caravan_params``: by default every significant parameter."""
        return {name: plain(getattr(self, name)) for name, param in self.get_params() if param.significant}

    def inputs(self) -> dict[str, ArtifactTask]:
        """Named upstream artifact tasks, sent as ``caravan_inputs``: by default from ``requires()``."""
        required = self.requires()
        if required is None:
            return {}
        if isinstance(required, ArtifactTask):
            return {"input": required}
        if isinstance(required, Mapping):
            items = list(required.items())
        elif isinstance(required, (list, tuple)):
            items = [(str(i), t) for i, t in enumerate(required)]
        else:
            raise TypeError(f"{self.get_task_family()}.requires() returned {type(required).__name__}; "
                            "override inputs() to name the step's inputs")
        return {str(name): task for name, task in items if isinstance(task, ArtifactTask)}

    def meta(self) -> dict[str, str]:
        """The dispatch meta of the job contract. Never put secrets here: anyone who can read a job reads it."""
        artifact = self.output()
        spec = load_spec(self.job)
        return {
            "caravan_output": artifact.uri,
            "caravan_artifact_id": artifact.id,
            "caravan_identity": json.dumps({**self.address().identity(), "path_params": self.path_params},
                                           sort_keys=True),
            "caravan_inputs": json.dumps({k: t.output().uri for k, t in sorted(self.inputs().items())}),
            "caravan_params": json.dumps(self.hyperparameters(), sort_keys=True, allow_nan=False),
            "caravan_run_id": current_run_id(),
            "caravan_job": json.dumps({"name": spec.name, "sha256": spec.sha256}),
        }

    def run(self) -> None:
        if not self.job:
            raise JobSpecError(f"{self.get_task_family()} names no job (set the class attribute job = '...')")
        artifact = self.output()
        if artifact.exists():  # a fresh look: another worker may have published it meanwhile
            log.info("%s is already published", artifact.uri)
            return
        spec = load_spec(self.job)
        meta = self.meta()
        spec.check_meta(meta)
        executor = get_executor()
        request = StepRequest(spec=spec, artifact=artifact, meta=meta, run_id=current_run_id(),
                              timeout_s=float(self.timeout_s), placement_timeout_s=self.placement_timeout_s,
                              cpu_mhz=self.cpu_mhz, memory_mb=self.memory_mb)
        with stop_on_sigterm():
            result = executor.run(request)
        published = self.output()
        if not published.exists():
            raise StepFailed(f"step {spec.name} exited 0 but published no manifest", job_id=result.job_id,
                             alloc_ids=result.alloc_ids, artifact=artifact.id)
        completion_index.mark(published)
        log.info("%s published by %s (%s)", published.uri, result.job_id, executor.name)
