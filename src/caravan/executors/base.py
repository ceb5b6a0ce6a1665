"""The Executor interface: run one step's job for one artifact, return when it is over."""

from __future__ import annotations

import abc
import importlib
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..artifacts import Artifact
from ..config import caravan, section, setting
from ..errors import ConfigurationError
from .jobspec import JobSpec


@dataclass(frozen=True)
class StepRequest:
    """One step to run: the job's spec, the artifact it must publish, and the meta it receives."""

    spec: JobSpec
    artifact: Artifact
    meta: Mapping[str, str]
    run_id: str
    timeout_s: float
    placement_timeout_s: float | None = None  # None: the executor's configured default
    # The step's ask; None: what its job asks (the spec's resources locally, the registered job's on Nomad).
    cpu_mhz: int | None = None
    memory_mb: int | None = None


@dataclass
class StepResult:
    """How a finished step ran: where, under which ids, and where its logs were kept."""

    executor: str
    job_id: str
    alloc_ids: tuple[str, ...] = ()
    exit_code: int | None = 0
    log_uris: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)


class Executor(abc.ABC):
    """Runs steps. Implementations must never run a step twice for one artifact at the same time."""

    name: str = ""

    @abc.abstractmethod
    def run(self, request: StepRequest) -> StepResult:
        """Run the step to its end; raise :class:`~caravan.errors.StepFailed` unless it exited 0."""


def dispatch_id(job: str) -> str:
    """A child job id shaped like Nomad's: ``<job>/dispatch-<unix seconds>-<8 hex>``."""
    return f"{job}/dispatch-{int(time.time())}-{uuid.uuid4().hex[:8]}"


def tail(text: str, lines: int = 20) -> str:
    """The last ``lines`` lines of ``text``."""
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


EXECUTORS = {
    "local": "caravan.executors.local:LocalExecutor",
    "nomad": "caravan.executors.nomad:NomadExecutor",
}
_instances: dict[str, Executor] = {}
_lock = threading.Lock()


def executor_name() -> str:
    """The configured executor: ``CARAVAN_EXECUTOR`` or ``[caravan] executor``."""
    return setting("CARAVAN_EXECUTOR", section(caravan).executor)


def get_executor(name: str | None = None) -> Executor:
    """The executor called ``name`` (default: the configured one), created once per process."""
    name = name or executor_name()
    if name not in EXECUTORS:
        raise ConfigurationError(f"unknown executor {name!r}; caravan knows {sorted(EXECUTORS)}")
    with _lock:
        if name not in _instances:
            module_name, _, class_name = EXECUTORS[name].partition(":")
            _instances[name] = getattr(importlib.import_module(module_name), class_name)()
        return _instances[name]


def reset_executors() -> None:
    """Forget executor instances (tests point them at different servers)."""
    with _lock:
        _instances.clear()
