"""The README works as written: its shell blocks marked ``<!-- readme-test: run -->`` run, in order, in a fresh
copy of the project (the tracked files, as a clone has them) with the project's virtualenv, and exit 0.

Blocks that need a cluster, a bucket or real data are not marked; the marked ones use the embedded defaults
(local executor, local store, file pointer, luigi's local scheduler) with small parameters.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
MARK = "<!-- readme-test: run"
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def marked_blocks(text: str) -> list[str]:
    """The code of each fenced block whose previous non-blank line is the run mark."""
    blocks = []
    for match in _BLOCK.finditer(text):
        before = [line for line in text[: match.start()].splitlines() if line.strip()]
        if before and before[-1].strip().startswith(MARK):
            assert match.group(1) in ("sh", "bash", ""), f"a marked block must be shell, not {match.group(1)!r}"
            blocks.append(match.group(2))
    return blocks


def test_marked_blocks_are_found_and_only_those():
    text = f"x\n{MARK} -->\n```sh\necho one\n```\n\n```sh\necho two\n```\n{MARK} -->\n\n```sh\necho three\n```\n"
    assert marked_blocks(text) == ["echo one\n", "echo three\n"]
    readme = marked_blocks((ROOT / "README.md").read_text())
    assert readme, "the README marks the blocks a new user runs first"
    assert all(". .venv/bin/activate" in block or ".venv/bin/" in block for block in readme), \
        "each marked block activates the virtualenv (or names .venv/bin/…): a new shell has neither on its PATH"


def fresh_copy(target: Path) -> Path:
    """The project's tracked files (what a clone has) under ``target``, with the project's virtualenv as .venv."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(source.read_bytes())
    (target / ".venv").symlink_to(VENV, target_is_directory=True)
    return target


def test_the_readme_commands_run_as_written(tmp_path):
    blocks = marked_blocks((ROOT / "README.md").read_text())
    project = fresh_copy(tmp_path / "caravan")
    # A new user's shell: no caravan settings, no virtualenv on the PATH.
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("CARAVAN_", "LUIGI_CONFIG", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if p and Path(p).resolve() != (VENV / "bin").resolve())
    for number, block in enumerate(blocks, 1):
        done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", block], cwd=project, env=env,
                              capture_output=True, text=True, timeout=240, check=False)
        assert done.returncode == 0, f"README block {number} failed:\n{block}\n{done.stdout[-3000:]}\n" \
                                     f"{done.stderr[-3000:]}"
        assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert (project / ".caravan" / "artifacts").is_dir(), "the artifacts are in the copy, under its luigi.cfg"
