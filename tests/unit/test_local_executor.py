"""The local executor leaves no working directory behind, however a step ends."""

from __future__ import annotations

import datetime as dt
import tempfile
from pathlib import Path

import pytest

from caravan import BackendUnavailable, StepFailed
from caravan.artifacts import Artifact
from tests.steps.tasks import Echo, Fail

DAY = dt.date(2026, 11, 22)


@pytest.fixture
def workdirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, local_root: str, test_specs: Path) -> Path:
    """Where the executor's mkdtemp makes its folders (the system temp dir, pointed into tmp_path)."""
    monkeypatch.setenv("CARAVAN_EXECUTOR", "local")
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("caravan-"))


def test_a_step_that_succeeds_or_exits_non_zero_leaves_nothing(workdirs: Path) -> None:
    Echo(date=DAY, name="ok").run()
    with pytest.raises(StepFailed, match="exited with code"):
        Fail(date=DAY, code=3).run()
    assert left_behind(workdirs) == []


def test_a_command_that_cannot_start_is_a_step_failure_naming_it_and_leaves_nothing(
        workdirs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, test_specs: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    text = (test_specs / "fail.nomad.hcl").read_text()
    (specs / "fail.nomad.hcl").write_text(text.replace('command = "python"', 'command = "/no/such/program-h7"'))
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(specs))
    with pytest.raises(StepFailed, match="could not start '/no/such/program-h7'"):
        Fail(date=DAY).run()
    assert left_behind(workdirs) == []


def test_a_store_failure_while_keeping_the_logs_leaves_nothing(workdirs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(self: Artifact, run_id: str, name: str, data: bytes) -> str:
        raise BackendUnavailable("connection refused", backend="s3")

    monkeypatch.setattr(Artifact, "write_log", unavailable)
    with pytest.raises(BackendUnavailable):
        Echo(date=DAY, name="logs-lost").run()
    assert left_behind(workdirs) == []
