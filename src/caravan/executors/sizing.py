"""A step's CPU and memory ask: the luigi parameters, their bounds, and the sized job that carries them on Nomad.

Every step task has ``cpu_mhz`` and ``memory_mb`` (``--cpu-mhz``, ``--memory-mb`` on the luigi command line).
Unset, a step gets what its spec's ``resources`` stanza asks (:attr:`JobSpec.ask`). Both are insignificant: the
same computation at another size is the same artifact, so sizing a step never computes anything twice.

Why a sized job, and not dispatch: a dispatched child is a copy of its parameterized parent as registered;
dispatch sets only meta, payload, priority and the id prefix (``nomad/job_endpoint.go`` ``Job.Dispatch``:
``parameterizedJob.Copy()``, then meta merged), and ``resources`` take no runtime interpolation. So an ask
other than the registered one needs another registered job. Registering it as a child of the step's job is
not possible either: the HTTP API drops ``ParentID``, ``Dispatched`` and ``DispatchIdempotencyToken`` from a
registered job (``command/agent/job_endpoint.go`` ``ApiJobToStructJob``). caravan therefore derives a *sized
parameterized job*, ``<job>@<cpu>c<memory>m`` (:func:`sized_job_id`), from the registered parent (the same job
as published, its task's resources replaced, meta recording the parent's ``Version`` and ``JobModifyIndex``),
registers it only when it is absent, stopped or derived from another version of the parent, and dispatches
it as it would the parent. An ask equal to the parent's never registers anything: the default path needs only
``dispatch-job`` and ``read-job``.

What that costs, honestly:

- Registering needs ``submit-job`` (or ``register-job``) in the namespace. Nomad's namespace capabilities are
  not scoped by job id, so that token may register or replace *any* job of the namespace. caravan's retrain
  token already holds ``submit-job`` (stopping a child is ``Job.Deregister``), so sizing adds no capability,
  but it does use one that is broader than sizing needs (terraform/access.yaml).
- A sized job is a parent of its own: its children's workload identity carries ``nomad_job_id =
  <job>@...`` (``structs.Job.GetIDforWorkloadIdentity``), so a Vault or Consul role bound to the exact step
  job names refuses them; the binding must also accept ``<job>@*`` (a glob bound claim).
- Sized jobs stay registered (one per size in use), and are re-derived after each ``caravan publish``.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

import luigi

#: Nomad's floor (``nomad/structs/structs.go`` ``MinResources``: CPU 1 MHz, MemoryMB 10).
MIN_CPU_MHZ, MIN_MEMORY_MB = 1, 10
#: caravan's ceiling: far above any node, low enough to catch a value typed in the wrong unit (bytes, kHz).
MAX_CPU_MHZ, MAX_MEMORY_MB = 1_000_000, 4 * 1024 * 1024
#: What Nomad gives a task without a resources stanza (``api/resources.go`` ``DefaultResources``).
NOMAD_DEFAULT_CPU_MHZ, NOMAD_DEFAULT_MEMORY_MB = 100, 300
SIZED_SEPARATOR = "@"
_SIZED = re.compile(r"(?P<job>.+)@(?P<cpu>[0-9]+)c(?P<memory>[0-9]+)m")
META_PARENT = "caravan_sized_from"
META_PARENT_VERSION = "caravan_sized_from_version"
META_PARENT_INDEX = "caravan_sized_from_index"


@dataclass(frozen=True)
class Ask:
    """What one allocation of a step reserves on its node: CPU in MHz and memory in MB."""

    cpu_mhz: int
    memory_mb: int

    def __post_init__(self) -> None:
        check_cpu_mhz(self.cpu_mhz)
        check_memory_mb(self.memory_mb)

    def __str__(self) -> str:
        return f"cpu {self.cpu_mhz} MHz, memory {self.memory_mb} MB"


def _check(name: str, value: Any, low: int, high: int, unit: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be a whole number of {unit}, not {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} = {value} is out of bounds: {low} to {high} {unit}")
    return value


def check_cpu_mhz(value: Any) -> int:
    """``value`` if it is a CPU ask Nomad accepts and caravan believes (whole MHz within bounds), else ValueError."""
    return _check("cpu_mhz", value, MIN_CPU_MHZ, MAX_CPU_MHZ, "MHz")


def check_memory_mb(value: Any) -> int:
    """``value`` if it is a memory ask Nomad accepts and caravan believes (whole MB within bounds), else ValueError."""
    return _check("memory_mb", value, MIN_MEMORY_MB, MAX_MEMORY_MB, "MB")


class ResourceParameter(luigi.OptionalIntParameter):
    """An optional whole-number ask (``--memory-mb 8192``); empty or unset is None: the spec's value.

    Out-of-bounds or non-integer values are refused when the task is made, naming the parameter."""

    def __init__(self, *, check: Any, **kwargs: Any) -> None:
        kwargs.setdefault("significant", False)
        super().__init__(default=None, **kwargs)
        self._check = check

    def parse(self, x: Any) -> Any:
        if isinstance(x, str):
            text = x.strip()
            if not text:
                return None
            if not re.fullmatch(r"[0-9]+", text):
                self._check(x)  # raises, naming the parameter
            return self._check(int(text))
        return self.normalize(x)

    def normalize(self, x: Any) -> Any:
        return None if x is None else self._check(x)


def cpu_parameter() -> ResourceParameter:
    """The ``cpu_mhz`` task parameter."""
    return ResourceParameter(check=check_cpu_mhz, description=(
        "CPU the step reserves, in MHz (default: its spec's resources.cpu). Does not change the artifact."))


def memory_parameter() -> ResourceParameter:
    """The ``memory_mb`` task parameter."""
    return ResourceParameter(check=check_memory_mb, description=(
        "Memory the step may use, in MB (default: its spec's resources.memory); the step is killed above it, "
        "on Nomad and locally. Does not change the artifact."))


def resolve(spec_ask: Ask, cpu_mhz: int | None, memory_mb: int | None) -> Ask:
    """The ask a run gets: each value given, else the spec's."""
    return Ask(spec_ask.cpu_mhz if cpu_mhz is None else cpu_mhz,
               spec_ask.memory_mb if memory_mb is None else memory_mb)


# -- the sized job on Nomad ----------------------------------------------------------------------------------


def sized_job_id(job: str, ask: Ask) -> str:
    """The id of ``job`` sized to ``ask``: ``train-lightgbm@4000c16384m`` (any id without a space or a NUL is a
    valid Nomad job id, ``structs.Job.Validate``; ``@`` needs no escaping in a URL path)."""
    return f"{job}{SIZED_SEPARATOR}{ask.cpu_mhz}c{ask.memory_mb}m"


def sized_parent(job_id: str) -> str | None:
    """The step job a sized job id was derived from (None for any other id)."""
    found = _SIZED.fullmatch(job_id)
    return found.group("job") if found else None


def in_family(parent_id: str, job: str) -> bool:
    """Whether ``parent_id`` is ``job`` itself or one of its sized jobs."""
    return parent_id == job or sized_parent(parent_id) == job


def task_ask(job: dict[str, Any], task: str | None = None) -> Ask:
    """The ask of ``task`` (default: the only task) of a job as the API shows it."""
    found = _task(job, task)
    resources = found.get("Resources") or {}
    return Ask(int(resources.get("CPU") or NOMAD_DEFAULT_CPU_MHZ),
               int(resources.get("MemoryMB") or NOMAD_DEFAULT_MEMORY_MB))


def _task(job: dict[str, Any], task: str | None) -> dict[str, Any]:
    tasks = [t for g in job.get("TaskGroups") or [] for t in g.get("Tasks") or [] if task is None or t["Name"] == task]
    if len(tasks) != 1:
        raise ValueError(f"job {job.get('ID')!r}: expected one task{f' named {task!r}' if task else ''}, "
                         f"found {len(tasks)}")
    found: dict[str, Any] = tasks[0]
    return found


# Fields the server sets on a stored job; a job sent back to register must not claim them.
_SERVER_FIELDS = ("Status", "StatusDescription", "Stable", "Version", "SubmitTime", "CreateIndex", "ModifyIndex",
                  "JobModifyIndex", "Stop", "ParentID", "Dispatched", "DispatchIdempotencyToken", "Payload")


def derive(parent: dict[str, Any], ask: Ask, task: str | None = None) -> dict[str, Any]:
    """The sized job of a registered parameterized ``parent`` (its ``GET /v1/job/:id`` body): the same job under
    :func:`sized_job_id`, ``task``'s CPU and memory replaced, meta naming the parent and its version."""
    if not parent.get("ParameterizedJob"):
        raise ValueError(f"job {parent.get('ID')!r} is not a parameterized job; only a step's job can be sized")
    job = copy.deepcopy(parent)
    for name in _SERVER_FIELDS:
        job.pop(name, None)
    job["ID"] = job["Name"] = sized_job_id(str(parent["ID"]), ask)
    resources = _task(job, task).setdefault("Resources", {})
    resources["CPU"], resources["MemoryMB"] = ask.cpu_mhz, ask.memory_mb
    if int(resources.get("MemoryMaxMB") or 0) and int(resources["MemoryMaxMB"]) < ask.memory_mb:
        resources["MemoryMaxMB"] = ask.memory_mb  # Nomad refuses memory_max below memory
    job["Meta"] = {**(job.get("Meta") or {}), META_PARENT: str(parent["ID"]),
                   META_PARENT_VERSION: str(parent.get("Version", "")),
                   META_PARENT_INDEX: str(parent.get("JobModifyIndex", ""))}
    return job


def stale(sized: dict[str, Any] | None, parent: dict[str, Any]) -> str:
    """Why the registered ``sized`` job (None: not registered) must be registered again; "" when it is current."""
    if sized is None:
        return "not registered"
    if sized.get("Stop"):
        return "stopped"
    meta = sized.get("Meta") or {}
    if meta.get(META_PARENT) != parent.get("ID"):
        return f"derived from {meta.get(META_PARENT)!r}"
    if meta.get(META_PARENT_INDEX) != str(parent.get("JobModifyIndex", "")):
        return (f"derived from version {meta.get(META_PARENT_VERSION)} of {parent.get('ID')}, which is now at "
                f"version {parent.get('Version')}")
    return ""
