"""The installable project: every package is shipped, the public API is pinned, import stays light."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

import caravan

ROOT = Path(__file__).resolve().parents[2]

PUBLIC_API = {
    "Address", "Artifact", "ArtifactCorruptError", "ArtifactError", "ArtifactExistsError",
    "ArtifactNotFoundError", "ArtifactTask", "ArtifactWriter", "BackendError", "BackendRejected",
    "BackendUnavailable", "CaravanError", "ConfigurationError", "JobSpecError", "PointerConflict", "PromotionLocked",
    "SecretAccessDenied", "SecretNotFound", "StepFailed", "Store", "complete_many", "current_run_id", "open_store",
}


def test_public_api_is_pinned():
    assert set(caravan.__all__) == PUBLIC_API
    for name in caravan.__all__:
        assert getattr(caravan, name).__doc__, f"caravan.{name} has no docstring"


def test_every_package_folder_is_listed_in_setup_cfg():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {"pipelines", "jobs"}
    for init in (ROOT / "src").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT / "src").parts))
    assert found == listed


def test_import_caravan_does_not_import_heavy_backends():
    code = ("import sys, caravan; heavy = [m for m in ('boto3', 'hdfs', 'nomad', 'consul', 'hvac', 'lightgbm', "
            "'pyarrow', 'starlette') if m in sys.modules]; print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
