"""The local executor holds a step to its memory ask as a Nomad client would, and tells the step its ask."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time

import pytest

from caravan import StepFailed
from caravan.executors.memory import MemoryWatch, session_rss_mb

from ..steps.tasks import Echo, Sleep

DAY = dt.date(2026, 11, 22)
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the watch reads /proc")


@pytest.fixture(autouse=True)
def _local(test_specs, local_root, monkeypatch):
    monkeypatch.setenv("CARAVAN_EXECUTOR", "local")


def test_a_step_above_its_memory_ask_is_killed_with_an_error_naming_it_and_the_ask():
    task = Sleep(date=DAY, seconds=30.0, memory_mb=16)  # a Python step with caravan imported holds ~40 MB
    start = time.monotonic()
    with pytest.raises(StepFailed, match=r"step sleep used [0-9]+ MB, more than its memory ask of 16 MB, and was "
                                         r"killed .*--memory-mb") as info:
        task.run()
    assert time.monotonic() - start < 10, "killed at once, not after the step's 30 s"
    assert info.value.exit_code == -9, "SIGKILL, as the kernel's OOM killer sends"
    assert "Sleep/date=2026-11-22" in info.value.artifact
    assert not task.output().exists()


def test_a_step_within_its_ask_runs_and_sees_the_ask_as_nomad_would_tell_it():
    task = Echo(date=DAY, name="sized", memory_mb=512, cpu_mhz=300)
    task.run()
    env = json.loads(task.output().read_text("env.json"))
    assert (env["NOMAD_MEMORY_LIMIT"], env["NOMAD_CPU_LIMIT"]) == ("512", "300")
    default = Echo(date=DAY, name="default")
    default.run()
    env = json.loads(default.output().read_text("env.json"))
    assert (env["NOMAD_MEMORY_LIMIT"], env["NOMAD_CPU_LIMIT"]) == ("256", "200"), "the spec's resources"


def test_the_watch_counts_every_process_of_the_session():
    # A parent that starts a child holding ~60 MB: the session's resident memory includes the child's.
    code = ("import subprocess, sys; subprocess.run([sys.executable, '-c', "
            "'import time; b = bytearray(60 * 1024 * 1024); time.sleep(30)'])")
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        with MemoryWatch(proc.pid, 50, interval_s=0.05) as watch:
            proc.wait(timeout=20)
        assert watch.exceeded_mb is not None and watch.exceeded_mb > 50
        assert proc.returncode == -9
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()


def test_the_session_rss_of_nothing_is_zero():
    assert session_rss_mb(2**22 + 12345) == 0.0
