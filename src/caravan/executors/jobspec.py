"""Read ``nomad/<job>.nomad.hcl`` and hold a step to caravan's job contract before anything runs.

A step's spec is a batch job with a ``parameterized`` block (``payload = "forbidden"``: inputs
travel only as meta), exactly one group with one task, and a task ``config`` whose ``command``
and ``args`` run the step. The local executor runs that same command; Nomad runs it in the image.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import caravan, section, setting
from ..errors import JobSpecError
from .sizing import NOMAD_DEFAULT_CPU_MHZ, NOMAD_DEFAULT_MEMORY_MB, Ask

#: The meta keys every caravan step receives (see caravan.step for what each holds).
CONTRACT_META = (
    "caravan_output",
    "caravan_artifact_id",
    "caravan_identity",
    "caravan_inputs",
    "caravan_params",
    "caravan_run_id",
    "caravan_job",
)
_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*)\}")


def plain_hcl(value: Any) -> Any:
    """python-hcl2 keeps string quotes (``'"batch"'``) and adds ``__`` keys (block marks, comments): drop both."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [plain_hcl(v) for v in value]
    if isinstance(value, dict):
        return {plain_hcl(k): plain_hcl(v) for k, v in value.items() if not k.startswith("__")}
    return value


def _blocks(body: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    found = body.get(name) or []
    return [b for b in found if isinstance(b, dict)]


def labelled_blocks(body: Mapping[str, Any], name: str) -> list[tuple[str, dict[str, Any]]]:
    """Labelled blocks (``job "x" {}``, ``variable "v" {}``) of a :func:`plain_hcl` tree as (label, body) pairs."""
    return [(label, inner) for block in _blocks(body, name) for label, inner in block.items()]


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Replace ``${NAME}`` with ``env[NAME]`` as Nomad does for runtime variables; leave others as they are."""
    return _INTERPOLATION.sub(lambda m: env.get(m.group(1), m.group(0)), value)


@dataclass(frozen=True)
class JobSpec:
    """What caravan needs from one step's job spec."""

    name: str
    path: Path
    sha256: str
    payload: str
    meta_required: tuple[str, ...]
    meta_optional: tuple[str, ...]
    group: str
    task: str
    driver: str
    command: str
    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    #: Labels of the group's network ports (``network { port "x" {} }``): the task gets ``NOMAD_PORT_x`` and kin.
    ports: tuple[str, ...] = ()
    #: The task's resources stanza (variables at their defaults; Nomad's defaults where it says nothing).
    ask: Ask = field(default_factory=lambda: Ask(NOMAD_DEFAULT_CPU_MHZ, NOMAD_DEFAULT_MEMORY_MB))

    def check_meta(self, meta: Mapping[str, str]) -> None:
        """Refuse, before any dispatch, meta that Nomad would refuse or that the contract lacks."""
        allowed = set(self.meta_required) | set(self.meta_optional)
        unknown = sorted(set(meta) - allowed)
        missing = sorted(set(self.meta_required) - set(meta))
        problems = []
        if unknown:
            problems.append(f"meta keys the spec does not allow: {unknown}")
        if missing:
            problems.append(f"required meta keys not sent: {missing}")
        not_strings = sorted(k for k, v in meta.items() if not isinstance(v, str))
        if not_strings:
            problems.append(f"meta values must be strings: {not_strings}")
        if problems:
            raise JobSpecError(f"job {self.name!r} ({self.path}): " + "; ".join(problems))

    def command_line(self, env: Mapping[str, str], python: str) -> list[str]:
        """The task's command with runtime variables filled in; ``python`` stands for the image's interpreter."""
        command = python if self.command in ("python", "python3") else interpolate(self.command, env)
        return [command, *(interpolate(arg, env) for arg in self.args)]


def jobspec_dir() -> Path:
    """Where the specs live: ``CARAVAN_JOBSPEC_DIR``, ``[caravan] jobspec_dir``, else ``./nomad`` or the project's."""
    configured = setting("CARAVAN_JOBSPEC_DIR", section(caravan).jobspec_dir)
    if configured:
        return Path(configured)
    if Path("nomad").is_dir():
        return Path("nomad")
    import jobs  # the project template installs jobs/ beside nomad/

    return Path(jobs.__file__).resolve().parent.parent / "nomad"


_cache: dict[tuple[str, float], JobSpec] = {}
_lock = threading.Lock()


def load_spec(job: str, directory: str | os.PathLike[str] | None = None) -> JobSpec:
    """Parse and check ``<directory>/<job>.nomad.hcl`` (cached while the file is unchanged)."""
    path = Path(directory) if directory is not None else jobspec_dir()
    path = (path / f"{job}.nomad.hcl").resolve()
    try:
        stamp = path.stat().st_mtime
    except FileNotFoundError:
        raise JobSpecError(f"job {job!r}: no spec at {path}") from None
    with _lock:
        cached = _cache.get((str(path), stamp))
    if cached is None:
        cached = parse_spec(job, path)
        with _lock:
            _cache[(str(path), stamp)] = cached
    return cached


def parse_spec(job: str, path: Path) -> JobSpec:
    """Parse one spec file and check it against the job contract; every problem names the file."""
    import hcl2

    text = path.read_text()
    try:
        tree = plain_hcl(hcl2.loads(text))
    except Exception as exc:  # python-hcl2 raises lark's many exception types
        raise JobSpecError(f"job {job!r}: {path} is not valid HCL: {exc}") from exc

    def fail(problem: str) -> JobSpecError:
        return JobSpecError(f"job {job!r} ({path}): {problem}")

    jobs = labelled_blocks(tree, "job")
    if len(jobs) != 1:
        raise fail(f"expected exactly one job block, found {len(jobs)}")
    name, body = jobs[0]
    if name != job:
        raise fail(f"the job block is named {name!r}; it must match the file name")
    if body.get("type") != "batch":
        raise fail(f'type is {body.get("type")!r}; a step must be type = "batch"')
    parameterized = _blocks(body, "parameterized")
    if len(parameterized) != 1:
        raise fail("a step must have one parameterized block")
    params = parameterized[0]
    payload = params.get("payload", "optional")
    if payload != "forbidden":
        raise fail(f'parameterized.payload is {payload!r}; steps take inputs as meta only: payload = "forbidden"')
    required = tuple(params.get("meta_required") or ())
    optional = tuple(params.get("meta_optional") or ())
    missing = sorted(set(CONTRACT_META) - set(required))
    if missing:
        raise fail(f"parameterized.meta_required lacks the contract's keys {missing}")
    if set(required) & set(optional):
        raise fail(f"meta keys both required and optional: {sorted(set(required) & set(optional))}")
    groups = labelled_blocks(body, "group")
    if len(groups) != 1:
        raise fail(f"a step has exactly one group, found {len(groups)}")
    group, group_body = groups[0]
    tasks = labelled_blocks(group_body, "task")
    if len(tasks) != 1:
        raise fail(f"a step's group has exactly one task, found {len(tasks)}")
    task, task_body = tasks[0]
    config = (_blocks(task_body, "config") or [{}])[0]
    command = config.get("command")
    if not isinstance(command, str) or not command:
        raise fail(f"task {task!r} has no config.command")
    args = config.get("args") or []
    try:
        ask = _resources(tree, task_body)
    except ValueError as exc:
        raise fail(f"task {task!r} resources: {exc}") from None
    ports = tuple(label for network in _blocks(group_body, "network") for label, _ in labelled_blocks(network, "port"))
    env: dict[str, str] = {}
    for block in _blocks(task_body, "env"):
        env.update({str(k): str(v) for k, v in block.items()})
    return JobSpec(
        name=job,
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        payload=payload,
        meta_required=required,
        meta_optional=optional,
        group=group,
        task=task,
        driver=str(task_body.get("driver", "")),
        command=command,
        args=tuple(str(a) for a in args),
        env=env,
        ask=ask,
        ports=ports,
    )


_VARIABLE = re.compile(r"\$\{var\.([A-Za-z_][A-Za-z0-9_-]*)\}")


def _resources(tree: Mapping[str, Any], task_body: Mapping[str, Any]) -> Ask:
    """The task's CPU and memory: literals, or ``var.x`` at the variable's default (what ``caravan publish``
    registers unless a ``--var`` overrides it)."""
    stanza = (_blocks(task_body, "resources") or [{}])[0]
    defaults = {name: body.get("default") for name, body in labelled_blocks(tree, "variable")}

    def value(key: str, fallback: int) -> int:
        raw = stanza.get(key, fallback)
        found = _VARIABLE.fullmatch(raw) if isinstance(raw, str) else None
        if found:
            if defaults.get(found.group(1)) is None:
                raise ValueError(f"{key} = var.{found.group(1)}, a variable without a default")
            raw = defaults[found.group(1)]
        if isinstance(raw, float) and raw.is_integer():
            raw = int(raw)
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise ValueError(f"{key} = {raw!r} is not a whole number")
        return raw

    return Ask(value("cpu", NOMAD_DEFAULT_CPU_MHZ), value("memory", NOMAD_DEFAULT_MEMORY_MB))
