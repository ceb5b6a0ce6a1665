"""The artifact contract on every store: staged, published once, never rewritten, verified on read."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import luigi
import pyarrow as pa
import pytest

from caravan import (
    Address,
    Artifact,
    ArtifactCorruptError,
    ArtifactExistsError,
    ArtifactNotFoundError,
    ArtifactTask,
    open_store,
)
from caravan.artifacts import ATTEMPTS_DIR, check_file_name, completion_index

from ..servers import build
from .writer_process import ADDRESS

PROJECT = Path(__file__).resolve().parents[2]


def artifact(root: str, **params: str) -> Artifact:
    return Artifact(open_store(root), Address("Thing", {"date": "2026-11-22", **params}, partition_key="date"))


def test_publish_writes_files_then_a_complete_manifest(store_root):
    target = artifact(store_root, lr="0.1")
    assert not target.exists()
    table = pa.table({"x": [1, 2, 3], "y": ["a", "b", "c"]})
    with target.writer(run_id="run-1", job={"name": "train", "spec_version": "abc"}) as writer:
        writer.write_text("model.txt", "tree\n")
        writer.write_parquet("data/train.parquet", table)
        writer.write_json("metrics.json", {"auc": 0.9})
        writer.metrics["auc"] = 0.9
        assert not target.exists(), "nothing counts before the manifest"
    assert writer.outcome == "published"
    fresh = artifact(store_root, lr="0.1")
    assert fresh.exists()
    manifest = fresh.manifest()
    assert manifest["artifact_id"] == fresh.id == "Thing/date=2026-11-22/lr=0.1--" + fresh.address.digest
    assert manifest["task_family"] == "Thing"
    assert manifest["params"] == {"date": "2026-11-22", "lr": "0.1"}
    assert manifest["run_id"] == "run-1"
    assert manifest["job"] == {"name": "train", "spec_version": "abc"}
    assert manifest["metrics"] == {"auc": 0.9}
    assert set(manifest["files"]) == {"model.txt", "data/train.parquet", "metrics.json"}
    assert manifest["files"]["model.txt"] == {"size": 5, "sha256": hashlib.sha256(b"tree\n").hexdigest()}
    assert manifest["duration_s"] >= 0 and manifest["started_at"] <= manifest["finished_at"]
    assert fresh.read_text("model.txt") == "tree\n"
    assert fresh.read_parquet("data/train.parquet").equals(table)
    assert fresh.read_json("metrics.json") == {"auc": 0.9}


def test_a_second_publish_never_replaces_the_first(store_root):
    with artifact(store_root).writer() as first:
        first.write_text("f.txt", "original")
    again = artifact(store_root).writer()
    again.write_text("f.txt", "different")
    with pytest.raises(ArtifactExistsError) as info:
        again.publish()
    assert "Thing/date=2026-11-22" in str(info.value) and store_root.rstrip("/").split("/")[-1] in str(info.value)
    assert artifact(store_root).read_text("f.txt") == "original"
    identical = artifact(store_root).writer()
    identical.write_text("f.txt", "original")
    assert identical.publish() == "already complete"
    staged = open_store(store_root).list_keys(f"{artifact(store_root).key}/{ATTEMPTS_DIR}/")
    attempts = {k.split("/")[-2] for k in staged}
    assert attempts == {first.attempt}, "losers leave no staging behind"


def test_a_failed_writer_leaves_nothing_behind(store_root):
    target = artifact(store_root)
    with pytest.raises(RuntimeError), target.writer() as writer:
        writer.write_text("half.txt", "half")
        raise RuntimeError("step crashed")
    assert not target.exists()
    assert list(open_store(store_root).list_keys(target.key + "/")) == []


def test_staged_but_unpublished_is_not_complete_and_a_later_run_publishes(store_root):
    target = artifact(store_root)
    stale = target.writer()
    stale.write_text("f.txt", "stale")
    assert not target.exists()
    with target.writer() as later:
        later.write_text("f.txt", "fresh")
    assert artifact(store_root).read_text("f.txt") == "fresh"
    keys = list(open_store(store_root).list_keys(target.key + "/"))
    assert not any(stale.attempt in k for k in keys), "the stale staging area is replaced"


def test_reads_are_verified_against_the_manifest(store_root):
    target = artifact(store_root)
    with target.writer() as writer:
        writer.write_text("f.txt", "good")
    store = open_store(store_root)
    store.write(f"{target.key}/{ATTEMPTS_DIR}/{writer.attempt}/f.txt", b"evil")
    with pytest.raises(ArtifactCorruptError, match=r"f\.txt"):
        artifact(store_root).read_text("f.txt")
    with pytest.raises(ArtifactNotFoundError, match=r"no file 'g\.txt'"):
        artifact(store_root).read_text("g.txt")


def test_a_corrupt_manifest_fails_loudly_instead_of_looking_missing(store_root):
    target = artifact(store_root)
    open_store(store_root).write(target.manifest_key, b"{not json")
    with pytest.raises(ArtifactCorruptError, match="not JSON"):
        target.exists()
    other = artifact(store_root, x="1")
    open_store(store_root).write(other.manifest_key, json.dumps({"artifact_id": "someone else", "files": {}}).encode())
    with pytest.raises(ArtifactCorruptError, match="does not describe"):
        other.manifest()


@pytest.mark.parametrize("name", ["", "../x", "a/../b", "/abs", "a//b", "_MANIFEST.json", "_attempts/x", "a\\b"])
def test_file_names_cannot_escape_or_collide(name):
    with pytest.raises(ValueError):
        check_file_name(name)


def run_writer(root: str, writer_id: str, mode: str, barrier: Path | None = None) -> subprocess.Popen[str]:
    args = [sys.executable, "-m", "tests.contract.writer_process", root, writer_id, mode]
    if barrier is not None:
        args.append(str(barrier))
    return subprocess.Popen(args, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(PROJECT)})


def test_a_writer_killed_between_staging_and_publishing_leaves_nothing_complete(store_root):
    proc = run_writer(store_root, "doomed", "die")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == -9, err
    assert out.startswith("staged")
    target = Artifact(open_store(store_root), ADDRESS)
    assert not target.exists()
    assert any("a.txt" in k for k in open_store(store_root).list_keys(target.key + "/")), "it did stage files"
    proc = run_writer(store_root, "survivor", "publish")
    out, err = proc.communicate(timeout=120)
    assert out.splitlines()[-1] == "published", err
    assert "writer survivor" in Artifact(open_store(store_root), ADDRESS).read_text("a.txt")


def test_concurrent_writers_publish_exactly_one_manifest_with_no_mixed_files(store_root, tmp_path):
    barrier = tmp_path / "go"
    procs = [run_writer(store_root, str(i), "publish", barrier) for i in range(4)]
    for proc in procs:  # wait until every writer has staged before any publishes
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("staged")
    barrier.touch()
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        outcomes.append(out.splitlines()[-1])
    assert sorted(outcomes) == ["ArtifactExistsError"] * 3 + ["published"]
    winner = str(outcomes.index("published"))
    target = Artifact(open_store(store_root), ADDRESS)
    for name in target.files():
        assert f"from writer {winner}\n" in target.read_text(name)  # read_text verifies sha256 too
    attempts = {k.split("/")[-2] for k in open_store(store_root).list_keys(f"{target.key}/{ATTEMPTS_DIR}/")
                if not k.endswith("c.txt")}
    assert attempts == {target.manifest()["attempt"]}


class Leaf(ArtifactTask):
    date = luigi.DateParameter()
    i = luigi.IntParameter()

    def run(self):
        with self.output().writer() as writer:
            writer.write_text("v.txt", str(self.i))


def test_bulk_completeness_lists_each_prefix_once(store_root):
    day = dt.date(2026, 11, 22)
    done = [Leaf(date=day, i=i) for i in range(0, 30, 3)]
    assert build(done), "every Leaf was published"
    completion_index.forget()
    store = open_store(store_root)
    store.requests.clear()
    values = [{"date": day, "i": i} for i in range(30)]
    complete = Leaf.bulk_complete(values)
    assert [v["i"] for v in complete] == list(range(0, 30, 3))
    sent = sum(store.requests.values())
    assert sent <= (12 if store_root.startswith("hdfs") else 2), store.requests
