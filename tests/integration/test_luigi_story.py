"""Plain `luigi --module …` shows what caravan did: steps started and finished, progress, metrics, a summary."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from caravan import progress

ROOT = Path(__file__).resolve().parents[2]
LUIGI = str(Path(sys.executable).parent / "luigi")


def luigi_cli(tmp_path: Path, *args: str, code: int = 0) -> str:
    """Run the `luigi` command as a user would, from the project folder; its stderr (where luigi logs)."""
    env = {**os.environ, "CARAVAN_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
           "CARAVAN_POINTER_ROOT": str(tmp_path / "pointers")}
    done = subprocess.run([LUIGI, *args, "--local-scheduler", "--no-lock"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == code, done.stderr[-3000:]
    return done.stderr


def write_table(path: Path, **columns: list) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=300)
    table = pa.table({"x": x, "y": (x + rng.normal(size=300) > 0).astype("int8"), **columns})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path.write_bytes(buffer.getvalue())


def test_the_luigi_cli_tells_what_each_step_did_and_ends_with_caravans_summary(tmp_path):
    out = luigi_cli(tmp_path, "--module", "pipelines.example", "Summarize", "--date", "2026-11-22")
    artifacts = (tmp_path / "artifacts").as_uri()
    assert f"INFO: started MakeNumbers -> {artifacts}/MakeNumbers/date=2026-11-22/" in out
    assert "INFO: started Summarize -> " in out
    assert "INFO: finished MakeNumbers in " in out and "(count 1000)" in out
    assert "INFO: finished Summarize in " in out and "(mean 1.0" in out
    assert "make-numbers INFO " in out, "the step's own lines are relayed as it wrote them"
    luigi_summary = out.index("===== Luigi Execution Summary =====")
    caravan_summary = out.index("===== caravan summary =====")
    assert caravan_summary > luigi_summary, "caravan's summary ends the run"
    tail = out[caravan_summary:]
    assert f"built 2, reused 0 (artifacts under {artifacts})" in tail
    assert "  built " in tail and "MakeNumbers/date=2026-11-22/count=1000--" in tail

    again = luigi_cli(tmp_path, "--module", "pipelines.example", "Summarize", "--date", "2026-11-22")
    assert "INFO: started" not in again
    assert "built 0, reused 1: nothing rebuilt" in again[again.index("===== caravan summary ====="):]


def test_luigis_log_level_still_decides(tmp_path):
    out = luigi_cli(tmp_path, "--module", "pipelines.example", "Summarize", "--date", "2026-11-22",
                    "--log-level", "WARNING")
    assert "started Summarize" not in out and "caravan summary" not in out and "make-numbers INFO" not in out
    assert (tmp_path / "artifacts" / "Summarize").is_dir()


def test_training_progress_metrics_and_unused_columns_show_on_the_cli(tmp_path):
    write_table(tmp_path / "t.parquet", note=["a", "b", "c"] * 100)
    out = luigi_cli(tmp_path, "--module", "pipelines.tabular", "TrainTabular", "--dataset", str(tmp_path / "t.parquet"),
                    "--label", "y", "--num-iterations", "20", "--early-stopping-rounds", "20")
    assert "train-lightgbm INFO iteration 2/20: valid auc" in out and "iteration 20/20" in out
    assert "prepare-dataset WARNING columns not used as features: note (string; add it to --text-columns" in out
    assert "train-lightgbm WARNING columns not used as features" in out and "note (string)" in out
    finished = next(line for line in out.splitlines() if line.startswith("INFO: finished TrainTabular"))
    assert "valid_auc 0." in finished and "best_iteration" in finished


def test_a_failed_step_is_named_with_its_reason_and_the_summary_counts_what_is_missing(tmp_path):
    write_table(tmp_path / "t.parquet")
    out = luigi_cli(tmp_path, "--module", "pipelines.tabular", "PrepareTable", "--dataset", str(tmp_path / "t.parquet"),
                    "--label", "tagret", code=30)  # luigi.cfg's [retcode] task_failed
    failed = next(line for line in out.splitlines() if line.startswith("ERROR: failed PrepareTable -> "))
    assert failed.endswith("DataCheckFailed: label column 'tagret' is not in the table (columns: ['x', 'y'])")
    assert "built 0, reused 0, NOT built 1" in out[out.index("===== caravan summary ====="):]


def test_nothing_is_added_when_logging_is_configured_otherwise():
    root, interface, caravan = logging.getLogger(), logging.getLogger("luigi-interface"), logging.getLogger("caravan")
    saved = (list(root.handlers), list(interface.handlers), list(caravan.handlers), caravan.level)
    try:
        caravan.handlers[:] = [h for h in caravan.handlers if not isinstance(h, progress.StoryHandler)]
        interface.addHandler(logging.NullHandler())  # luigi's default is there...
        root.addHandler(logging.NullHandler())  # ...but so is the user's own configuration
        assert progress.configure_for_luigi() is False
        assert not any(isinstance(h, progress.StoryHandler) for h in caravan.handlers)
    finally:
        root.handlers[:], interface.handlers[:], caravan.handlers[:] = saved[0], saved[1], saved[2]
        caravan.setLevel(saved[3])


def test_metrics_are_shown_key_ones_first():
    shown = progress.format_metrics({"rows_train": 10, "zeta": 1.5, "valid_auc": 0.76543, "model": "x/y",
                                     "flag": True})
    assert shown == "valid_auc 0.7654, rows_train 10, zeta 1.5000"
