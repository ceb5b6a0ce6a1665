"""TrainRanker --num-machines N: LightGBM's data-parallel learner over N local processes and N Nomad allocations.

The data is small (8 row groups of 1000 rows) so that each training takes well under a second; what costs is
starting the N Python processes. Determinism is checked on the model's bytes: for a fixed N, each rank reads
the same rows, LightGBM's bins and histogram reductions run in a fixed order (``deterministic``,
``force_row_wise``, one thread), and the lines that name the run's ports are left out of the saved model.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import luigi
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caravan.artifacts import ArtifactTask
from caravan.errors import StepFailed
from caravan.executors.base import reset_executors
from caravan.ml.distributed import GANGS_DIR
from pipelines.ranker import TrainRanker

DAY = dt.date(2026, 11, 22)
ROWS, GROUP_ROWS = 8000, 1000
#: Small trees and few rounds: a training is a fraction of a second once its process has started.
HYPER = {"learning_rate": 0.1, "num_leaves": 15, "num_iterations": 80, "min_data_in_leaf": 20,
         "early_stopping_rounds": 20, "feature_fraction": 1.0}


def events(rows: int, seed: int) -> pa.Table:
    """Five numeric features and a click with a learnable, partly non-linear signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 5))
    clicked = x[:, 0] + 0.7 * x[:, 1] - 0.5 * x[:, 2] * x[:, 3] + rng.normal(size=rows) > 0.3
    return pa.table({**{f"f{i}": x[:, i].astype("float32") for i in range(5)}, "clicked": clicked})


class TinyDataset(ArtifactTask):
    """A dataset artifact as prepare-dataset writes it: splits as Parquet files of fixed-size row groups."""

    rows = luigi.IntParameter(default=ROWS)

    def run(self) -> None:
        with self.output().writer() as writer:
            for split, rows, seed in (("train", int(self.rows), 1), ("valid", 3000, 2)):
                buffer = io.BytesIO()
                pq.write_table(events(rows, seed), buffer, row_group_size=GROUP_ROWS)
                writer.write_bytes(f"{split}.parquet", buffer.getvalue())


class TinyRanker(TrainRanker):
    """TrainRanker on the tiny dataset (no simulation, no text step)."""

    def requires(self) -> dict[str, Any]:  # type: ignore[override]
        return {"dataset": TinyDataset()}


def train(num_machines: int, **extra: Any) -> TinyRanker:
    dataset = TinyDataset()
    if not dataset.complete():
        dataset.run()
    # Every wait has a deadline: the step's (timeout_s) bounds the gang, the rendezvous its own.
    task = TinyRanker(date=DAY, num_machines=num_machines, rendezvous_timeout_s=extra.pop("rendezvous_timeout_s", 30),
                      timeout_s=120, **{**HYPER, **extra})
    task.run()
    return task


@pytest.fixture
def local(local_root: str, test_specs: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CARAVAN_EXECUTOR", "local")
    reset_executors()
    return local_root


@pytest.fixture(scope="module")
def nomad_double(jobspecs: Path) -> Iterator[Any]:
    from tests.doubles.nomad import NomadDouble

    double = NomadDouble(env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    double.start()
    double.load_specs(jobspecs)
    yield double
    double.stop()


@pytest.fixture
def on_nomad(local_root: str, test_specs: Path, nomad_double: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
    monkeypatch.setenv("NOMAD_ADDR", nomad_double.address)
    reset_executors()
    yield nomad_double
    reset_executors()


def client(double: Any) -> Any:
    import nomad

    return nomad.Nomad(address=double.address, timeout=10)


def published_models(root: str) -> list[str]:
    return sorted(str(p.parent.relative_to(root)) for p in Path(root).glob("TinyRanker/**/_MANIFEST.json"))


@pytest.fixture(scope="module")
def local_runs(tmp_path_factory: pytest.TempPathFactory, jobspecs: Path) -> Iterator[dict[int, dict[str, Any]]]:
    """N = 1, 2 and 3 trained locally once for the module: manifest, metrics, model bytes and the root."""
    root = str(tmp_path_factory.mktemp("local-runs") / "artifacts")
    runs: dict[int, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CARAVAN_ARTIFACT_ROOT", root)
        patch.setenv("CARAVAN_JOBSPEC_DIR", str(jobspecs))
        patch.setenv("CARAVAN_EXECUTOR", "local")
        reset_executors()
        for n in (1, 2, 3):
            artifact = train(n).output()
            runs[n] = {"manifest": artifact.manifest(), "metrics": artifact.metrics, "id": artifact.id,
                       "model": artifact.read_bytes("model.txt"), "root": root}
        reset_executors()
    yield runs


def test_n_machines_locally_train_one_model_as_good_as_one_machine(local_runs: dict[int, dict[str, Any]]) -> None:
    one_auc = local_runs[1]["metrics"]["valid_auc"]
    for n in (2, 3):
        manifest, model = local_runs[n]["manifest"], local_runs[n]["model"].decode()
        assert manifest["params"]["num_machines"] == str(n)
        layout = manifest["distributed"]
        assert layout["num_machines"] == n and layout["rows"] == ROWS
        assert [s["rows"] for s in layout["shards"]] == [[ROWS * r // n, ROWS * (r + 1) // n] for r in range(n)]
        assert abs(local_runs[n]["metrics"]["valid_auc"] - one_auc) <= 0.005, (n, local_runs[n]["metrics"], one_auc)
        assert f"[num_machines: {n}]" in model and "[machines: " not in model
    root = local_runs[1]["root"]
    assert not list(Path(root).glob(f"**/{GANGS_DIR}/**/*")), "the rendezvous folders are removed"
    # One model per training: ranks other than 0 publish nothing at all.
    assert len(published_models(root)) == 3
    assert "distributed" not in local_runs[1]["manifest"] and "num_machines" not in local_runs[1]["manifest"]["params"]


def test_on_nomad_each_rank_is_an_allocation_with_its_own_port_and_a_fixed_n_gives_the_same_model_bytes(
        local_runs: dict[int, dict[str, Any]], local_root: str, test_specs: Path, nomad_double: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
    monkeypatch.setenv("NOMAD_ADDR", nomad_double.address)
    reset_executors()
    api = client(nomad_double)
    try:
        for n in (2, 3):
            artifact = train(n).output()
            assert artifact.id == local_runs[n]["id"]
            # Another run, another executor, other ports: the same model, byte for byte.
            assert artifact.read_bytes("model.txt") == local_runs[n]["model"]
            assert artifact.manifest()["distributed"] == local_runs[n]["manifest"]["distributed"]
            children = [j for j in api.jobs.get_jobs(prefix="train-lightgbm-distributed/", meta=True)
                        if (j.get("Meta") or {}).get("caravan_artifact_id") == artifact.id]
            assert sorted(j["Meta"]["caravan_rank"] for j in children) == [str(r) for r in range(n)]
            ports = []
            for job in children:
                (stub,) = api.job.get_allocations(job["ID"])
                shared = api.allocation.get_allocation(stub["ID"])["AllocatedResources"]["Shared"]
                ports += [p["Value"] for p in shared["Ports"] if p["Label"] == "lightgbm"]
            assert len(ports) == len(set(ports)) == n
    finally:
        reset_executors()
    assert len(published_models(local_root)) == 2


def test_a_peer_that_never_starts_fails_the_step_naming_it_within_the_rendezvous_deadline(
        local_root: str, test_specs: Path, jobspecs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.doubles.nomad import NomadDouble

    # One node with room for two ranks (8192 MB each): the third waits for capacity and never starts.
    double = NomadDouble(env={"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
                         nodes=[{"cpu": 8000, "memory": 2 * 8192 + 1000}])
    double.start()
    try:
        double.load_specs(jobspecs)
        monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
        monkeypatch.setenv("NOMAD_ADDR", double.address)
        reset_executors()
        started = time.monotonic()
        with pytest.raises(StepFailed, match=r"rank \d of 3 did not register") as failure:
            train(3, rendezvous_timeout_s=4)
        assert time.monotonic() - started < 4 + 25, "failed long after the rendezvous deadline"
        api = client(double)
        children = api.jobs.get_jobs(prefix="train-lightgbm-distributed/", meta=True)
        # The rank Nomad could not place at first (an eval with FailedTGAllocs); it may run once the others end.
        never = [c["Meta"]["caravan_rank"] for c in children
                 if any(e.get("FailedTGAllocs") for e in api.job.get_evaluations(c["ID"]))]
        assert len(never) == 1, children
        assert f"missing: rank {never[0]};" in str(failure.value)
        assert not TinyRanker(date=DAY, num_machines=3, **HYPER).output().exists()
        assert all(c["Status"] == "dead" for c in api.jobs.get_jobs(prefix="train-lightgbm-distributed/")), \
            "every rank is stopped"
    finally:
        reset_executors()
        double.stop()


@pytest.mark.parametrize("executor_name", ["local", "nomad"])
def test_a_peer_killed_mid_training_fails_the_step_and_publishes_nothing(
        executor_name: str, local: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if executor_name == "nomad":
        monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
        monkeypatch.setenv("NOMAD_ADDR", request.getfixturevalue("nomad_double").address)
        reset_executors()
    # Training that would run for minutes: the kill lands while the gang trains, whenever it comes.
    endless = {"num_iterations": 100_000, "early_stopping_rounds": 100_000, "learning_rate": 0.001}
    outcome: dict[str, BaseException] = {}

    def run() -> None:
        try:
            train(3, **endless)
        except BaseException as exc:
            outcome["error"] = exc

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    registered: list[dict[str, Any]] = []
    while len(registered) < 3 and time.monotonic() < deadline and runner.is_alive():
        registered = [json.loads(p.read_text()) for p in Path(local).glob(f"**/{GANGS_DIR}/*/rank-*.json")]
        time.sleep(0.05)  # polling the rendezvous folder for a condition, with a deadline
    assert len(registered) == 3, f"the gang never formed: {outcome}"
    pids = {entry["rank"]: entry["pid"] for entry in registered}
    os.kill(pids[1], signal.SIGKILL)
    runner.join(timeout=60)
    assert not runner.is_alive(), "the gang did not stop after a peer was killed"
    error = outcome.get("error")
    assert isinstance(error, StepFailed) and "rank 1" in str(error), error
    assert not TinyRanker(date=DAY, num_machines=3, **{**HYPER, **endless}).output().exists()
    assert published_models(local) == []
    # On Nomad a stopped allocation is terminal at once (DesiredStatus stop) while its task gets SIGTERM, then
    # SIGKILL after the kill timeout: every rank's process is gone within that.
    gone_by = time.monotonic() + 15
    while any(_alive(pid) for pid in pids.values()) and time.monotonic() < gone_by:
        time.sleep(0.1)  # polling the processes for a condition, with a deadline
    assert not [pid for pid in pids.values() if _alive(pid)], "rank processes still run"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat", "rb") as handle:  # a zombie is not alive
        return handle.read().rsplit(b")", 1)[1].split()[0] != b"Z"


def test_a_second_run_of_the_same_training_on_nomad_attaches_to_the_live_gang(
        on_nomad: Any, local_root: str, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from caravan.artifacts import Artifact
    from caravan.ml.distributed import Rendezvous
    from caravan.storage import open_store

    caplog.set_level(logging.INFO, logger="caravan.executors")
    endless = {"num_iterations": 100_000, "early_stopping_rounds": 100_000, "learning_rate": 0.001}
    outcomes: dict[str, BaseException | None] = {}

    def run(name: str) -> None:
        try:
            train(2, **endless)
            outcomes[name] = None
        except BaseException as exc:
            outcomes[name] = exc

    def attached() -> int:
        return sum("already running for" in r.getMessage() for r in list(caplog.records))

    first = threading.Thread(target=run, args=("first",), daemon=True)
    first.start()
    deadline = time.monotonic() + 60
    registered: list[Path] = []
    while len(registered) < 2 and time.monotonic() < deadline and first.is_alive():
        registered = sorted(Path(local_root).glob(f"**/{GANGS_DIR}/*/rank-*.json"))
        time.sleep(0.05)  # polling the rendezvous folder for a condition, with a deadline
    assert len(registered) == 2, f"the gang never formed: {outcomes}"
    # A worker that restarts while the gang trains: it follows the gang's children, it dispatches nothing.
    second = threading.Thread(target=run, args=("second",), daemon=True)
    second.start()
    artifact_id = TinyRanker(date=DAY, num_machines=2, **{**HYPER, **endless}).output().id
    try:
        while attached() < 2 and time.monotonic() < deadline and second.is_alive():
            time.sleep(0.05)  # until each rank of the second run has attached to its child (its log says so)
    finally:
        Rendezvous(open_store(local_root), artifact_id, registered[0].parent.name).abort("test", "the test ends")
    first.join(timeout=60)
    second.join(timeout=60)
    assert not first.is_alive() and not second.is_alive()
    assert attached() == 2
    assert all(isinstance(outcomes[name], StepFailed) for name in ("first", "second")), outcomes
    children = [j for j in client(on_nomad).jobs.get_jobs(prefix="train-lightgbm-distributed/", meta=True)
                if (j.get("Meta") or {}).get("caravan_artifact_id") == artifact_id]
    assert len(children) == 2, "the second run dispatched a gang of its own"
    assert not Artifact(open_store(local_root), artifact_id).exists()
