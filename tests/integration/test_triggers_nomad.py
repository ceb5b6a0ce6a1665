"""The monitor's triggers in production: retrains dispatched through the Nomad double with the retrain token,
records written through the Consul double with the pipeline token, under production's policy files."""

from __future__ import annotations

import datetime as dt
import re
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
from ..doubles.nomad import NomadDouble

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

        # A closed day: its backfill is dispatched with the day as meta, and recorded.
        server.inject("retrain-ranker-backfill", "block")  # the child stays pending: a retrain in flight
        (outcome,) = run_triggers(report((day.isoformat(),)), TriggerSettings(), pointer=pointer,
                                  dispatcher=dispatcher)
        assert outcome.outcome == "dispatched", outcome
        assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", str(outcome.child))
        assert server.dispatch_requests[-1]["body"]["Meta"] == {"date": day.isoformat()}
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

        # Once it is gone, drift retrains through the periodic job (yesterday), as `caravan trigger retrain` does.
        admin = nomad.Nomad(address=server.address, token=management, namespace=NAMESPACE, timeout=10)
        admin.job.deregister_job(str(outcome.child))
        wait_for(lambda: dispatcher.running() == [], "no child in flight")
        server.inject("retrain-ranker", "fail")
        (retrain,) = run_triggers(report((day.isoformat(),), psi=0.9), TriggerSettings(), pointer=pointer,
                                  dispatcher=dispatcher, now=later)
        assert retrain.outcome == "dispatched" and re.fullmatch(r"retrain-ranker/periodic-\d+", str(retrain.child))

        # The serving token reads the model's keys but cannot write a trigger record.
        serving = ConsulPointer(consul.address, consul_secrets["serving"], environment=ENVIRONMENT)
        with pytest.raises(BackendRejected, match="403"):
            trigger_store(serving).create(MODEL, "new-data-2020-01-01", {"outcome": "dispatching"})
