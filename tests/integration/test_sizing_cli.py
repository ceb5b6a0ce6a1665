"""Sizing a step from the luigi command line, end to end on the local executor: the step runs with its ask, the
same artifact at another size is not built again, a step above its memory ask fails naming it, a bad ask is
refused before anything runs."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ..steps.tasks import Echo

ROOT = Path(__file__).resolve().parents[2]
LUIGI = str(Path(sys.executable).parent / "luigi")
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the memory watch reads /proc")


def luigi_cli(*args: str, code: int = 0) -> str:
    """`luigi --module tests.steps.tasks …` as a user runs it; its stderr."""
    env = {**os.environ, "CARAVAN_EXECUTOR": "local"}
    done = subprocess.run([LUIGI, "--module", "tests.steps.tasks", *args, "--local-scheduler", "--no-lock"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == code, done.stderr[-3000:]
    return done.stderr


def test_a_step_sized_from_the_command_line_runs_at_that_size_and_is_the_same_artifact(test_specs, local_root):
    luigi_cli("Echo", "--date", "2026-11-22", "--name", "sized", "--memory-mb", "512", "--cpu-mhz", "300")
    artifact = Echo(date=dt.date(2026, 11, 22), name="sized").output()
    assert artifact.exists(), "the address does not depend on the size"
    env = json.loads(artifact.read_text("env.json"))
    assert (env["NOMAD_MEMORY_LIMIT"], env["NOMAD_CPU_LIMIT"]) == ("512", "300")

    again = luigi_cli("Echo", "--date", "2026-11-22", "--name", "sized", "--memory-mb", "1024")
    assert "INFO: started" not in again, "the same computation at another size is not done twice"


def test_a_step_above_its_memory_ask_fails_the_run_naming_the_step_and_the_ask(test_specs, local_root):
    start = time.monotonic()
    out = luigi_cli("Sleep", "--date", "2026-11-22", "--seconds", "30", "--memory-mb", "16", code=30)
    assert time.monotonic() - start < 25, "killed, not slept through"
    assert "step sleep used" in out and "more than its memory ask of 16 MB" in out and "--memory-mb" in out


def test_an_ask_out_of_bounds_is_refused_before_anything_runs(test_specs, local_root):
    out = luigi_cli("Echo", "--date", "2026-11-22", "--name", "x", "--memory-mb", "0", code=40)
    assert "Echo --memory-mb '0': memory_mb = 0 is out of bounds: 10 to 4194304 MB" in out
    assert not Path(local_root).exists() or not any(Path(local_root).rglob("_MANIFEST.json"))
