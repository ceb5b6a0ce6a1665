"""The probe: untrusted models are loaded in a disposable process, and one that kills it is reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from caravan.serving.model import ModelFiles
from caravan.serving.probe import ModelUnsound, Probe, check_model

from ..badmodels import CRASHERS, FEATURES, crashing_model_text, model_text, publish_model

SAMPLE = [{"price": 1.0 + i, "position": i % 5, "popular": i % 2 == 0} for i in range(8)]


@pytest.fixture(scope="module")
def good_text() -> str:
    return model_text(1)


def files(text: str, artifact_id: str = "ServedModel/x") -> ModelFiles:
    return ModelFiles(artifact_id, f"file:///store/{artifact_id}", text, {"features": FEATURES}, SAMPLE)


@pytest.fixture(scope="module")
def probe():
    with Probe(timeout_s=60) as warm:
        yield warm


def test_every_crashing_variant_really_kills_a_process(good_text, tmp_path):
    """Without the probe these files take the loading process down: no try/except could have saved it.

    One interpreter imports LightGBM, then forks one child per variant (cheaper than an interpreter each)."""
    paths = {}
    for name in CRASHERS:
        paths[name] = str(tmp_path / f"{name}.txt")
        Path(paths[name]).write_text(crashing_model_text(good_text, name))
    code = """
import json, os, sys
import lightgbm, numpy
signals = {}
for name, path in json.loads(sys.argv[1]).items():
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        lightgbm.Booster(model_file=path).predict(numpy.ones((4, 3)))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    signals[name] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
print(json.dumps(signals))
"""
    done = subprocess.run([sys.executable, "-c", code, json.dumps(paths)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"}, check=True)
    signals = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(signals) == set(CRASHERS)
    assert all(signals.values()), f"not killed by a signal: {signals}"


def test_a_sound_model_passes_with_its_schema_and_sample_scores(probe, good_text):
    report = probe.check_files(files(good_text))
    assert report.features == FEATURES
    assert len(report.sample_scores) == len(SAMPLE)
    assert all(0 < score < 1 for score in report.sample_scores)


def test_a_model_that_kills_its_check_is_unsound_and_the_probe_goes_on(probe, good_text):
    before, pid = probe.crashes, probe.pid
    with pytest.raises(ModelUnsound) as caught:
        probe.check_files(files(crashing_model_text(good_text), "ServedModel/crash"))
    assert caught.value.crashed
    assert "SIGABRT" in caught.value.reason and "terminate called" in caught.value.reason, caught.value.reason
    assert caught.value.artifact_id == "ServedModel/crash" and "ServedModel/crash" in str(caught.value)
    assert probe.crashes == before + 1
    assert probe.pid == pid, "only the check's own child died: the warm process stays"
    assert probe.check_files(files(good_text)).sample_scores  # and it works


@pytest.mark.parametrize(("schema", "says"), [(FEATURES, "LightGBMError"), (FEATURES[:2], "features.json lists 2")])
def test_a_model_that_fails_cleanly_is_unsound_without_a_crash(probe, good_text, schema, says):
    text = "this is not a model\n" if says == "LightGBMError" else good_text
    pid = probe.pid
    with pytest.raises(ModelUnsound) as caught:
        probe.check_files(ModelFiles("ServedModel/x", "file:///x", text, {"features": schema}, SAMPLE))
    assert not caught.value.crashed and says in caught.value.reason, caught.value.reason
    assert probe.pid == pid, "a clean failure keeps the warm process"


def test_check_model_reads_the_artifact_and_refuses_a_crasher(local_root):
    good, bad = publish_model(local_root, 1), publish_model(local_root, 2, crash="num_leaves_zero")
    report = check_model(good.uri)
    assert report.artifact_id == good.id and report.uri == good.uri and report.names == [f["name"] for f in FEATURES]
    with pytest.raises(ModelUnsound) as caught:
        check_model(bad.uri, timeout_s=60)
    assert caught.value.crashed and "killed the probe process" in caught.value.reason, caught.value.reason


def test_a_missing_model_file_is_unsound(local_root):
    from caravan import Address, Artifact, open_store

    artifact = Artifact(open_store(local_root), Address("ServedModel", {"empty": "yes"}))
    with artifact.writer() as writer:
        writer.write_json("features.json", {"features": FEATURES})
    with pytest.raises(ModelUnsound, match=r"model\.txt"):
        check_model(artifact.uri)


def test_the_probe_process_gets_no_secrets(probe, monkeypatch, good_text):
    """The child runs untrusted bytes: it inherits no token or key from the server's environment."""
    monkeypatch.setenv("VAULT_TOKEN", "s.secret-token")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-key")
    with Probe() as fresh:
        fresh.check_files(files(good_text))
        environ = (open(f"/proc/{fresh.pid}/environ", "rb").read() if os.path.exists(f"/proc/{fresh.pid}/environ")
                   else b"")
    assert environ, "no /proc on this machine"
    assert b"secret" not in environ and b"VAULT_TOKEN" not in environ
    assert json.dumps(FEATURES)  # the schema travels as JSON: keep it JSON-able


def test_a_check_that_hangs_is_ended_by_its_timer():
    """A check's interval timer ends a load that never returns (LightGBM cannot be made to hang on purpose, so
    a stand-in loader sleeps, in a child forked here), and the warm process reports it as a timeout."""
    import signal
    import time

    from caravan.serving.probe import _outcome, _timed_check

    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _timed_check({"artifact_id": "x", "uri": "u", "model": "", "schema": {}, "timeout_s": 0.3},
                         lambda files: time.sleep(30))
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    assert code == -signal.SIGALRM and time.monotonic() - started < 10
    assert _outcome(code, []) == {"ok": False, "timed_out": True}
    assert _outcome(-signal.SIGSEGV, ["[LightGBM] [Warning] x", ""])["reason"] == \
        "killed the probe process (SIGSEGV): [LightGBM] [Warning] x"


def test_a_dead_warm_process_is_replaced_at_the_next_check(good_text):
    import signal

    with Probe() as fresh:
        fresh.check_files(files(good_text))
        first = fresh.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert fresh.check_files(files(good_text)).sample_scores
        assert fresh.pid != first
