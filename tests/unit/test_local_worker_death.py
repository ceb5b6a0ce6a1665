"""A local step never outlives its worker unseen, never runs twice, and its logs are kept.

``kill -9`` of a luigi worker running a local step: the step gets SIGTERM (PR_SET_PDEATHSIG) and is
gone; the next run on the same artifact root copies its logs beside its artifact. Two runs of one
artifact at once: the second waits for the first's step instead of starting another. A step that
fails on a full disk is reported with its own error; the log copy failing too is mentioned after.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import os
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from caravan import Artifact, StepFailed, open_store
from caravan.artifacts import LOGS_DIR
from caravan.executors.local import alive, step_records
from tests.steps.tasks import Echo, Sleep

from ..servers import poll_until

ROOT = Path(__file__).resolve().parents[2]
DAY = dt.date(2026, 11, 22)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


@pytest.fixture
def workdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_root: str, test_specs: Path) -> Path:
    """Step working directories go here, for this process and for the luigi processes it starts."""
    monkeypatch.setenv("CARAVAN_EXECUTOR", "local")
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    monkeypatch.setenv("TMPDIR", str(folder))
    return folder


def logs_of(root: str, artifact_id: str, run_id: str) -> dict[str, bytes]:
    store = open_store(root)
    prefix = f"{artifact_id}/{LOGS_DIR}/{run_id}/"
    return {key[len(prefix):]: store.read(key) for key in store.list_keys(prefix)}


@pytest.mark.parametrize("workers", [1, 2])
def test_a_step_dies_with_its_killed_worker_and_its_logs_are_kept(workdirs: Path, local_root: str,
                                                                  workers: int) -> None:
    # One worker runs the task in its own process; two run it in a luigi task process it forked.
    run_id = f"killed-{uuid.uuid4().hex[:6]}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CARAVAN_RUN_ID": run_id}
    worker = subprocess.Popen([sys.executable, "-m", "luigi", "--module", "tests.steps.tasks", "Sleep",
                               "--date", DAY.isoformat(), "--seconds", "120", "--local-scheduler", "--no-lock",
                               "--workers", str(workers)],
                              cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              start_new_session=True)
    records: list[dict[str, Any]] = []

    def step_sleeping() -> bool:
        assert worker.poll() is None, f"the worker exited first: {worker.communicate()[1].decode()[-2000:]}"
        records[:] = [r for folder, r in step_records(workdirs)
                      if b"sleeping" in (folder / "alloc" / "logs" / f"{r['task']}.stderr.0").read_bytes()]
        return bool(records)

    try:
        poll_until(step_sleeping, 60, "the worker's step running")
        (record,) = records
        assert (record["worker_pid"] == worker.pid) == (workers == 1)
        assert alive(record["step_pid"], record["step_start"])
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        poll_until(lambda: not alive(record["step_pid"], record["step_start"]), 10, "the step gone after its worker")
        poll_until(lambda: not alive(record["worker_pid"], record["worker_start"]), 10, "the task process gone")
    finally:
        # A failed run must leave nothing behind: the step (a session of its own) and the worker's group (its
        # task process too); before reading the worker's stderr, which they hold open.
        for record in records:
            if alive(record["step_pid"], record["step_start"]):
                os.killpg(record["step_pid"], signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        worker_stderr = worker.communicate()[1].decode(errors="replace")
    sleep_id = Sleep(date=DAY, seconds=120).output().id
    if workers == 1:
        assert logs_of(local_root, sleep_id, run_id) == {}, "nothing kept them yet: the worker died"
        Echo(date=DAY, name="next-run").run()  # any later local step on this root recovers them
    kept = logs_of(local_root, sleep_id, run_id)
    stderrs = [data for name, data in kept.items() if name.endswith(".stderr.txt")]
    assert len(stderrs) == 1, (f"kept {sorted(kept)}; step folders left {[str(f) for f, _ in step_records(workdirs)]}; "
                               f"the worker said: {worker_stderr[-3000:]}")
    (stderr,) = stderrs
    assert b"sleep step: sleeping 120" in stderr
    if workers == 1:
        assert f"the worker (pid {worker.pid}) that ran this step died".encode() in stderr
    assert list(step_records(workdirs)) == [], "the orphan's working directory is removed once its logs are kept"
    assert not Artifact(open_store(local_root), sleep_id).exists()


def test_a_second_run_of_the_same_artifact_waits_for_the_running_step(workdirs: Path, local_root: str) -> None:
    seconds = 1.5 + uuid.uuid4().int % 1000 / 1e6  # a fresh artifact each run
    outcome: list[BaseException | None] = []

    def first() -> None:
        try:
            Sleep(date=DAY, seconds=seconds).run()
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        poll_until(lambda: any(alive(r["step_pid"], r["step_start"]) for _, r in step_records(workdirs)), 30,
                   "the first run's step started")
        Sleep(date=DAY, seconds=seconds).run()  # must attach, not start a second step
    finally:
        thread.join(timeout=60)
    assert outcome == [None]
    target = Sleep(date=DAY, seconds=seconds).output()
    assert target.exists()
    store = open_store(local_root)
    logs = list(store.list_keys(f"{target.id}/{LOGS_DIR}/"))
    assert len(logs) == 2, f"one step ran (stdout and stderr kept once), not two: {logs}"


def test_on_a_full_disk_the_step_error_is_reported_and_the_failed_log_copy_after_it(
        workdirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        monkeypatch.setenv("CARAVAN_ARTIFACT_ROOT", str(mount / "artifacts"))
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        for size in (65536, 4096, 1):
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
        os.close(fd)
        with pytest.raises(StepFailed) as raised:
            Echo(date=DAY, name="no-space").run()
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
    message = str(raised.value)
    first_line = message.splitlines()[0]
    assert first_line.startswith("step echo exited with code 1; keeping its logs failed too (OSError: [Errno 28]")
    assert "No space left on device" in raised.value.stderr_tail, "the step's own error"
    assert isinstance(raised.value.__cause__, OSError) and raised.value.__cause__.errno == errno.ENOSPC
