"""The local executor (the default): the spec's command in a subprocess, with Nomad's environment.

The step sees what a Nomad task would: every meta key as ``NOMAD_META_<key>`` (and Nomad's
upper-cased copy), ``NOMAD_JOB_ID``-style ids, a task directory, the task's ``env`` block.
Its stdout and stderr are captured and kept beside the artifact. How many steps run at once is
bounded by luigi's scheduler through the ``caravan_local_steps`` resource (``[resources]`` in luigi.cfg).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from ..config import caravan, section, setting
from ..errors import StepFailed
from .base import Executor, StepRequest, StepResult, dispatch_id, tail
from .jobspec import interpolate

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


def _relay(proc: subprocess.Popen[bytes], sink: IO[bytes], logger: logging.Logger) -> None:
    """Copy the step's stderr to its log file and, line by line, to the worker's log: progress shows live."""
    if proc.stderr is None:
        return
    for line in proc.stderr:
        sink.write(line)
        sink.flush()
        logger.info("%s", line.decode("utf-8", "replace").rstrip())


class LocalExecutor(Executor):
    """Runs each step as a child process of the luigi worker."""

    name = "local"

    def run(self, request: StepRequest) -> StepResult:
        spec = request.spec
        job_id = dispatch_id(spec.name)
        alloc_id = str(uuid.uuid4())
        workdir = Path(tempfile.mkdtemp(prefix=f"caravan-{spec.name}-", dir=section(caravan).local_workdir or None))
        try:
            return self._run_in(workdir, request, job_id, alloc_id)
        finally:
            # Whatever happened (failure, timeout, interrupt, a command that does not exist): the logs
            # are kept beside the artifact, the working directory is not.
            shutil.rmtree(workdir, ignore_errors=True)

    def _run_in(self, workdir: Path, request: StepRequest, job_id: str, alloc_id: str) -> StepResult:
        spec = request.spec
        task_dir = workdir / spec.task
        for sub in ("local", "secrets", "tmp"):
            (task_dir / sub).mkdir(parents=True)
        (workdir / "alloc" / "logs").mkdir(parents=True)
        runtime = {
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
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            # Its own session, so a timeout or an interrupt can stop the step and all its children.
            try:
                proc = subprocess.Popen(command, cwd=task_dir, env=env, stdout=out, stderr=subprocess.PIPE,
                                        start_new_session=True)
            except OSError as exc:  # no such program, not executable: the spec is at fault, say which
                raise StepFailed(f"step {spec.name} could not start {command[0]!r}: {exc.strerror}",
                                 job_id=job_id, alloc_ids=(alloc_id,), artifact=request.artifact.id) from exc
            relay = threading.Thread(target=_relay, args=(proc, err, logging.getLogger(f"caravan.step.{spec.name}")),
                                     daemon=True)
            relay.start()
            try:
                code = proc.wait(timeout=request.timeout_s)
            except subprocess.TimeoutExpired:
                self._stop(proc)
                code = None
            except BaseException:
                self._stop(proc)
                raise
            finally:
                relay.join(timeout=10)
        stdout, stderr = stdout_path.read_bytes(), stderr_path.read_bytes()
        log_uris = [request.artifact.write_log(request.run_id, f"{alloc_id[:8]}.{spec.task}.{kind}.txt", data)
                    for kind, data in (("stdout", stdout), ("stderr", stderr))]
        stderr_tail = tail(stderr.decode("utf-8", "replace"))
        if code is None:
            raise StepFailed(f"step {spec.name} timed out after {request.timeout_s:g} s and was stopped",
                             job_id=job_id, alloc_ids=(alloc_id,), stderr_tail=stderr_tail,
                             artifact=request.artifact.id)
        if code != 0:
            raise StepFailed(f"step {spec.name} exited with code {code}", job_id=job_id, alloc_ids=(alloc_id,),
                             exit_code=code, stderr_tail=stderr_tail, artifact=request.artifact.id)
        return StepResult(executor=self.name, job_id=job_id, alloc_ids=(alloc_id,), exit_code=0, log_uris=log_uris,
                          details={"duration_s": round(time.monotonic() - started, 3)})

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
