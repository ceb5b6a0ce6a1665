"""caravan under the production ACL policies: the policy files Terraform applies, enforced by the doubles.

Three paths, each with the token (or workload identity) production gives it, whose policies are rendered from
``terraform/policies`` for the production environment (namespace ``caravan``):

* CI's release: ``caravan publish`` of every spec with the release token (luigid mounts a read-write host volume);
* a retraining run: ``RetrainRanker`` dispatching its steps through the Nomad double with the retrain token and
  promoting through the Consul double with the pipeline token (keys ``caravan/production/models/``);
* serving's template: the serving task's Consul templates rendered by the Nomad double's client with the task's
  Consul workload identity (bound to the task role by Terraform's binding rule).

Each test runs twice: with today's policies it must pass, and with the policies as they were before issue 17
(``tests/fixtures/policies_before_issue_17``: one Nomad policy without host volumes, keys without environment,
no task role) it must fail, and fail on a permission.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hcl2
import pytest

import nomad
from caravan.cli import main as caravan_cli
from caravan.registry import open_pointer
from pipelines.ranker import RetrainRanker

from ..acl_policies import POLICIES, POLICIES_BEFORE_ISSUE_17, load_policies, token_policies
from ..doubles.consul import ConsulDouble
from ..doubles.nomad import NomadDouble, hcl_to_job
from ..servers import build

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "nomad"
ENVIRONMENT, NAMESPACE, MODEL = "production", "caravan", "ranker"
PRODUCTION = {"environment": ENVIRONMENT, "namespace": NAMESPACE, "model": MODEL}
STEP_JOBS = ("simulate-events", "prepare-dataset", "validate-data", "process-text", "train-lightgbm", "evaluate",
             "gate-model")


@pytest.fixture(params=[pytest.param((POLICIES, True), id="production-policies"),
                        pytest.param((POLICIES_BEFORE_ISSUE_17, False), id="policies-before-issue-17")])
def policies(request: pytest.FixtureRequest) -> tuple[Path, bool]:
    """(folder of policy files, whether caravan must work under them)."""
    return request.param


def tokens(system: str, root: Path, *names: str) -> dict[str, str]:
    """name -> a fresh secret; and the double's ``acl_policies`` for them."""
    return {name: f"{system}-{name}-{uuid.uuid4()}" for name in names}


def policies_of(system: str, root: Path, secrets: dict[str, str]) -> dict[str, list[str]]:
    return {secret: token_policies(system, name, root=root, **PRODUCTION) for name, secret in secrets.items()}


@pytest.fixture
def management() -> str:
    return f"management-{uuid.uuid4()}"


# -- CI's release ----------------------------------------------------------------------------------------------


def test_publish_with_the_release_token(policies, management, monkeypatch, capsys):
    root, works = policies
    secret = tokens("nomad", root, "release")
    with NomadDouble(acl_token=management, acl_policies=policies_of("nomad", root, secret)) as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        monkeypatch.setenv("NOMAD_TOKEN", secret["release"])
        monkeypatch.setenv("NOMAD_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("CARAVAN_IMAGE_REPOSITORY", "registry.example/ml/caravan")
        code = caravan_cli(["publish", "--jobs-dir", str(SPECS), "--version", "v1.4.0"])
        out, err = capsys.readouterr()
        admin = nomad.Nomad(address=server.address, token=management, namespace=NAMESPACE, timeout=10)
        registered = {job["ID"] for job in admin.jobs.get_jobs()}
    expected = {p.name.removesuffix(".nomad.hcl") for p in SPECS.glob("*.nomad.hcl")}
    if works:
        assert code == 0, out + err
        assert registered == expected
    else:
        assert code != 0 and "luigid" not in registered, out + err
        assert "Permission denied" in out + err, "refused for a permission (luigid's read-write host volume)"


def test_caravan_trigger_with_the_retrain_token(management, monkeypatch, capsys):
    """The trigger rows of the retrain policy: a forced periodic launch and a backfill dispatch, in production's
    namespace, with only the retrain token (the release token published the jobs first)."""
    secrets = tokens("nomad", POLICIES, "release", "retrain")
    with NomadDouble(acl_token=management, acl_policies=policies_of("nomad", POLICIES, secrets)) as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        monkeypatch.setenv("NOMAD_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("NOMAD_TOKEN", secrets["release"])
        assert caravan_cli(["publish", "--jobs-dir", str(SPECS), "--version", "v1.4.0",
                            "--only", "retrain-ranker", "retrain-ranker-backfill"]) == 0, capsys.readouterr()
        capsys.readouterr()
        monkeypatch.setenv("NOMAD_TOKEN", secrets["retrain"])
        server.inject("retrain-ranker", "fail")  # the children must not run a whole pipeline here
        server.inject("retrain-ranker-backfill", "fail")
        forced = caravan_cli(["trigger", "retrain"])
        forced_out = capsys.readouterr()
        backfill = caravan_cli(["trigger", "retrain", "--date", (DAY - dt.timedelta(days=30)).isoformat()])
        backfill_out = capsys.readouterr()
    assert forced == 0, forced_out
    assert re.fullmatch(r"retrain-ranker/periodic-\d+", forced_out.out.strip())
    assert backfill == 0, backfill_out
    assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", backfill_out.out.strip())


# -- a retraining run --------------------------------------------------------------------------------------------

DAY = dt.date(2026, 11, 22)
SMALL = {"window_days": 1, "rows_per_day": 2000, "grid": {"learning_rate": [0.1], "num_leaves": [7]}}


@pytest.fixture
def cluster(policies, management, local_root, monkeypatch) -> Iterator[tuple[NomadDouble, ConsulDouble, bool]]:
    """The step jobs in the production namespace of a Nomad double, a Consul double, and caravan configured as
    the retrain job is in production: the retrain token for Nomad, the pipeline token for Consul."""
    root, works = policies
    nomad_secrets = tokens("nomad", root, "retrain")
    consul_secrets = tokens("consul", root, "pipeline")
    nomad_double = NomadDouble(env={"PYTHONPATH": os.environ["PYTHONPATH"]}, acl_token=management,
                               acl_policies=policies_of("nomad", root, nomad_secrets))
    consul_double = ConsulDouble(acl_token=management, acl_policies=policies_of("consul", root, consul_secrets),
                                 lock_delay_s=0.0)
    with nomad_double, consul_double:
        for job in STEP_JOBS:
            nomad_double.load_hcl(SPECS / f"{job}.nomad.hcl", {"namespace": NAMESPACE, "environment": ENVIRONMENT},
                                  namespace=NAMESPACE)
        monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(SPECS))
        monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
        monkeypatch.setenv("NOMAD_ADDR", nomad_double.address)
        monkeypatch.setenv("NOMAD_NAMESPACE", NAMESPACE)
        monkeypatch.setenv("NOMAD_TOKEN", nomad_secrets["retrain"])
        monkeypatch.setenv("CARAVAN_POINTER", "consul")
        monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_double.address)
        monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_secrets["pipeline"])
        yield nomad_double, consul_double, works


def test_a_retraining_run_with_the_retrain_and_pipeline_tokens(cluster, management, caplog):
    nomad_double, consul_double, works = cluster
    # A task instance of its own: luigi hands back the instance an earlier test made with the same parameters,
    # and with it that test's drift reference (read from the pointer once per instance, before the address).
    RetrainRanker.clear_instance_cache()
    retrain = RetrainRanker(date=DAY, model=MODEL, **SMALL)
    succeeded = build([retrain], workers=1)
    dispatched = [path for method, path in nomad_double.requests if method in ("PUT", "POST")
                  and path.split("?")[0].endswith("/dispatch")]
    assert all("namespace=caravan" in path for path in dispatched)
    if works:
        assert dispatched, "the steps ran through Nomad"
        assert succeeded
        assert retrain.output().read_json("run.json")["promotion"]["decision"] == "promote"
        pointer = open_pointer().read(MODEL)
        assert pointer.document is not None
        keys = consul_double_keys(consul_double, management)
        assert f"caravan/{ENVIRONMENT}/models/{MODEL}/current" in keys
        assert all(key.startswith(f"caravan/{ENVIRONMENT}/models/") for key in keys)
    else:
        assert not succeeded, "the old pipeline policy cannot reach caravan/<env>/models/"
        refusals = [r.getMessage() for r in caplog.records if "HTTP 403" in r.getMessage()]
        assert any(f"caravan/{ENVIRONMENT}/models/{MODEL}/" in text and "lacks permission 'key:" in text
                   for text in refusals), refusals
        assert not consul_double_keys(consul_double, management), "nothing was promoted"


def consul_double_keys(server: ConsulDouble, token: str) -> list[str]:
    import consul

    client = consul.Consul(host=server.host, port=server.port, token=token)
    return list(client.kv.get("", keys=True)[1] or [])


# -- serving's templates, with the task's Consul workload identity -----------------------------------------------


def task_binding_selector() -> str | None:
    """The selector of Terraform's task binding rule (terraform/consul.tf), for the production namespace."""
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    tree = hcl2.loads((ROOT / "terraform" / "consul.tf").read_text(), serialization_options=options)
    rules = [body for entry in tree["resource"] for rtype, named in entry.items()
             if rtype == "consul_acl_binding_rule" for name, body in named.items() if name == "tasks"]
    return rules[0]["selector"].replace('\\"', '"').replace("${var.namespace}", NAMESPACE) if rules else None


def selects(selector: str | None, claims: dict[str, str]) -> bool:
    """Whether a binding rule's selector selects a workload identity with ``claims``: the grammar Terraform's
    rules use (``"k" in value``, ``"k" not in value``, ``value.k == "v"``, joined by ``and``), evaluated as
    Consul's bexpr would. An unknown clause selects nothing (and is named by the test that parsed it)."""
    if selector is None:
        return False
    for clause in (c.strip() for c in selector.split(" and ")):
        if m := re.fullmatch(r'"(\w+)" not in value', clause):
            ok = m.group(1) not in claims
        elif m := re.fullmatch(r'"(\w+)" in value', clause):
            ok = m.group(1) in claims
        elif m := re.fullmatch(r'value\.(\w+) == "([^"]*)"', clause):
            ok = claims.get(m.group(1)) == m.group(2)
        else:
            return False
        if not ok:
            return False
    return True


def test_the_binding_rule_selects_this_namespaces_tasks_only():
    selector = task_binding_selector()
    task = {"nomad_namespace": NAMESPACE, "nomad_job_id": "serving", "nomad_task": "serve"}
    assert selects(selector, task)
    assert not selects(selector, {**task, "nomad_namespace": "caravan-staging"})
    assert not selects(selector, {**task, "nomad_service": "caravan-production-ranker"})


def as_batch_job(server: NomadDouble, spec: str, config: dict[str, Any]) -> str:
    """The real ``spec`` for production, registered with every Consul template kept (its Vault templates
    dropped: this client has no Vault) as a batch job running ``config``, so that the double's client (which
    runs batch work only) renders its templates. Returns its ID."""
    job = hcl_to_job((SPECS / f"{spec}.nomad.hcl").read_text(), {**PRODUCTION, "release": "v1.4.0"})
    job["ID"] = job["Name"] = f"{spec}-templates"
    job["Type"], job["Update"], job["Periodic"], job["Namespace"] = "batch", None, None, NAMESPACE
    (group,) = job["TaskGroups"]
    group["Services"], group["Networks"], group["Update"] = None, None, None
    (task,) = group["Tasks"]
    assert task["Consul"] is not None, f"{spec}: its task renders Consul templates, so it needs a consul block"
    task["Templates"] = [t for t in task["Templates"] or [] if "secret " not in (t.get("EmbeddedTmpl") or "")]
    task["Vault"], task["Config"] = None, config
    admin = nomad.Nomad(address=server.address, token=server.acl_token, namespace=NAMESPACE, timeout=10)
    admin.jobs.register_job({"Job": job})
    return str(job["ID"])


def identity_login(policy_root: Path, logins: list[dict[str, str]]) -> tuple[str, list[str], Any]:
    """A Consul JWT login for the Nomad double: the claims Nomad signs into a task's identity, Terraform's
    binding rule deciding whether it gets the task role, whose policies come from ``policy_root``.
    Returns (the token's secret, its policies, the login function)."""
    secret = f"identity-{uuid.uuid4()}"
    selector = task_binding_selector()  # parsed here: the login runs on the double's threads

    def login(job: dict[str, Any], group: dict[str, Any], task: dict[str, Any]) -> str | None:
        claims = {"nomad_namespace": job["Namespace"], "nomad_job_id": job.get("ParentID") or job["ID"],
                  "nomad_task": task["Name"]}
        logins.append(claims)
        return secret if selects(selector, claims) else None

    return secret, token_policies("consul", "tasks", root=policy_root, **PRODUCTION), login


def test_servings_templates_render_with_the_tasks_consul_identity(policies, management):
    root, works = policies
    pointer = json.dumps({"artifact_uri": "file:///models/ranker", "artifact_id": "TrainRanker/x"})
    logins: list[dict[str, str]] = []
    secret, task_policies, login = identity_login(root, logins)
    with ConsulDouble(acl_token=management, acl_policies={secret: task_policies}) as consul_double:
        import consul

        consul.Consul(host=consul_double.host, port=consul_double.port, token=management).kv.put(
            f"caravan/{ENVIRONMENT}/models/{MODEL}/current", pointer)
        with NomadDouble(acl_token=management, consul_addr=consul_double.address, consul_identity=login,
                         render_templates=True, env={"PYTHONPATH": os.environ["PYTHONPATH"]}) as server:
            job_id = as_batch_job(server, "serving", {"command": sys.executable, "args": ["-c", "pass"]})
            admin = nomad.Nomad(address=server.address, token=management, namespace=NAMESPACE, timeout=10)
            alloc = wait_for_terminal_alloc(admin, job_id)
            events = [e for state in (alloc.get("TaskStates") or {}).values() for e in state.get("Events") or []]
            rendered = server.task_dir(alloc["ID"], "serve") / "local" / "current-model.json"
            rendered_text = rendered.read_text() if rendered.exists() else None
    assert logins and logins[0]["nomad_namespace"] == NAMESPACE, "the task logs in with its identity"
    if works:
        assert alloc["ClientStatus"] == "complete", events
        assert rendered_text == pointer, "the pointer reached the task through its identity's token"
    else:
        assert alloc["ClientStatus"] == "failed", "the task never starts without its pointer"
        messages = " ".join(str(e.get("DisplayMessage") or e.get("Message") or "") for e in events)
        assert "Template failed" in messages and "403" in messages, messages


def test_the_retrain_job_finds_the_scheduler_with_its_consul_identity(policies, management):
    """retrain-ranker's guard and scheduler template as written: with its identity's role it starts with the
    production scheduler's address; without one Consul filters the service away (or refuses the CA key) and
    the run never starts (issue 17: "no healthy caravan-luigid service")."""
    root, works = policies
    logins: list[dict[str, str]] = []
    secret, task_policies, login = identity_login(root, logins)
    with ConsulDouble(acl_token=management, acl_policies={secret: task_policies}) as consul_double:
        consul_double.register_service(f"caravan-{ENVIRONMENT}-luigid", "10.0.0.7", 8082, tags=["caravan"])
        consul_double.register_service("caravan-staging-luigid", "10.0.0.9", 8082, tags=["caravan"])
        with NomadDouble(acl_token=management, consul_addr=consul_double.address, consul_identity=login,
                         render_templates=True, env={"PYTHONPATH": os.environ["PYTHONPATH"]}) as server:
            (guard, _, _) = retrain_command().partition("exec python -m caravan.entrypoint")
            job_id = as_batch_job(server, "retrain-ranker", {"command": "/bin/sh",
                                                              "args": ["-c", guard + 'echo "$LUIGI_SCHEDULER_URL"']})
            admin = nomad.Nomad(address=server.address, token=management, namespace=NAMESPACE, timeout=10)
            alloc = wait_for_terminal_alloc(admin, job_id)
            logs = server.task_dir(alloc["ID"], "retrain").parent / "alloc" / "logs"
            out = "".join(p.read_text() for p in logs.glob("retrain.std*")) if logs.exists() else ""
            events = [e for state in (alloc.get("TaskStates") or {}).values() for e in state.get("Events") or []]
    assert logins and logins[0]["nomad_job_id"] == "retrain-ranker-templates"
    if works:
        assert alloc["ClientStatus"] == "complete", (out, events)
        assert "http://10.0.0.7:8082" in out, out
    else:
        assert alloc["ClientStatus"] == "failed"
        messages = out + " ".join(str(e.get("DisplayMessage") or "") for e in events)
        assert "no healthy caravan-production-luigid service" in messages or (
            "Template failed" in messages and "403" in messages), messages


def retrain_command() -> str:
    """The shell command of retrain-ranker's task, as the spec writes it."""
    job = hcl_to_job((SPECS / "retrain-ranker.nomad.hcl").read_text(), PRODUCTION)
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Config"]["command"] == "/bin/sh" and task["Config"]["args"][0] == "-c"
    return str(task["Config"]["args"][1])


def wait_for_terminal_alloc(client: nomad.Nomad, job_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        allocs = client.job.get_allocations(job_id)
        done = [a for a in allocs if a["ClientStatus"] in ("complete", "failed")]
        if done:
            return client.allocation.get_allocation(done[0]["ID"])
        time.sleep(0.05)
    raise AssertionError(f"{job_id}: no allocation finished within {timeout_s} s")


# -- Vault: each holder reads its secrets, with its policy, from a real OpenBao ----------------------------------

VAULT_HOLDERS = {"step": ["storage"], "retrain": ["storage", "consul", "nomad"], "serving": ["storage", "serving"],
                 "ci": ["nomad"]}


def test_each_vault_policy_reads_its_holders_secrets_through_caravan(policies, vault_server, monkeypatch):
    """The Vault policies applied to OpenBao; caravan's Vault source, with a token of each policy, reads every
    secret its holder reads in production (and nothing of staging)."""
    import hvac

    from caravan.errors import SecretAccessDenied
    from caravan.secrets.vault import VaultSecrets

    root, works = policies
    address, root_token = vault_server
    admin = hvac.Client(url=address, token=root_token)
    suffix = uuid.uuid4().hex[:8]
    for env in (ENVIRONMENT, "staging"):
        for name in ("storage", "consul", "nomad", "serving"):
            admin.secrets.kv.v2.create_or_update_secret(f"caravan/{env}/{name}", secret={"token": f"{env}-{name}"},
                                                        mount_point="secret")
    texts = load_policies("vault", root=root, **PRODUCTION)
    monkeypatch.setenv("CARAVAN_ENVIRONMENT", ENVIRONMENT)
    outcomes = {}
    for kind, names in VAULT_HOLDERS.items():
        policy = f"caravan-{ENVIRONMENT}-{kind}-{suffix}"
        admin.sys.create_or_update_acl_policy(name=policy, policy=texts[kind])
        token = admin.auth.token.create(policies=[policy], ttl="5m")["auth"]["client_token"]
        source = VaultSecrets(address, token)
        for name in names:
            try:
                outcomes[kind, name] = dict(source.read(name))
            except SecretAccessDenied:
                outcomes[kind, name] = None
        staging = hvac.Client(url=address, token=token)
        with pytest.raises(hvac.exceptions.Forbidden):
            staging.secrets.kv.v2.read_secret_version("caravan/staging/storage", mount_point="secret",
                                                      raise_on_deleted_version=True)
    if works:
        assert outcomes == {(kind, name): {"token": f"{ENVIRONMENT}-{name}"}
                            for kind, names in VAULT_HOLDERS.items() for name in names}
    else:
        assert all(value is None for value in outcomes.values()), "before: no environment in the paths"


# -- experiments: the CLI, the workers and the gateways ------------------------------------------------------------


def test_experiments_with_the_pipeline_and_serving_tokens():
    """`caravan experiment start|stop` writes the document with the pipeline token; the workers and gateways of the
    model, with the serving token, follow it and share their counters, and can neither move the document nor read
    another model's experiment."""
    from caravan.errors import BackendRejected
    from caravan.experiments.consul import ConsulExperimentStore
    from caravan.experiments.document import Arm, Experiment

    secrets = tokens("consul", POLICIES, "pipeline", "serving")
    acl = policies_of("consul", POLICIES, secrets)
    with ConsulDouble(acl_token=f"management-{uuid.uuid4()}", acl_policies=acl) as server:
        def store(token: str) -> ConsulExperimentStore:
            return ConsulExperimentStore(server.address, token, environment=ENVIRONMENT)

        cli, gateway = store(secrets["pipeline"]), store(secrets["serving"])
        uri = "file:///a/TrainRanker/date=2026-11-22/x--0123456789abcdef"
        arms = (Arm("control", "TrainRanker/date=2026-11-22/x--0123456789abcdef", uri, 0.5),
                Arm("challenger", "TrainRanker/date=2026-11-22/y--fedcba9876543210",
                    uri.replace("x--0123456789abcdef", "y--fedcba9876543210"), 0.5))
        version = cli.write(Experiment(model=MODEL, arms=arms, policy="thompson"), 0)
        found, seen = gateway.read(MODEL)
        assert found is not None and seen == version
        gateway.put_stats(MODEL, "gw-1", {"control": (3, 7), "challenger": (5, 5)}, salt=found.salt)
        assert gateway.read_stats(MODEL, salt=found.salt) == {"control": (3, 7), "challenger": (5, 5)}
        with pytest.raises(BackendRejected, match="403"):
            gateway.write(Experiment(model=MODEL, arms=arms[:1]), seen)
        with pytest.raises(BackendRejected, match="403"):
            gateway.read("another-model")
        cli.clear_stats(MODEL)
        assert gateway.read_stats(MODEL) == {}
