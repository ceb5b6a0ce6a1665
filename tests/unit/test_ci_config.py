"""CI configuration is valid before CI ever sees it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gitlab_ci_validates_against_gitlabs_schema():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe, "check-jsonschema is a test dependency"
    result = subprocess.run([exe, "--builtin-schema", "vendor.gitlab-ci", str(ROOT / ".gitlab-ci.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_entry_point_runs_make_test_and_fails_on_failure():
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert "make test" in script
    assert "|| true" not in script
