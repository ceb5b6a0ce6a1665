"""The local executor (the default): the spec's command in a subprocess, with Nomad's environment.

The step sees what a Nomad task would: every meta key as ``NOMAD_META_<key>`` (and Nomad's
upper-cased copy), ``NOMAD_JOB_ID``-style ids, a task directory, the task's ``env`` block.
Its stdout and stderr go to files in its working directory (the step writes them itself, so they
outlive the worker) and are kept beside the artifact when it ends. How many steps run at once is
bounded by luigi's scheduler through the ``caravan_local_steps`` resource (``[resources]`` in luigi.cfg).

A step dies with its worker: on Linux it gets SIGTERM when the process that started it dies
(``PR_SET_PDEATHSIG``), even after ``kill -9``, and a luigi task process (``--workers`` > 1) gets
SIGTERM when its worker dies, which stops its step and keeps the logs. Each working directory holds a record
(``caravan-step.json``: artifact, run, worker and step process ids); before running a step the
executor reads the records it finds. A live step for the same artifact is attached to (waited for)
rather than started twice; a working directory whose worker and step are both gone has its logs
copied beside its artifact (``_logs/<its run id>/``) and is removed.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..artifacts import Artifact
from ..config import caravan, section, setting
from ..errors import StepFailed
from .base import Executor, StepRequest, StepResult, dispatch_id, tail
from .gang import slot
from .jobspec import interpolate
from .memory import MemoryWatch
from .sizing import resolve

log = logging.getLogger("caravan.executors.local")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.]")


def meta_env(meta: Mapping[str, str]) -> dict[str, str]:
    """``NOMAD_META_<key>`` variables as Nomad sets them: the key as given and upper-cased,
    characters outside ``[A-Za-z0-9_.]`` as ``_``."""
    env = {}
    for key, value in meta.items():
        safe = _UNSAFE.sub("_", key)
        env[f"NOMAD_META_{safe}"] = value
        env[f"NOMAD_META_{safe.upper()}"] = value
    return env


def worker_settings() -> dict[str, str]:
    """What the step needs to see the worker's configuration from its own working directory."""
    from ..config import artifact_root

    settings = {"CARAVAN_POINTER_ROOT": os.path.abspath(setting("CARAVAN_POINTER_ROOT", section(caravan).pointer_root))}
    root = artifact_root()
    if "://" not in root:
        settings["CARAVAN_ARTIFACT_ROOT"] = os.path.abspath(root)
    if "LUIGI_CONFIG_PATH" not in os.environ and os.path.exists("luigi.cfg"):
        settings["LUIGI_CONFIG_PATH"] = os.path.abspath("luigi.cfg")
    return settings


def port_env(labels: tuple[str, ...], host: str = "127.0.0.1") -> dict[str, str]:
    """Nomad's variables for a group's dynamic ports (``client/taskenv/env.go``: ``NOMAD_PORT_<label>``,
    ``NOMAD_IP_``, ``NOMAD_ADDR_``, ``NOMAD_HOST_PORT_``, ``NOMAD_HOST_IP_``, ``NOMAD_HOST_ADDR_``; no mapping,
    so no ``NOMAD_ALLOC_PORT_``), each label a free loopback port (the kernel's pick, so never one left in
    TIME_WAIT by an earlier step)."""
    env = {}
    for label in labels:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host, 0))
            port = str(probe.getsockname()[1])
        address = f"{host}:{port}"
        env.update({f"NOMAD_PORT_{label}": port, f"NOMAD_HOST_PORT_{label}": port, f"NOMAD_IP_{label}": host,
                    f"NOMAD_HOST_IP_{label}": host, f"NOMAD_ADDR_{label}": address,
                    f"NOMAD_HOST_ADDR_{label}": address})
    return env


RECORD = "caravan-step.json"
_PR_SET_PDEATHSIG = 1


def _prctl() -> Any:
    # Looked up once in the parent: the child between fork and exec calls it and nothing else.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _prctl()


def die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child SIGTERMed when this process dies (Linux), else None."""
    prctl = _PRCTL
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def die_with_luigi_worker() -> None:
    """In a luigi task process (``--workers`` > 1), have this process SIGTERMed when its luigi worker dies.

    The step dies with the process that started it; in a task process that is not the worker the
    user sees. Armed here, a ``kill -9`` of the worker stops the task process, which stops its step
    (caravan's SIGTERM handling) and keeps its logs. Never armed in the worker itself: luigi started
    from a shell must outlive that shell if the user wants (``nohup``).
    """
    import multiprocessing

    from luigi.worker import TaskProcess

    if _PRCTL is None or not isinstance(multiprocessing.current_process(), TaskProcess):
        return
    parent = multiprocessing.parent_process()
    _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if parent is not None and os.getppid() != parent.pid:  # the worker died before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (Linux), which tells it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19].decode() if len(fields) > 19 else None


def alive(pid: int, start_time: str | None = None) -> bool:
    """Whether process ``pid`` (started at ``start_time``, when known) still runs; a zombie does not."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if os.path.exists(f"/proc/{pid}/stat"):
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return False
        except (OSError, IndexError):
            return False
        if start_time is not None and _start_time(pid) != start_time:
            return False
    return True


def workdir_base() -> Path:
    """Where step working directories are made: ``[caravan] local_workdir`` or the system temp dir."""
    return Path(section(caravan).local_workdir or tempfile.gettempdir())


def step_records(base: Path | None = None) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Each step working directory under ``base`` with its record (those without one are skipped)."""
    base = workdir_base() if base is None else base
    try:
        folders = [p for p in base.iterdir() if p.name.startswith("caravan-") and p.is_dir()]
    except OSError:
        return
    for folder in folders:
        try:
            record = json.loads((folder / RECORD).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            yield folder, record


def _log_files(folder: Path, record: Mapping[str, Any]) -> list[tuple[str, Path]]:
    task = record.get("task", "step")
    logs = folder / "alloc" / "logs"
    return [(kind, logs / f"{task}.{kind}.0") for kind in ("stdout", "stderr")]


def recover_logs(folder: Path, record: Mapping[str, Any], note: str) -> list[str]:
    """Copy an ended step's logs beside its artifact, then remove its working directory.

    The folder is renamed first, so two workers never both recover it. Returns the logs' URIs;
    a store that refuses the copy leaves the folder where it is, for the next attempt.
    """
    from ..step import artifact_at

    claimed = folder.with_name(f"{folder.name}.recovering-{os.getpid()}")
    try:
        folder.rename(claimed)
    except OSError:
        return []  # someone else is recovering it
    uris = []
    try:
        artifact = artifact_at(str(record["artifact_uri"]), str(record["artifact_id"]))
        prefix = f"{str(record.get('alloc_id', 'unknown'))[:8]}.{record.get('task', 'step')}"
        for kind, path in _log_files(claimed, record):
            data = path.read_bytes() if path.exists() else b""
            if kind == "stderr":
                data += f"\ncaravan: {note}\n".encode()
            uris.append(artifact.write_log(str(record.get("run_id", "unknown")), f"{prefix}.{kind}.txt", data))
    except Exception as exc:  # a recovery never stops the step that found the folder
        log.warning("could not keep the logs of the step in %s (%s); left there", folder, exc)
        claimed.rename(folder)
        return []
    shutil.rmtree(claimed, ignore_errors=True)
    log.info("kept the logs of a step whose worker died: %s", ", ".join(uris))
    return uris


def _follow(path: Path, logger: logging.Logger, stop: threading.Event) -> None:
    """Copy the step's stderr file, line by line, to the worker's log while it runs: progress shows live."""
    with open(path, "rb") as source:
        pending = b""
        while True:
            chunk = source.readline()
            if chunk:
                pending += chunk
                if pending.endswith(b"\n"):
                    logger.info("%s", pending.decode("utf-8", "replace").rstrip())
                    pending = b""
                continue
            if stop.is_set():
                for line in (pending + source.read()).splitlines():
                    logger.info("%s", line.decode("utf-8", "replace").rstrip())
                return
            stop.wait(0.05)  # a file has no "more data" event; poll it


class LocalExecutor(Executor):
    """Runs each step as a child process of the luigi worker."""

    name = "local"

    def run(self, request: StepRequest) -> StepResult:
        die_with_luigi_worker()
        attached = self._recover(request)
        if attached is not None:
            return attached
        spec = request.spec
        job_id = dispatch_id(spec.name)
        alloc_id = str(uuid.uuid4())
        workdir = Path(tempfile.mkdtemp(prefix=f"caravan-{spec.name}-", dir=str(workdir_base())))
        try:
            return self._run_in(workdir, request, job_id, alloc_id)
        finally:
            # Whatever happened (failure, timeout, interrupt, a command that does not exist): the logs
            # are kept beside the artifact, the working directory is not.
            shutil.rmtree(workdir, ignore_errors=True)

    def _recover(self, request: StepRequest) -> StepResult | None:
        """Attach to a live step for this artifact; keep the logs of steps whose worker died.

        Returns the attached step's result when it published, else None (run the step).
        """
        uri = request.artifact.uri
        host = socket.gethostname()
        root = request.artifact.store.root_uri + "/"
        for folder, record in step_records():
            # Only steps of this host and this artifact root: another project's folders are not ours to touch.
            if record.get("host") != host or not str(record.get("artifact_uri", "")).startswith(root):
                continue
            step_pid, worker_pid = int(record.get("step_pid", 0)), int(record.get("worker_pid", 0))
            step_alive = alive(step_pid, record.get("step_start"))
            # A rank of a gang is a step of its own: attach only to the same rank of the same gang.
            same = (record.get("slot") or record.get("artifact_id")) == slot(request.artifact.id, request.meta)
            if step_alive and record.get("artifact_uri") == uri and same:
                return self._attach(request, folder, record)
            if not step_alive and not alive(worker_pid, record.get("worker_start")):
                recover_logs(folder, record, f"the worker (pid {worker_pid}) that ran this step died before it ended")
        return None

    def _attach(self, request: StepRequest, folder: Path, record: Mapping[str, Any]) -> StepResult | None:
        step_pid = int(record["step_pid"])
        log.info("%s: step %s (pid %s, run %s) is already running it; waiting for it instead of starting another",
                 request.artifact.uri, record.get("job_id"), step_pid, record.get("run_id"))
        deadline = time.monotonic() + request.timeout_s
        while alive(step_pid, record.get("step_start")):
            if time.monotonic() > deadline:
                raise StepFailed(f"step {request.spec.name} (pid {step_pid}, started by another worker) still runs "
                                 f"after {request.timeout_s:g} s", job_id=str(record.get("job_id", "")),
                                 artifact=request.artifact.id)
            time.sleep(0.2)  # not our child: there is nothing to wait on but its pid
        log_uris: list[str] = []
        if folder.exists() and not alive(int(record.get("worker_pid", 0)), record.get("worker_start")):
            log_uris = recover_logs(folder, record, "the worker that ran this step died; another worker waited for it")
        if not Artifact(request.artifact.store, request.artifact.id).exists():
            log.info("%s: the step it waited for published nothing; running it", request.artifact.uri)
            return None
        return StepResult(executor=self.name, job_id=str(record.get("job_id", "")),
                          alloc_ids=(str(record.get("alloc_id", "")),), exit_code=0, log_uris=log_uris,
                          details={"attached_to_pid": step_pid})

    def _run_in(self, workdir: Path, request: StepRequest, job_id: str, alloc_id: str) -> StepResult:
        spec = request.spec
        task_dir = workdir / spec.task
        for sub in ("local", "secrets", "tmp"):
            (task_dir / sub).mkdir(parents=True)
        (workdir / "alloc" / "logs").mkdir(parents=True)
        # Memory is held to the ask (memory.py); CPU is advisory here. The step sees its ask as a Nomad task does.
        ask = resolve(spec.ask, request.cpu_mhz, request.memory_mb)
        runtime = {
            "NOMAD_CPU_LIMIT": str(ask.cpu_mhz),
            "NOMAD_MEMORY_LIMIT": str(ask.memory_mb),
            "NOMAD_JOB_ID": job_id,
            "NOMAD_JOB_PARENT_ID": spec.name,
            "NOMAD_JOB_NAME": job_id,
            "NOMAD_ALLOC_ID": alloc_id,
            "NOMAD_ALLOC_NAME": f"{job_id}.{spec.group}[0]",
            "NOMAD_ALLOC_INDEX": "0",
            "NOMAD_GROUP_NAME": spec.group,
            "NOMAD_TASK_NAME": spec.task,
            "NOMAD_TASK_DIR": str(task_dir / "local"),
            "NOMAD_ALLOC_DIR": str(workdir / "alloc"),
            "NOMAD_SECRETS_DIR": str(task_dir / "secrets"),
            "NOMAD_NAMESPACE": "default",
            **port_env(spec.ports),
            **meta_env(request.meta),
        }
        env = {**os.environ, **worker_settings(), **runtime}
        env.update({k: interpolate(v, env) for k, v in spec.env.items()})
        env["CARAVAN_STEP_EXECUTOR"] = self.name
        command = spec.command_line(env, python=sys.executable)
        stdout_path = workdir / "alloc" / "logs" / f"{spec.task}.stdout.0"
        stderr_path = workdir / "alloc" / "logs" / f"{spec.task}.stderr.0"
        log.info("running %s for %s: %s", spec.name, request.artifact.id, " ".join(command))
        started = time.monotonic()
        interrupted: BaseException | None = None
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            # Its own session, so a timeout or an interrupt can stop the step and all its children; the
            # step writes its own log files, so they hold everything even if this worker dies.
            try:
                proc = subprocess.Popen(command, cwd=task_dir, env=env, stdout=out, stderr=err,
                                        start_new_session=True, preexec_fn=die_with_parent())
            except OSError as exc:  # no such program, not executable: the spec is at fault, say which
                raise StepFailed(f"step {spec.name} could not start {command[0]!r}: {exc.strerror}",
                                 job_id=job_id, alloc_ids=(alloc_id,), artifact=request.artifact.id) from exc
            self._write_record(workdir, request, job_id, alloc_id, proc.pid)
            watch = MemoryWatch(proc.pid, ask.memory_mb)  # the step is its own session (its pid is the sid)
            watch.__enter__()
            stop = threading.Event()
            relay = threading.Thread(target=_follow, args=(stderr_path, logging.getLogger(f"caravan.step.{spec.name}"),
                                                           stop), daemon=True)
            relay.start()
            try:
                code = proc.wait(timeout=request.timeout_s)
            except subprocess.TimeoutExpired:
                self._stop(proc)
                code = None
            except BaseException as exc:
                self._stop(proc)
                code, interrupted = None, exc
            finally:
                watch.__exit__()
                stop.set()
                relay.join(timeout=10)
        stdout, stderr = stdout_path.read_bytes(), stderr_path.read_bytes()
        stderr_tail = tail(stderr.decode("utf-8", "replace"))
        log_uris: list[str] = []
        log_error: Exception | None = None
        try:
            log_uris = [request.artifact.write_log(request.run_id, f"{alloc_id[:8]}.{spec.task}.{kind}.txt", data)
                        for kind, data in (("stdout", stdout), ("stderr", stderr))]
        except Exception as exc:
            if code == 0 and interrupted is None:
                raise  # the step's work is done; failing to keep its logs is the only error there is
            log_error = exc  # secondary to the step's own failure, which is what is reported
        kept = f"; keeping its logs failed too ({type(log_error).__name__}: {log_error})" if log_error else ""
        if interrupted is not None:
            if log_error is not None:
                log.warning("step %s was stopped%s", spec.name, kept)
            raise interrupted
        if watch.exceeded_mb is not None:
            raise StepFailed(f"step {spec.name} used {watch.exceeded_mb:.0f} MB, more than its memory ask of "
                             f"{ask.memory_mb} MB, and was killed as Nomad would kill it; give it more with "
                             f"--memory-mb{kept}", job_id=job_id, alloc_ids=(alloc_id,), exit_code=code,
                             stderr_tail=stderr_tail, artifact=request.artifact.id) from log_error
        if code is None:
            raise StepFailed(f"step {spec.name} timed out after {request.timeout_s:g} s and was stopped{kept}",
                             job_id=job_id, alloc_ids=(alloc_id,), stderr_tail=stderr_tail,
                             artifact=request.artifact.id) from log_error
        if code != 0:
            raise StepFailed(f"step {spec.name} exited with code {code}{kept}", job_id=job_id, alloc_ids=(alloc_id,),
                             exit_code=code, stderr_tail=stderr_tail, artifact=request.artifact.id) from log_error
        return StepResult(executor=self.name, job_id=job_id, alloc_ids=(alloc_id,), exit_code=0, log_uris=log_uris,
                          details={"duration_s": round(time.monotonic() - started, 3)})

    @staticmethod
    def _write_record(workdir: Path, request: StepRequest, job_id: str, alloc_id: str, step_pid: int) -> None:
        record = {
            "artifact_uri": request.artifact.uri, "artifact_id": request.artifact.id, "run_id": request.run_id,
            "job_id": job_id, "alloc_id": alloc_id, "task": request.spec.task, "host": socket.gethostname(),
            "worker_pid": os.getpid(), "worker_start": _start_time(os.getpid()),
            "step_pid": step_pid, "step_start": _start_time(step_pid),
            "slot": slot(request.artifact.id, request.meta),
        }
        temp = workdir / f".{RECORD}.tmp"
        temp.write_text(json.dumps(record, sort_keys=True))
        os.replace(temp, workdir / RECORD)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
        """SIGTERM the step's process group, then SIGKILL after ``grace_s`` (Nomad's kill_timeout default)."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
