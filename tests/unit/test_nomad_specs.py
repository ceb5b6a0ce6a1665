"""The shipped job specs hold to the secrets contract, the step contract and the operating choices in them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from caravan.entrypoint import parse_duration
from caravan.executors.jobspec import parse_spec, plain_hcl
from caravan.publish import read_spec

from ..doubles.nomad.hcl import canonicalize, hcl_to_job, parse_duration_ns

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "nomad"
STEPS = ("simulate-events", "prepare-dataset", "validate-data", "process-text", "train-lightgbm", "evaluate",
         "gate-model", "make-numbers", "summarize", "train-lightgbm-distributed")
# The decided secrets contract: job -> (Vault role kind, the secret paths its templates read). The role is
# caravan-<env>-<kind>, the paths secret/data/caravan/<env>/<name> (caravan.config.environment).
SECRETS = {
    **{step: ("step", {"storage"}) for step in STEPS},
    "retrain-ranker": ("retrain", {"storage", "consul", "nomad"}),
    "retrain-ranker-backfill": ("retrain", {"storage", "consul", "nomad"}),
    # Issue 13: the monitor reads the event log, records triggers in Consul and dispatches the retrain jobs.
    "monitor-ranker": ("retrain", {"storage", "consul", "nomad"}),
    "serving": ("serving", {"storage", "serving"}),
    "luigid": (None, set()),
    # Issue 12: the workers load artifacts and watch the experiment; the gateway needs only the serving secret
    # (its Consul token, and the key that signs request ids).
    "worker": ("serving", {"storage", "serving"}),
    "gateway": ("serving", {"serving"}),
}
#: Nomad client's default max_kill_timeout: a longer kill_timeout is capped to it.
MAX_KILL_TIMEOUT_S = 30.0
ENV_NAMES = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "CARAVAN_WEBHDFS_TOKEN", "CONSUL_HTTP_TOKEN", "NOMAD_TOKEN",
             "CARAVAN_SECRET_GATEWAY_SIGNING_KEY"}
# cpu/memory before the resources became variables: the defaults must not have moved.
RESOURCES = {"simulate-events": (500, 1024), "prepare-dataset": (1000, 4096), "validate-data": (500, 4096),
             "process-text": (1000, 4096), "train-lightgbm": (2000, 8192), "evaluate": (1000, 4096),
             "train-lightgbm-distributed": (2000, 8192),
             "gate-model": (500, 2048), "make-numbers": (200, 256), "summarize": (200, 256), "serving": (1000, 1024)}


def tree(name: str) -> dict[str, Any]:
    return plain_hcl(hcl2.loads((SPECS / f"{name}.nomad.hcl").read_text()))


def job_body(name: str) -> dict[str, Any]:
    (job,) = tree(name)["job"]
    return job[name]


def tasks(name: str) -> list[dict[str, Any]]:
    return [task for group in job_body(name)["group"] for body in group.values() for t in body["task"]
            for task in t.values()]


def variables(name: str) -> dict[str, Any]:
    return {k: v for block in tree(name)["variable"] for k, v in block.items()}


def test_the_specs_are_the_steps_and_the_four_others():
    assert sorted(p.name.removesuffix(".nomad.hcl") for p in SPECS.glob("*.nomad.hcl")) == sorted(SECRETS)
    steps = sorted(p.name.removesuffix(".nomad.hcl") for p in SPECS.glob("*.nomad.hcl")
                   if "caravan_output" in p.read_text())
    assert steps == sorted(STEPS)


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_spec_declares_its_variables_and_uses_the_namespace(name):
    declared = read_spec(SPECS / f"{name}.nomad.hcl").variables
    assert {"image", "datacenters", "namespace", "environment", "cpu", "memory"} <= set(declared)
    assert "vault_role" not in declared, "the role follows the environment: caravan-<env>-<kind>"
    assert variables(name)["namespace"]["default"] == "default"
    assert variables(name)["environment"]["default"] == "dev", "the environment of the 'default' namespace"
    body = job_body(name)
    assert body["namespace"] == "${var.namespace}" and body["datacenters"] == "${var.datacenters}"
    for task in tasks(name):
        assert task["config"][0]["image"] == "${var.image}"
        assert task["resources"][0] == {"cpu": "${var.cpu}", "memory": "${var.memory}"}
    if name in RESOURCES:
        assert (variables(name)["cpu"]["default"], variables(name)["memory"]["default"]) == RESOURCES[name]


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_spec_reads_exactly_the_secrets_of_its_role(name):
    kind, paths = SECRETS[name]
    for task in tasks(name):  # the worker has one task per arm
        check_task_secrets(task, kind, paths)


def check_task_secrets(task: dict[str, Any], kind: str | None, paths: set[str]) -> None:
    templates = task.get("template") or []
    read = {m for t in templates
            for m in re.findall(r'secret "secret/data/caravan/\$\{var\.environment\}/([a-z]+)"', t["data"])}
    assert read == paths
    assert not [t for t in templates if re.search(r'secret "(?!secret/data/caravan/\$\{var\.environment\}/)',
                                                  t["data"])], "every secret path is inside its environment"
    if kind is None:
        assert "vault" not in task
        return
    (vault,) = task["vault"]
    assert vault["role"] == f"caravan-${{var.environment}}-{kind}"
    # No restart on a token re-derivation, and no VAULT_TOKEN in an environment that never uses it.
    assert vault["change_mode"] == "noop" and vault["env"] is False
    for template in templates:
        if "secret " not in template["data"]:
            continue
        assert template["env"] is True and template["error_on_missing_key"] is True
        assert template["destination"].startswith("secrets/")
        rendered = set(re.findall(r"([A-Z_]+)=\{\{", template["data"]))
        assert rendered and rendered <= ENV_NAMES
    if "storage" not in paths:
        return
    storage = next(t for t in templates if "/storage\"" in t["data"])
    assert storage["destination"] == "secrets/storage.env"
    assert "AWS_ACCESS_KEY_ID={{ .Data.data.aws_access_key_id }}" in storage["data"]
    assert "AWS_SECRET_ACCESS_KEY={{ .Data.data.aws_secret_access_key }}" in storage["data"]
    # Optional: `index` gives "" for a missing key even with error_on_missing_key.
    assert '{{ with index .Data.data "webhdfs_token" }}CARAVAN_WEBHDFS_TOKEN={{ . }}{{ end }}' in storage["data"]


CONSUL_TEMPLATE_FUNCS = re.compile(r"\{\{[^}]*\b(service|key|keyOrDefault|ls|tree|safeLs|safeTree|services)\b")


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_a_task_that_renders_consul_data_has_a_consul_block(name):
    # Since Nomad 1.10 a task gets its Consul workload identity (what templates render with) only with a
    # consul block (job_endpoint_hook_implicit_identities.go); without it a template gets 403 and the task
    # never starts.
    for task in tasks(name):
        consul_templates = [t for t in task.get("template") or [] if CONSUL_TEMPLATE_FUNCS.search(t["data"])]
        assert bool(consul_templates) == ("consul" in task), name


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_kill_timeout_is_within_the_clients_default_max(name):
    for task in tasks(name):
        assert parse_duration_ns(task.get("kill_timeout", "5s")) / 1e9 <= MAX_KILL_TIMEOUT_S


@pytest.mark.parametrize("environment", ["staging", "production"])
@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_shared_name_carries_the_environment(name, environment):
    """Consul services, KV keys, Vault paths and roles: nothing one environment names is another's."""
    job = canonicalize(hcl_to_job((SPECS / f"{name}.nomad.hcl").read_text(),
                                  {"namespace": f"caravan-{environment}", "environment": environment}))
    names: list[str] = []
    for group in job["TaskGroups"]:
        names += [service["Name"] for service in group.get("Services") or []]
        for task in group["Tasks"]:
            names += [service["Name"] for service in task.get("Services") or []]
            if task.get("Vault"):
                names.append(task["Vault"]["Role"])
            for template in task.get("Templates") or []:
                names += re.findall(r'(?:secret|service|key|keyOrDefault) "([^"]+)"', template["EmbeddedTmpl"])
            assert (task.get("Env") or {}).get("CARAVAN_ENVIRONMENT", environment) == environment
    for shared in names:
        assert shared.startswith((f"caravan-{environment}-", f"caravan/{environment}/",
                                  f"secret/data/caravan/{environment}/")), shared
    assert names, "every spec names something shared"


@pytest.mark.parametrize("name", STEPS)
def test_every_step_keeps_the_job_contract_and_never_restarts_on_new_credentials(name):
    spec = parse_spec(name, SPECS / f"{name}.nomad.hcl")
    assert spec.command == "python" and spec.env == {"CARAVAN_STEP_EXECUTOR": "nomad"}
    (task,) = tasks(name)
    # A re-derived token or a re-rendered storage key must not restart hours of training from scratch.
    assert task["vault"][0]["change_mode"] == "noop"
    assert all(t.get("change_mode") == "noop" for t in task["template"])


def test_serving_gets_its_consul_token_and_restarts_spread_out():
    (task,) = tasks("serving")
    consul = next(t for t in task["template"] if "/serving\"" in t["data"])
    assert "CONSUL_HTTP_TOKEN={{ .Data.data.consul_token }}" in consul["data"]
    assert all(t.get("splay") == "60s" for t in task["template"] if "secret " in t["data"])


def test_serving_promotes_its_canary_by_itself_only_when_told():
    (update,) = job_body("serving")["update"]
    assert update["canary"] == 1 and update["auto_revert"] is True and update["health_check"] == "checks"
    assert update["auto_promote"] == "${var.auto_promote}"
    declared = variables("serving")["auto_promote"]
    assert (declared["type"], declared["default"]) == ("bool", False), "production promotes by hand"


def test_serving_deploys_on_liveness_and_routes_on_readiness():
    (group,) = [g for block in job_body("serving")["group"] for g in block.values()]
    (service,) = group["service"]
    assert service["name"] == "caravan-${var.environment}-${var.model}"
    assert "canary" in service["canary_tags"] and "canary" not in service["tags"]
    checks = {check["name"]: check for check in service["check"]}
    # Readiness (/health is 503 until a model is loaded) routes traffic but does not judge deployments, so the
    # first deployment in a new environment, before any promotion, succeeds.
    assert (checks["ready"]["path"], checks["ready"]["on_update"]) == ("/health", "ignore")
    assert (checks["alive"]["path"], checks["alive"]["on_update"]) == ("/metrics", "require_healthy")
    assert group["spread"][0] == {"attribute": "${node.unique.id}", "weight": 100}
    (task,) = tasks("serving")
    assert parse_duration_ns(task["shutdown_delay"]) >= 5 * 10**9
    pointer = next(t for t in task["template"] if "/models/" in t["data"])
    assert 'keyOrDefault \\"caravan/${var.environment}/models/${var.model}/current\\"' in pointer["data"]
    assert pointer["change_mode"] == "noop"


@pytest.mark.parametrize("name", ["serving", "gateway"])
def test_servers_drain_their_event_log_within_the_kill_timeout(name):
    """SIGTERM drains the event log for --log-drain-s; Nomad kills after kill_timeout, which the client caps at its
    max_kill_timeout (30 s by default): drain < kill_timeout <= 30 s."""
    (task,) = tasks(name)
    args = task["config"][0]["args"]
    drain_s = float(args[args.index("--log-drain-s") + 1])
    kill_ns = parse_duration_ns(task["kill_timeout"])
    assert drain_s * 10**9 < kill_ns <= 30 * 10**9


@pytest.mark.parametrize("name", ["serving", "retrain-ranker", "retrain-ranker-backfill", "monitor-ranker"])
def test_tasks_that_talk_to_consul_get_its_ca_from_a_template(name):
    (task,) = tasks(name)
    (env,) = task["env"]
    assert env["CONSUL_CACERT"] == "${NOMAD_SECRETS_DIR}/consul-ca.pem"
    ca = next(t for t in task["template"] if t["destination"] == "secrets/consul-ca.pem")
    assert 'keyOrDefault \\"caravan/${var.environment}/tls/consul-ca.pem\\" \\"\\"' in ca["data"]


def test_the_retrain_job_finds_the_scheduler_through_consul_and_stops_cleanly():
    (task,) = tasks("retrain-ranker")
    scheduler = next(t for t in task["template"] if "LUIGI_SCHEDULER_URL" in t["data"])
    assert '{{ with service "caravan-${var.environment}-luigid" }}{{ with index . 0 }}LUIGI_SCHEDULER_URL=http://' \
           '{{ .Address }}:{{ .Port }}{{ end }}{{ end }}' in scheduler["data"]
    assert scheduler["env"] is True and scheduler["change_mode"] == "noop"
    assert task["config"][0]["command"] == "/bin/sh"
    script = task["config"][0]["args"][1]
    # luigi runs under caravan.entrypoint (SIGTERM stops the steps) with a deadline, exec'd so it gets the signal.
    assert 'exec python -m caravan.entrypoint --deadline \\"$CARAVAN_RUN_DEADLINE\\" --grace 20s luigi ' in script
    grace_s = float(re.search(r"--grace (\d+)s", script).group(1))
    assert grace_s < parse_duration_ns(task["kill_timeout"]) / 1e9 <= MAX_KILL_TIMEOUT_S
    (env,) = task["env"]
    assert env["CARAVAN_RUN_DEADLINE"] == "${var.run_deadline}"
    assert env["CARAVAN_ENVIRONMENT"] == "${var.environment}"
    # The deadline outlasts the longest step (NomadJobTask.timeout_s defaults to 6 h).
    assert parse_duration(variables("retrain-ranker")["run_deadline"]["default"]) >= 6 * 3600
    assert variables("retrain-ranker")["schedule"]["default"] == "0 */3 * * *"
    (periodic,) = job_body("retrain-ranker")["periodic"]
    assert periodic == {"crons": ["${var.schedule}"], "prohibit_overlap": True, "time_zone": "UTC",
                        "enabled": "${var.schedule_enabled}"}
    assert "dispatches retrain-ranker-backfill" in variables("retrain-ranker")["schedule_enabled"]["description"]


def test_the_backfill_is_the_retrain_run_with_a_date_from_meta():
    (run,), (backfill,) = tasks("retrain-ranker"), tasks("retrain-ranker-backfill")
    # python-hcl2 keeps the source form of the string: its quotes are escaped.
    assert backfill["config"][0]["args"][1] == run["config"][0]["args"][1].replace(
        '\\"$(date -u -d yesterday +%F)\\"', '\\"$NOMAD_META_date\\"')
    assert {k: v for k, v in backfill.items() if k != "config"} == {k: v for k, v in run.items() if k != "config"}
    (params,) = job_body("retrain-ranker-backfill")["parameterized"]
    assert params == {"payload": "forbidden", "meta_required": ["date"], "meta_optional": ["events"]}
    assert "periodic" not in job_body("retrain-ranker-backfill")
    shared = set(variables("retrain-ranker")) - {"schedule", "schedule_enabled"}
    assert shared == set(variables("retrain-ranker-backfill"))
    assert all(variables("retrain-ranker")[v] == variables("retrain-ranker-backfill")[v] for v in shared
               if v != "nomad_addr")


def test_luigid_is_one_consul_service_on_a_static_port_and_a_host_volume():
    body = job_body("luigid")
    assert body["type"] == "service" and body["update"][0]["canary"] == 0
    (group,) = [g for block in body["group"] for g in block.values()]
    assert group["count"] == 1
    assert group["volume"][0]["luigid-state"] == {"type": "host", "source": "${var.host_volume}", "read_only": False}
    # Static: a retrain run reads the address once, at its start; it must survive luigid's next release.
    assert group["network"][0]["port"][0]["http"] == {"static": "${var.port}"}
    assert variables("luigid")["port"]["default"] == 8082
    (service,) = group["service"]
    assert (service["name"], service["provider"], service["port"]) == ("caravan-${var.environment}-luigid",
                                                                       "consul", "http")
    assert service["check"][0]["path"] == "/api/task_list?data=%7B%22status%22%3A%22RUNNING%22%7D"
    (task,) = tasks("luigid")
    assert task["volume_mount"][0] == {"volume": "luigid-state", "destination": "/var/lib/luigid"}
    assert task["config"][0]["args"] == ["--port", "${NOMAD_PORT_http}", "--state-path",
                                         "/var/lib/luigid/state.pickle"]


@pytest.mark.parametrize("name", sorted(SECRETS))
def test_every_spec_renders_with_its_defaults(name):
    job = canonicalize(hcl_to_job((SPECS / f"{name}.nomad.hcl").read_text(), {"namespace": "caravan"}))
    assert job["ID"] == name and job["Namespace"] == "caravan" and job["Datacenters"] == ["dc1"]
    for group in job["TaskGroups"]:
        for task in group["Tasks"]:
            assert task["Config"]["image"] == "caravan:dev"
            env = task["Env"] or {}
            # Runtime interpolations survive (Nomad's client fills them in), escaped in the variable defaults.
            for key in ("NOMAD_ADDR", "CONSUL_HTTP_ADDR"):
                if key in env:
                    assert "${attr.unique.network.ip-address}" in env[key]


# -- issue 12: workers and gateways --------------------------------------------------------------------------------


def rendered(name: str, variables: dict[str, Any]) -> dict[str, Any]:
    return canonicalize(hcl_to_job((SPECS / f"{name}.nomad.hcl").read_text(),
                                   {"namespace": "caravan-staging", "environment": "staging", **variables}))


def test_each_worker_group_serves_one_arm_and_registers_with_the_tags_gateways_look_for():
    job = rendered("worker", {"model": "ranker", "arm_a": "control", "arm_b": "b2", "arm_b_count": 0})
    assert job["Type"] == "service"
    groups = {group["Name"]: group for group in job["TaskGroups"]}
    assert {name: group["Count"] for name, group in groups.items()} == {"arm-a": 2, "arm-b": 0}
    for name, arm in (("arm-a", "control"), ("arm-b", "b2")):
        group = groups[name]
        (service,) = group["Services"]
        # caravan.gateway.workers.worker_service() and members_of() read exactly these.
        assert (service["Name"], service["PortLabel"]) == ("caravan-staging-worker", "grpc")
        assert {"model=ranker", f"arm={arm}"} <= set(service["Tags"])
        checks = {check["Name"]: check for check in service["Checks"]}
        assert (checks["ready"]["Path"], checks["ready"]["PortLabel"], checks["ready"]["OnUpdate"]) == \
            ("/health", "http", "ignore")
        assert (checks["alive"]["Path"], checks["alive"]["OnUpdate"]) == ("/metrics", "require_healthy")
        (task,) = group["Tasks"]
        args = task["Config"]["args"]
        assert args[:5] == ["worker", "--model", "ranker", "--arm", arm], args
        ports = {port["Label"]: port["To"] for network in group["Networks"] for port in network["DynamicPorts"]}
        assert ports == {"grpc": int(args[args.index("--grpc-port") + 1]),
                         "http": int(args[args.index("--http-port") + 1])}
        assert task["Env"]["CARAVAN_POINTER"] == "consul"


def test_the_gateway_deploys_canaries_and_finds_its_workers_in_consul():
    job = rendered("gateway", {"model": "ranker", "gateway_count": 3, "update_s": "30"})
    (group,) = job["TaskGroups"]
    assert group["Count"] == 3 and group["Update"]["Canary"] == 1 and group["Update"]["AutoRevert"] is True
    (service,) = group["Services"]
    assert service["Name"] == "caravan-staging-gateway" and "model=ranker" in service["Tags"]
    assert "canary" in service["CanaryTags"] and "canary" not in service["Tags"]
    (task,) = group["Tasks"]
    args = task["Config"]["args"]
    assert args == ["gateway", "--model", "ranker", "--port", "8080", "--unit", "user_id", "--update-s", "30",
                    "--log-drain-s", "20"]
    assert "--worker" not in args, "workers come from Consul's health API"
    assert all(isinstance(arg, str) for arg in args)
    (spec_task,) = tasks("gateway")
    signing = next(t["data"] for t in spec_task["template"] if "SIGNING_KEY" in t["data"])
    # caravan.gateway.signing reads the secret gateway/signing_key from this environment variable.
    assert "CARAVAN_SECRET_GATEWAY_SIGNING_KEY={{ .Data.data.gateway_signing_key }}" in signing


# -- issue 13: the periodic monitor ---------------------------------------------------------------------------------


def test_the_monitor_runs_every_15_minutes_without_overlap_with_flags_the_cli_takes():
    import argparse

    from caravan.monitoring.triggers import add_trigger_arguments, settings_from_args

    (periodic,) = job_body("monitor-ranker")["periodic"]
    assert periodic == {"crons": ["${var.schedule}"], "prohibit_overlap": True, "time_zone": "UTC",
                        "enabled": "${var.schedule_enabled}"}
    assert variables("monitor-ranker")["schedule"]["default"] == "*/15 * * * *"
    job = canonicalize(hcl_to_job((SPECS / "monitor-ranker.nomad.hcl").read_text(),
                                  {"namespace": "caravan", "rollback_on_degradation": True, "cooldown": "90m"}))
    (task,) = job["TaskGroups"][0]["Tasks"]
    assert task["Config"]["command"] == "caravan"
    args = task["Config"]["args"]
    assert args[:2] == ["monitor", "ranker"] and "--dispatch=nomad" in args
    assert task["Env"]["CARAVAN_EXECUTOR"] == "nomad" and task["Env"]["CARAVAN_POINTER"] == "consul"
    # The trigger flags as rendered parse into the settings they name (the window is the monitor's own flag).
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--window")
    add_trigger_arguments(parser)
    settings = settings_from_args(parser.parse_args(args[1:]))
    assert settings.rollback_on_degradation is True and settings.cooldown_s == 5400
    assert (settings.degradation_tolerance, settings.min_events, settings.drift_threshold,
            settings.drift_features) == (0.02, 1000, 0.2, 1)
    defaults = canonicalize(hcl_to_job((SPECS / "monitor-ranker.nomad.hcl").read_text(), {"namespace": "caravan"}))
    plain = settings_from_args(parser.parse_args(defaults["TaskGroups"][0]["Tasks"][0]["Config"]["args"][1:]))
    assert plain.rollback_on_degradation is False and plain.cooldown_s == 3 * 3600
