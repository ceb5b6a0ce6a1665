"""Load untrusted models in a disposable process first.

LightGBM's model parser is native code: a damaged ``model.txt`` can make it abort or segfault the
whole process (``terminate called``, SIGABRT/SIGSEGV), which no ``try`` catches. So a model that
nobody has loaded before is loaded and scored on its stored sample in a disposable process first;
only a model that survives there is loaded where it matters (the server, the gate, the CLI).

:class:`Probe` keeps one warm process (Python, NumPy and LightGBM imported) with one child forked
from it, waiting: the child takes the next request, loads and scores the model, answers and exits,
and the warm process forks the next one. So every model is loaded in a fresh process that costs no
start-up on the check's path, a model that aborts kills only its child (the warm process reports
the signal and the child's last words, and nothing needs restarting), and no model leaves anything
behind for the next. A check that runs past its timeout is ended by an interval timer in its child.
Should the warm process itself die, the next check starts another. :func:`check_model` is the
one-shot form for the CLI and the gate.

The parent reads the artifact (it has the store's credentials) and sends the bytes; the probe never
touches a store and gets no secrets in its environment. Messages are JSON lines on the warm
process's stdin and on a copy of its stdout; anything else printed goes to stderr or, in a child,
to a file the warm process quotes from when the child dies.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from ..artifacts import Artifact
from .model import ModelFiles, ModelUnsound, read_model_files

__all__ = ["ModelUnsound", "Probe", "ProbeReport", "artifact_from_uri", "check_model"]

# What the child may inherit: enough to start Python and find the package, nothing that could be a secret.
_ENV_KEEP = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "PYTHONPATH", "PYTHONHASHSEED",
             "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SYSTEMROOT")
# The child's start: LightGBM imports its optional integrations (scikit-learn, pandas, dask) when they are
# installed; the probe needs none of them, and without them the child starts in about half the time and memory
# (which is what a reload waits for after a model killed the previous child).
_BOOT = ("import sys\n"
         "for name in ('sklearn', 'pandas', 'dask', 'matplotlib', 'graphviz'):\n"
         "    sys.modules[name] = None\n"
         "from caravan.serving.probe import _child\n"
         "sys.exit(_child())\n")
_STDERR_LINES = 40
_GRACE_S = 10.0
_MAX_LINE = 256 * 1024 * 1024  # an answer is small; a child writing more than this is broken


@dataclass(frozen=True)
class ProbeReport:
    """A model that survived the probe: what it is, its serving schema, and its scores on its stored sample."""

    artifact_id: str
    uri: str
    features: list[dict[str, str]]
    sample_scores: list[float]
    duration_s: float

    @property
    def names(self) -> list[str]:
        return [f["name"] for f in self.features]


def artifact_from_uri(uri: str, artifact_id: str | None = None) -> Artifact:
    """The artifact at ``uri``; its id is the URI's last three segments (Family/partition/name), or two
    when the second-to-last is not a partition, unless given."""
    from ..step import artifact_at

    if artifact_id is None:
        parts = uri.rstrip("/").split("/")
        artifact_id = "/".join(parts[-3:]) if len(parts) >= 3 and "=" in parts[-2] else "/".join(parts[-2:])
    return artifact_at(uri.rstrip("/"), artifact_id)


class Probe:
    """A warm process that checks each model in a child forked for it, so that a crash kills only that child.

    Thread-safe (one check at a time). ``start()`` spawns the warm process ahead of the first check; if it
    dies (or a check outlives its timeout even so), it is replaced at once so the next check finds one warm.
    """

    def __init__(self, *, timeout_s: float = 60.0, max_checks: int = 200) -> None:
        self.timeout_s = timeout_s
        self.max_checks = max_checks  # recycle the child now and then: native leaks stay bounded
        self.crashes = 0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        self._stderr_thread: threading.Thread | None = None
        self._buffer = b""
        self._checks = 0
        self._ids = 0

    # -- the child's lifetime -----------------------------------------------------------------------------

    def start(self) -> Probe:
        """Spawn the child now (its imports run while the caller does other things)."""
        with self._lock:
            self._ensure()
        return self

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None and self._checks < self.max_checks:
            return self._proc
        self._stop_child()
        env = {key: value for key, value in os.environ.items() if key in _ENV_KEEP}
        env["OMP_NUM_THREADS"] = "1"  # the sample is a few rows; threads only cost start-up time
        proc = subprocess.Popen([sys.executable, "-c", _BOOT], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, close_fds=True,
                                start_new_session=True)
        stderr: collections.deque[str] = collections.deque(maxlen=_STDERR_LINES)
        thread = threading.Thread(target=_drain, args=(proc.stderr, stderr), name="probe-stderr", daemon=True)
        thread.start()
        self._proc, self._stderr, self._stderr_thread = proc, stderr, thread
        self._buffer, self._checks = b"", 0
        return proc

    def _stop_child(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the warm process and a check's child, if one runs
        proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=5)

    def close(self) -> None:
        """Stop the child."""
        with self._lock:
            self._stop_child()

    def __enter__(self) -> Probe:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The child's process id (None before start)."""
        return self._proc.pid if self._proc is not None else None

    # -- checks ------------------------------------------------------------------------------------------

    def check(self, uri: str, artifact_id: str | None = None, *, timeout_s: float | None = None) -> ProbeReport:
        """Read the artifact at ``uri`` here, then load and score it in the child."""
        return self.check_files(read_model_files(artifact_from_uri(uri, artifact_id)), timeout_s=timeout_s)

    def check_files(self, files: ModelFiles, *, timeout_s: float | None = None) -> ProbeReport:
        """Load and score ``files`` in the child; raise :class:`ModelUnsound` if it fails or kills the child."""
        started = time.monotonic()
        deadline = started + (self.timeout_s if timeout_s is None else timeout_s)
        with self._lock:
            request: dict[str, Any] = {"artifact_id": files.artifact_id, "uri": files.uri, "model": files.model_text,
                                       "schema": files.schema, "sample": files.sample}
            try:
                for attempt in (1, 2):
                    proc = self._ensure()
                    self._ids += 1
                    self._checks += 1
                    request.update(id=self._ids, timeout_s=max(0.1, deadline - time.monotonic()))
                    try:
                        # The warm process ends a slow check itself; the extra seconds are for it to say so.
                        answer = self._exchange(proc, request, deadline + _GRACE_S)
                        break
                    except _ChildDied:
                        # The warm process died, not a check's child: killed from outside (the OOM killer, an
                        # operator), or the check it was given took it down after all. Once more with a new one.
                        reason = self._death(proc)
                        self._stop_child()
                        self._respawn()
                        if attempt == 2:
                            self.crashes += 1
                            raise ModelUnsound(reason, artifact_id=files.artifact_id, crashed=True) from None
            except TimeoutError:
                self._stop_child()
                self._respawn()
                raise ModelUnsound(f"loading it did not finish within {deadline - started:.0f} s",
                                   artifact_id=files.artifact_id) from None
        if answer.get("timed_out"):
            raise ModelUnsound(f"loading it did not finish within {deadline - started:.0f} s",
                               artifact_id=files.artifact_id)
        if answer.get("crashed"):
            self.crashes += 1
            raise ModelUnsound(str(answer.get("reason")), artifact_id=files.artifact_id, crashed=True)
        if not answer.get("ok"):
            raise ModelUnsound(str(answer.get("reason") or "the probe gave no reason"),
                               artifact_id=files.artifact_id)
        return ProbeReport(files.artifact_id, files.uri, list(answer["features"]),
                           [float(s) for s in answer["sample_scores"]], time.monotonic() - started)

    def _respawn(self) -> None:
        try:
            self._ensure()  # warm again for the next check
        except OSError:
            pass  # the next check tries again and reports it

    def _exchange(self, proc: subprocess.Popen[bytes], request: dict[str, Any], deadline: float) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        line = json.dumps(request, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
        except (BrokenPipeError, ConnectionResetError, ValueError):
            raise _ChildDied() from None
        while True:
            line = self._read_line(proc, deadline)
            try:
                message = json.loads(line)
            except ValueError:
                continue  # the part of an answer a dying child wrote, or an empty line before the warm process's
            # Its own id, or none: the warm process answering for a child that died (one request out at a time).
            if message.get("id") in (request["id"], None):
                return dict(message)

    def _read_line(self, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError()
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise _ChildDied()
                self._buffer += chunk
                if len(self._buffer) > _MAX_LINE:
                    raise _ChildDied()
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _death(self, proc: subprocess.Popen[bytes]) -> str:
        """Why the child died, in one line: the signal or exit code, and its last words."""
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2)  # its last lines, written as it died
        return _died(code, list(self._stderr))


class _ChildDied(Exception):
    pass


def _died(code: int, said: list[str]) -> str:
    """Why a process ended, in one line: the signal or exit code, and its last words."""
    if code < 0:
        try:
            how = f"killed the probe process ({signal.Signals(-code).name})"
        except ValueError:
            how = f"killed the probe process (signal {-code})"
    else:
        how = f"made the probe process exit with code {code}"
    last = "; ".join([line.strip() for line in said if line.strip()][-2:])
    return f"{how}: {last[:300]}" if last else how


def _drain(stream: IO[bytes] | None, lines: collections.deque[str]) -> None:
    """Keep the last lines the child wrote to stderr (reading also keeps the pipe from filling up)."""
    if stream is None:
        return
    try:
        for raw in iter(stream.readline, b""):
            lines.append(raw.decode("utf-8", "replace").rstrip()[:500])
    except (OSError, ValueError):
        pass


def check_model(uri: str, *, timeout_s: float = 60.0, artifact_id: str | None = None) -> ProbeReport:
    """Load and score the model at ``uri`` in a fresh disposable process; raise :class:`ModelUnsound` if it
    fails to load, scores its sample non-finite (or all alike), or kills that process.

    A store that cannot be reached raises its ``BackendError``: that says nothing about the model.
    """
    with Probe(timeout_s=timeout_s) as probe:
        return probe.check(uri, artifact_id)


# -- the warm process and its children -----------------------------------------------------------------------

def _child() -> int:
    """The warm process: keep one forked child waiting for the next request; report how each child ended.

    The child is forked *before* its request arrives, so a check costs no fork on its path: the waiting
    child reads the request from stdin, loads and scores the model, writes its answer and exits. When a
    child is killed instead, the warm process writes the answer for it (the parent has one request out at a
    time, so that answer needs no id). Then it forks the next child.
    """
    answers = os.dup(1)
    os.dup2(2, 1)  # anything else printed (LightGBM's log) goes to stderr, never into the answers
    sys.stdout = sys.stderr
    import lightgbm  # noqa: F401  # once, here, so that every forked check starts warm

    from .model import build_model

    # Every object so far is shared with each child: keep the collector away from them, so that a child does
    # not copy the pages it would otherwise walk (copy-on-write is what a check pays for its fresh process).
    gc.collect()
    gc.freeze()
    while True:
        with tempfile.TemporaryFile() as said:
            pid = os.fork()
            if pid == 0:  # the child: never returns into this loop
                code = 0
                try:
                    os.dup2(said.fileno(), 1)  # its last words, for the warm process to quote
                    os.dup2(said.fileno(), 2)
                    code = _serve_one(answers, build_model)
                except BaseException:
                    code = 1
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            if code == _NO_MORE_REQUESTS:
                return 0
            if code != 0:
                said.seek(0)
                outcome = _outcome(code, said.read()[-4000:].decode("utf-8", "replace").splitlines())
                # A newline first: it ends whatever part of an answer the child may have written as it died.
                os.write(answers, b"\n" + json.dumps(outcome, ensure_ascii=True).encode() + b"\n")


_NO_MORE_REQUESTS = 3  # a child's exit code: stdin closed, the parent is done


def _serve_one(answers: int, build: Any) -> int:
    """In a forked child: read one request line from stdin, check it under a timer, write the answer."""
    chunks = []
    while True:  # the parent sends one line and waits for its answer, so no read takes the next request's bytes
        chunk = os.read(0, 1 << 20)
        if not chunk:
            return _NO_MORE_REQUESTS
        chunks.append(chunk)
        if chunk.endswith(b"\n"):
            break
    request = json.loads(b"".join(chunks))
    answer = _timed_check(request, build)
    answer["id"] = request.get("id")
    data = json.dumps(answer, ensure_ascii=True, separators=(",", ":")).encode() + b"\n"
    while data:
        data = data[os.write(answers, data):]
    return 0


def _timed_check(request: dict[str, Any], build: Any) -> dict[str, Any]:
    """The check, with an interval timer that kills this process (SIGALRM) if it runs past its timeout."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, float(request.get("timeout_s") or 60.0))
    try:
        return _check(request, build)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _outcome(code: int, said: list[str]) -> dict[str, Any]:
    """The answer for a child that ended without giving one."""
    if code == -signal.SIGALRM:
        return {"ok": False, "timed_out": True}
    return {"ok": False, "crashed": True, "reason": _died(code, said)}


def _check(request: dict[str, Any], build: Any) -> dict[str, Any]:
    try:
        files = ModelFiles(str(request["artifact_id"]), str(request["uri"]), str(request["model"]),
                           request["schema"], request.get("sample"))
        model, scores = build(files)
        return {"ok": True, "features": [{"name": f.name, "type": f.type} for f in model.features],
                "sample_scores": scores}
    except ModelUnsound as exc:
        return {"ok": False, "reason": exc.reason}
    except Exception as exc:  # whatever the loader raises is a reason to refuse the model, reported in one line
        return {"ok": False, "reason": f"{type(exc).__name__}: {str(exc)[:500]}"}


if __name__ == "__main__":
    sys.exit(_child())
