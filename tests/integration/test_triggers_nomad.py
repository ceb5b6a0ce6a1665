"""The monitor's triggers in production: retrains dispatched through the Nomad double with the retrain token,
records written through the Consul double with the pipeline token, under production's policy files."""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import nomad
from caravan.cli import main as caravan_cli
from caravan.errors import BackendRejected
from caravan.monitoring.report import MonitorReport, VersionWindow
from caravan.monitoring.triggers import NomadDispatcher, TriggerSettings, run_triggers
from caravan.monitoring.triggers_store import trigger_store
from caravan.nomad_api import NomadAPI
from caravan.registry.consul import ConsulPointer
from caravan.trigger import last_complete_day

from ..acl_policies import POLICIES, token_policies
from ..doubles.consul import ConsulDouble
from ..doubles.nomad import NomadDouble, hcl_to_job

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "nomad"
ENVIRONMENT, NAMESPACE, MODEL = "production", "caravan", "ranker"
PRODUCTION = {"environment": ENVIRONMENT, "namespace": NAMESPACE, "model": MODEL}
PROD = "TrainRanker/date=2026-11-20/x--prod0001"


def secrets_and_policies(system: str, *names: str) -> tuple[dict[str, str], dict[str, list[str]]]:
    secrets = {name: f"{system}-{name}-{uuid.uuid4()}" for name in names}
    return secrets, {secret: token_policies(system, name, root=POLICIES, **PRODUCTION)
                     for name, secret in secrets.items()}


def report(days: tuple[str, ...], psi: float = 0.0) -> MonitorReport:
    version = VersionWindow(artifact_id=PROD, arm="", requests=5000, labelled=4000, rewards=400, reward_rate=0.1,
                            auc=0.75, calibration=1.0, missing_rate={}, invalid_rate={}, psi={"price": psi})
    return MonitorReport(model=MODEL, window_start="2026-11-28T12:00:00Z", window_end="2026-11-29T12:00:00Z",
                         production_artifact_id=PROD, production_gate_auc=0.75, versions=(version,),
                         closed_days=days)


def wait_for(condition, what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_triggers_with_the_production_tokens(monkeypatch, capsys):
    nomad_secrets, nomad_acl = secrets_and_policies("nomad", "release", "retrain")
    consul_secrets, consul_acl = secrets_and_policies("consul", "pipeline", "serving")
    management = f"management-{uuid.uuid4()}"
    with NomadDouble(acl_token=management, acl_policies=nomad_acl) as server, \
            ConsulDouble(acl_token=management, acl_policies=consul_acl, lock_delay_s=0.0) as consul:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        monkeypatch.setenv("NOMAD_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("NOMAD_TOKEN", nomad_secrets["release"])
        assert caravan_cli(["publish", "--jobs-dir", str(SPECS), "--version", "v1", "--only", "retrain-ranker",
                            "retrain-ranker-backfill", "monitor-ranker"]) == 0, capsys.readouterr()
        monkeypatch.setenv("NOMAD_TOKEN", nomad_secrets["retrain"])
        pointer = ConsulPointer(consul.address, consul_secrets["pipeline"], environment=ENVIRONMENT)
        dispatcher = NomadDispatcher(api=NomadAPI.from_config())
        day = last_complete_day() - dt.timedelta(days=2)

        # A closed day: its backfill is dispatched with the day and events=logged as meta, and recorded.
        server.inject("retrain-ranker-backfill", "block")  # the child stays pending: a retrain in flight
        (outcome,) = run_triggers(report((day.isoformat(),)), TriggerSettings(), pointer=pointer,
                                  dispatcher=dispatcher)
        assert outcome.outcome == "dispatched", outcome
        assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", str(outcome.child))
        assert server.dispatch_requests[-1]["body"]["Meta"] == {"date": day.isoformat(), "events": "logged"}
        record, _ = trigger_store(pointer).records(MODEL)[f"new-data-{day}"]
        assert record["child"] == outcome.child

        # Drift within the cool-down of that retrain: recorded as suppressed, nothing asked of Nomad.
        (cooling,) = run_triggers(report((day.isoformat(),), psi=0.9), TriggerSettings(), pointer=pointer,
                                  dispatcher=dispatcher)
        assert cooling.outcome == "suppressed" and "cool-down" in cooling.reason

        # After the cool-down, while the backfill is still pending: recorded, and nothing more is dispatched.
        later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=3, minutes=1)
        wait_for(lambda: dispatcher.running() == [outcome.child], "the pending child")
        before = len(server.dispatch_requests)
        (drift,) = run_triggers(report((day.isoformat(),), psi=0.9), TriggerSettings(), pointer=pointer,
                                dispatcher=dispatcher, now=later)
        assert drift.outcome == "suppressed" and f"the retrain {outcome.child} is running" in drift.reason
        assert len(server.dispatch_requests) == before

        # Once it is gone (stopped: its candidate never reached the pointer, which still names a model trained
        # up to 2026-11-20), drift retrains on the logged days up to the latest closed day: the backfill again,
        # never the periodic job, whose forced launch cannot carry events=logged.
        admin = nomad.Nomad(address=server.address, token=management, namespace=NAMESPACE, timeout=10)
        admin.job.deregister_job(str(outcome.child))
        wait_for(lambda: dispatcher.running() == [], "no child in flight")
        server.inject("retrain-ranker-backfill", "fail")
        (retrain,) = run_triggers(report((day.isoformat(),), psi=0.9), TriggerSettings(), pointer=pointer,
                                  dispatcher=dispatcher, now=later)
        assert retrain.outcome == "dispatched", retrain
        assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", str(retrain.child))
        assert server.dispatch_requests[-1]["body"]["Meta"] == {"date": day.isoformat(), "events": "logged"}
        assert not any("periodic/force" in str(r) for r in server.requests), "no forced periodic launch"

        # The serving token reads the model's keys but cannot write a trigger record.
        serving = ConsulPointer(consul.address, consul_secrets["serving"], environment=ENVIRONMENT)
        with pytest.raises(BackendRejected, match="403"):
            trigger_store(serving).create(MODEL, "new-data-2020-01-01", {"outcome": "dispatching"})


def retrain_script(spec: str) -> str:
    """The shell command of a retrain spec's task, as Nomad receives it (the double's HCL to the job JSON)."""
    job = hcl_to_job((SPECS / f"{spec}.nomad.hcl").read_text(), PRODUCTION)
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Config"]["command"] == "/bin/sh" and task["Config"]["args"][0] == "-c"
    return str(task["Config"]["args"][1])


@pytest.mark.parametrize("spec", ["retrain-ranker-backfill", "retrain-ranker"])
def test_the_events_meta_reaches_luigi_only_when_given(spec, tmp_path):
    # A stand-in `python` on PATH prints the argv the spec's shell line execs.
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "LUIGI_SCHEDULER_URL": "http://10.0.0.7:8082",
           "CARAVAN_RUN_DEADLINE": "8h", "CARAVAN_LUIGI_WORKERS": "4", "NOMAD_META_date": "2026-11-27"}
    argv = {}
    for name, extra in (("without", {}), ("empty", {"NOMAD_META_events": ""}),
                        ("logged", {"NOMAD_META_events": "logged"})):
        done = subprocess.run(["/bin/sh", "-c", retrain_script(spec)], env={**env, **extra}, capture_output=True,
                              text=True, timeout=10, check=False)
        assert done.returncode == 0, done.stderr
        argv[name] = done.stdout.splitlines()
    assert argv["without"] == argv["empty"]
    assert "--events" not in argv["without"] and argv["without"][-2:] == ["--workers", "4"]
    assert argv["logged"] == [*argv["without"], "--events", "logged"]
    assert argv["logged"][argv["logged"].index("RetrainRanker") - 2:argv["logged"].index("RetrainRanker")] == \
        ["--module", "pipelines.ranker"]


def test_a_backfill_published_without_the_events_meta_is_dispatched_with_the_date_alone(tmp_path, capsys,
                                                                                      monkeypatch):
    # The release before this one: the backfill's parameterized block without meta_optional.
    specs = tmp_path / "nomad"
    specs.mkdir()
    old = (SPECS / "retrain-ranker-backfill.nomad.hcl").read_text()
    assert '    meta_optional = ["events"]\n' in old
    (specs / "retrain-ranker-backfill.nomad.hcl").write_text(old.replace('    meta_optional = ["events"]\n', ""))
    with NomadDouble() as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        monkeypatch.delenv("NOMAD_TOKEN", raising=False)
        monkeypatch.delenv("NOMAD_NAMESPACE", raising=False)
        assert caravan_cli(["publish", "--jobs-dir", str(specs), "--version", "v0"]) == 0, capsys.readouterr()
        server.inject("retrain-ranker-backfill", "fail")
        dispatcher = NomadDispatcher(api=NomadAPI.from_config())
        child, how = dispatcher.retrain(MODEL, dt.date(2026, 11, 27))
    assert server.dispatch_requests[-1]["body"]["Meta"] == {"date": "2026-11-27"}
    assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", child)
    assert "takes no 'events' meta (publish this release)" in how and "luigi.cfg" in how
