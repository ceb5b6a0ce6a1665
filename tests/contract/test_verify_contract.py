"""``caravan verify`` on every store: damaged artifacts are found, quarantined, rebuilt, and the history kept."""

from __future__ import annotations

import datetime as dt
import json

import luigi
import pytest

from caravan import Address, Artifact, ArtifactTask, open_store
from caravan.artifacts import ATTEMPTS_DIR, completion_index
from caravan.cli import main
from caravan.verify import QUARANTINE_NAME, published_ids, quarantine_history, verify

from ..servers import build

DAY = dt.date(2026, 11, 22)


def publish(root: str, name: str, family: str = "Thing", files: dict[str, str] | None = None) -> Artifact:
    target = Artifact(open_store(root), Address(family, {"date": "2026-11-22", "name": name}, partition_key="date"))
    with target.writer(run_id="r") as writer:
        for file_name, text in (files or {"a.txt": "alpha", "b.txt": "beta"}).items():
            writer.write_text(file_name, text)
    return target


def damage(target: Artifact, name: str, data: bytes | None) -> None:
    key = f"{target.key}/{ATTEMPTS_DIR}/{target.manifest()['attempt']}/{name}"
    if data is None:
        target.store.delete(key)
    else:
        target.store.write(key, data)


def test_intact_artifacts_pass_and_each_kind_of_damage_is_named(store_root):
    intact = publish(store_root, "intact")
    changed = publish(store_root, "changed")
    truncated = publish(store_root, "truncated")
    missing = publish(store_root, "missing")
    damage(changed, "a.txt", b"alphx")  # same size, other bytes
    damage(truncated, "b.txt", b"be")
    damage(missing, "a.txt", None)
    found = {f.artifact_id: f.problems for f in verify(store_root)}
    assert found == {
        intact.id: [],
        changed.id: ["file 'a.txt' does not match its sha256 in the manifest"],
        truncated.id: ["file 'b.txt' has 2 bytes, the manifest says 4"],
        missing.id: ["file 'a.txt' is missing"],
    }
    assert all(Artifact(open_store(store_root), i).exists() for i in found), "verifying alone changes nothing"


def test_a_file_named_like_a_manifest_inside_an_artifact_is_not_an_artifact(store_root):
    target = publish(store_root, "nested", files={"sub/_MANIFEST.json": "{}"})
    assert list(published_ids(open_store(store_root))) == [target.id]


def test_an_unreadable_manifest_is_damage(store_root):
    target = publish(store_root, "bad-manifest")
    target.store.write(target.manifest_key, b"{not json")
    (finding,) = verify(store_root)
    assert finding.problems[0].startswith("manifest: manifest is not JSON")


def test_quarantine_moves_the_manifest_aside_and_keeps_every_record(store_root):
    target = publish(store_root, "twice")
    first_manifest = target.store.read(target.manifest_key).decode()
    damage(target, "a.txt", b"ALPHA")
    (finding,) = verify(store_root, quarantine_damaged=True)
    assert finding.quarantined
    store = open_store(store_root)
    assert not Artifact(store, target.id).exists(), "no manifest: the artifact is not complete any more"
    (record,) = quarantine_history(store, target.id)
    assert record["reason"] == "file 'a.txt' does not match its sha256 in the manifest"
    assert record["manifest"] == first_manifest and record["quarantined_at"]
    assert list(verify(store_root)) == [], "a quarantined artifact is not published"

    rebuilt = publish(store_root, "twice")  # the next run publishes again at the same address
    assert rebuilt.id == target.id and rebuilt.manifest()["attempt"] != json.loads(first_manifest)["attempt"]
    damage(rebuilt, "b.txt", b"")
    list(verify(store_root, quarantine_damaged=True))
    history = quarantine_history(store, target.id)
    assert [h["reason"] for h in history] == ["file 'a.txt' does not match its sha256 in the manifest",
                                              "file 'b.txt' has 0 bytes, the manifest says 4"]
    assert json.loads(history[1]["manifest"])["attempt"] == rebuilt.manifest()["attempt"]
    assert store.exists(f"{target.id}/{QUARANTINE_NAME}")


class Counted(ArtifactTask):
    date = luigi.DateParameter()
    tag = luigi.Parameter()

    def run(self):
        with self.output().writer() as writer:
            writer.write_text("v.txt", f"built for {self.tag}")


def test_the_next_run_rebuilds_a_quarantined_artifact(store_root):
    task = Counted(date=DAY, tag="q")
    assert build([task])
    first = task.output().manifest()["attempt"]
    damage(task.output(), "v.txt", b"tampered")
    assert build([Counted(date=DAY, tag="q")]), "nothing to do: damage alone is not noticed"
    assert Counted(date=DAY, tag="q").output().manifest()["attempt"] == first
    [finding] = verify(store_root, quarantine_damaged=True)
    assert finding.quarantined
    completion_index.forget()  # as a new process would start
    assert build([Counted(date=DAY, tag="q")])
    again = Counted(date=DAY, tag="q").output()
    assert again.manifest()["attempt"] != first and again.read_text("v.txt") == "built for q"
    assert list(verify(store_root)) and not any(f.damaged for f in verify(store_root))


def test_cli_reports_one_line_per_damaged_artifact_and_exits_non_zero(store_root, capsys):
    publish(store_root, "ok")
    bad = publish(store_root, "bad")
    other = publish(store_root, "elsewhere", family="Other")
    damage(bad, "a.txt", b"x")
    damage(other, "a.txt", b"x")
    assert main(["verify", "--root", store_root, "--family", "Thing"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"damaged {bad.uri}: file 'a.txt' has 1 bytes, the manifest says 5",
                     f"verified 2 artifacts of family Thing under {store_root}: 1 damaged"]
    assert main(["verify", "--root", store_root, "--quarantine"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == [f"quarantined {other.uri}: file 'a.txt' has 1 bytes, the manifest says 5",
                        f"quarantined {bad.uri}: file 'a.txt' has 1 bytes, the manifest says 5"]
    assert out[-1].endswith("2 damaged and quarantined (the next run rebuilds them)")
    assert main(["verify", "--root", store_root]) == 0
    assert capsys.readouterr().out.strip().endswith(": 0 damaged")


@pytest.mark.parametrize("family", ["../..", "a/b"])
def test_cli_family_stays_inside_the_root(local_root, capsys, family):
    assert main(["verify", "--root", local_root, "--family", family]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("caravan: ") and len(err.splitlines()) == 1
