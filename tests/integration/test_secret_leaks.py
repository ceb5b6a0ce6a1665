"""No secret leaks: a whole retraining run through Nomad, Consul and S3 with every credential from Vault.

Each credential is a unique marker, and each is needed for real: the Nomad and Consul doubles
enforce their ACL tokens, the steps get the S3 keys from the job's ``vault``/``template`` blocks
(rendered by the Nomad double from a real OpenBao), and the luigi worker logs in to OpenBao with
AppRole. Afterwards every place a secret must never reach is searched for every marker: each
object in the bucket (artifacts, manifests, copied logs), every job, allocation and log the
Nomad double serves, every request it received, the central scheduler's task list, the Consul
keys, and everything the test process logged.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import boto3
import hvac
import luigi
import pytest
import requests

import nomad
from pipelines.ranker import RetrainRanker

from ..doubles.consul import ConsulDouble
from ..doubles.nomad import NomadDouble
from ..servers import succeeded

ROOT = Path(__file__).resolve().parents[2]
BUCKET = "caravan-leak-test"
POLICY = """
path "secret/data/caravan/dev/storage" { capabilities = ["read"] }
path "secret/data/caravan/dev/consul" { capabilities = ["read"] }
path "secret/data/caravan/dev/nomad" { capabilities = ["read"] }
"""
STEP_POLICY = 'path "secret/data/caravan/dev/storage" { capabilities = ["read"] }\n'


def find(markers: dict[str, str], text: str | bytes, where: str) -> list[str]:
    """Every marker found in ``text``, as 'name in where'."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return [f"{name} in {where}" for name, value in markers.items() if value in text]


def test_the_search_finds_a_planted_marker() -> None:
    """The search below can fail: a marker anywhere in a text, even mid-JSON, is reported."""
    markers = {"s3 secret key": f"s3-{uuid.uuid4().hex}"}
    planted = json.dumps({"meta": {"caravan_params": f'{{"k": "{markers["s3 secret key"]}"}}'}})
    assert find(markers, planted, "a job") == ["s3 secret key in a job"]
    assert find(markers, planted.encode(), "a job") == ["s3 secret key in a job"]
    assert find(markers, "nothing here", "a log") == []


@pytest.fixture
def cluster(vault_server: tuple[str, str], s3_endpoint: str, scheduler_url: str, tmp_path: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, object]]:
    """OpenBao with caravan's secrets, a Nomad double and a Consul double that enforce their tokens."""
    vault_addr, root_token = vault_server
    markers = {
        "s3 secret key": f"s3-secret-{uuid.uuid4().hex}",
        "consul token": str(uuid.uuid4()),
        "nomad token": str(uuid.uuid4()),
    }
    admin = hvac.Client(url=vault_addr, token=root_token)
    kv = admin.secrets.kv.v2
    kv.create_or_update_secret("caravan/dev/storage", secret={"aws_access_key_id": "AKIALEAKTEST",
                                                          "aws_secret_access_key": markers["s3 secret key"]})
    kv.create_or_update_secret("caravan/dev/consul", secret={"token": markers["consul token"]})
    kv.create_or_update_secret("caravan/dev/nomad", secret={"token": markers["nomad token"]})
    admin.sys.create_or_update_policy("caravan-retrain", POLICY)
    admin.sys.create_or_update_policy("caravan-step", STEP_POLICY)
    if "approle/" not in admin.sys.list_auth_methods()["data"]:
        admin.sys.enable_auth_method("approle")
    admin.auth.approle.create_or_update_approle("caravan-retrain", token_policies=["caravan-retrain"])
    role_id = admin.auth.approle.read_role_id("caravan-retrain")["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id("caravan-retrain")["data"]["secret_id"]
    markers["approle secret id"] = secret_id
    # What the Nomad client derives from a step's workload identity: a token for the step's policy only.
    step_token = admin.auth.token.create(policies=["caravan-step"], ttl="1h")["auth"]["client_token"]
    markers["step vault token"] = step_token

    consul = ConsulDouble(acl_token=markers["consul token"], lock_delay_s=0.0)
    consul_addr = consul.start()
    # The steps inherit nothing from this process (as a Docker task does not): the S3 keys can only reach
    # them through their job's vault/template blocks, or boto3 finds no credentials and the run fails.
    double = NomadDouble(env={"PYTHONPATH": os.environ["PYTHONPATH"], "AWS_ENDPOINT_URL": s3_endpoint,
                              "AWS_DEFAULT_REGION": "us-east-1", "HOME": str(tmp_path / "task-home")},
                         acl_token=markers["nomad token"], vault_addr=vault_addr, vault_token=step_token,
                         inherit_env=False)
    nomad_addr = double.start()
    double.load_specs(ROOT / "nomad")

    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="AKIALEAKTEST",
                 aws_secret_access_key="setup").create_bucket(Bucket=BUCKET)
    for name, value in {
        "CARAVAN_SECRETS": "vault", "VAULT_ADDR": vault_addr, "VAULT_ROLE_ID": role_id, "VAULT_SECRET_ID": secret_id,
        "CARAVAN_EXECUTOR": "nomad", "NOMAD_ADDR": nomad_addr,
        "CARAVAN_POINTER": "consul", "CONSUL_HTTP_ADDR": consul_addr,
        "CARAVAN_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts", "AWS_ENDPOINT_URL": s3_endpoint,
        "CARAVAN_JOBSPEC_DIR": str(ROOT / "nomad"), "CARAVAN_POINTER_ROOT": str(tmp_path / "pointers"),
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)  # moto's fixture sets them; here the keys come from Vault
    yield {"markers": markers, "nomad": double, "nomad_addr": nomad_addr, "consul": consul,
           "consul_addr": consul_addr, "s3": s3_endpoint, "scheduler": scheduler_url}
    double.stop()
    consul.stop()


def test_a_retraining_run_leaks_no_secret(cluster: dict, caplog: pytest.LogCaptureFixture,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    markers: dict[str, str] = cluster["markers"]
    url = urlparse(cluster["scheduler"])
    task = RetrainRanker(date=dt.date(2026, 11, 20), window_days=2, rows_per_day=3000, model="leak-test",
                         grid={"learning_rate": [0.1], "num_leaves": [7]})
    result = luigi.build([task], scheduler_host=url.hostname, scheduler_port=url.port, workers=2,
                         log_level="INFO", detailed_summary=True)
    assert succeeded(result), result.summary_text
    # The run really used the credentials: the model was promoted through the token-guarded Consul,
    # every step was dispatched through the token-guarded Nomad, and the steps, which inherit no
    # environment, wrote to S3 with the keys their templates rendered from Vault.
    assert task.output().read_json("run.json")["promotion"]["decision"] == "promote"
    double: NomadDouble = cluster["nomad"]
    assert len(double.dispatch_requests) >= 8

    found: list[str] = []
    # 1. Every object in the bucket: artifacts, manifests, the logs copied from Nomad.
    s3 = boto3.client("s3", endpoint_url=cluster["s3"], aws_access_key_id="AKIALEAKTEST",
                      aws_secret_access_key="reader")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])]
    assert any(k.endswith("_MANIFEST.json") for k in keys) and any("/_logs/" in k for k in keys)
    for key in keys:
        found += find(markers, key, f"s3 key {key}")
        found += find(markers, s3.get_object(Bucket=BUCKET, Key=key)["Body"].read(), f"s3://{BUCKET}/{key}")

    # 2. What anyone who can read jobs sees in Nomad: jobs with their meta, allocations, task events, logs.
    client = nomad.Nomad(address=cluster["nomad_addr"], token=markers["nomad token"], timeout=30)
    for stub in client.jobs.get_jobs():
        job = client.job.get_job(stub["ID"])
        found += find(markers, json.dumps(job), f"nomad job {stub['ID']}")
        for alloc in client.job.get_allocations(stub["ID"]):
            detail = client.allocation.get_allocation(alloc["ID"])
            found += find(markers, json.dumps(detail), f"nomad allocation {alloc['ID']}")
            for task_name in detail.get("TaskStates") or {}:
                for kind in ("stdout", "stderr"):
                    logs = client.client.stream_logs.stream(alloc["ID"], task_name, kind, plain=True)
                    found += find(markers, str(logs), f"{kind} of {alloc['ID']}/{task_name}")
    found += find(markers, json.dumps(double.dispatch_requests), "the dispatch requests")
    found += find(markers, json.dumps(double.requests), "the request lines Nomad received")

    # 3. The central scheduler: every task it knows, with its parameters.
    for status in ("DONE", "FAILED", "PENDING", "RUNNING", "DISABLED"):
        reply = requests.get(f"{cluster['scheduler']}/api/task_list",
                             params={"data": json.dumps({"status": status, "upstream_status": "", "search": ""})},
                             timeout=30)
        found += find(markers, reply.text, f"luigid task list ({status})")

    # 4. Consul: the pointer, its history, the lock.
    _, entries = __import__("consul").Consul(
        host=urlparse(cluster["consul_addr"]).hostname, port=urlparse(cluster["consul_addr"]).port,
        token=markers["consul token"]).kv.get("caravan/", recurse=True)
    assert entries, "the promotion wrote the pointer"
    found += find(markers, repr(entries), "consul KV")

    # 5. Everything this process logged or printed.
    found += find(markers, caplog.text, "the luigi worker's log records")
    out, err = capfd.readouterr()
    found += find(markers, out + err, "the luigi worker's stdout/stderr")

    assert found == [], "secrets leaked:\n" + "\n".join(found)
