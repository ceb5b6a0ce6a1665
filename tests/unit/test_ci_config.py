"""CI configuration is valid before CI ever sees it, releases in the decided order, and holds no secret."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = ["lint", "test", "build", "publish-staging", "staging-test", "publish"]
GLOBAL_KEYWORDS = {"default", "variables", "stages", "cache", "include", "workflow", "image", "services",
                   "before_script", "after_script"}


def test_gitlab_ci_validates_against_gitlabs_schema():
    exe = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert exe, "check-jsonschema is a test dependency"
    result = subprocess.run([exe, "--builtin-schema", "vendor.gitlab-ci", str(ROOT / ".gitlab-ci.yml")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_entry_point_runs_make_test_and_fails_on_failure():
    script = (ROOT / ".ci" / "run").read_text()
    assert "set -euo pipefail" in script
    assert "make test" in script
    assert "|| true" not in script


# -- the pipeline as GitLab resolves it ------------------------------------------------------------------


def load() -> dict[str, Any]:
    return yaml.safe_load((ROOT / ".gitlab-ci.yml").read_text())


def merge(base: Any, override: Any) -> Any:
    """GitLab's `extends`: hashes merge deeply, anything else (arrays included) is replaced."""
    if isinstance(base, Mapping) and isinstance(override, Mapping):
        out = dict(base)
        for key, value in override.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    return override


def resolved(ci: Mapping[str, Any], name: str) -> dict[str, Any]:
    body = ci[name]
    parents = body.get("extends", [])
    out: dict[str, Any] = {}
    for parent in [parents] if isinstance(parents, str) else parents:
        out = merge(out, resolved(ci, parent))
    return merge(out, {k: v for k, v in body.items() if k != "extends"})


def jobs(ci: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    ci = load() if ci is None else ci
    return {name: resolved(ci, name) for name in ci if name not in GLOBAL_KEYWORDS and not name.startswith(".")}


def script_lines(job: Mapping[str, Any]) -> list[str]:
    lines = []
    for key in ("before_script", "script", "after_script"):
        for entry in job.get(key, []):
            lines.extend(line.strip() for line in str(entry).splitlines() if line.strip())
    return lines


def test_stages_run_in_release_order_and_every_job_is_in_one():
    ci = load()
    assert ci["stages"] == STAGES
    for name, job in jobs(ci).items():
        assert job.get("stage", "test") in STAGES, name


def test_the_checks_before_a_release_are_all_there():
    all_jobs = jobs()
    assert {"lint", "test", "integration", "build-image", "terraform", "hadolint"} <= set(all_jobs)
    assert "make lint typecheck" in script_lines(all_jobs["lint"])
    assert "make test" in script_lines(all_jobs["test"])
    # The contract's steps run under raw_exec with the job's own Python: Nomad must run in the job's container.
    integration = all_jobs["integration"]
    assert not any("nomad" in str(service) for service in integration.get("services", []))
    assert integration["variables"]["CARAVAN_TEST_NOMAD_ADDR"] == "http://127.0.0.1:4646"
    (agent,) = [line for line in script_lines(integration) if line.startswith("nomad agent -dev")]
    assert "-config=/tmp/agent.hcl" in agent
    assert any('plugin "raw_exec"' in line and "enabled = true" in line for line in script_lines(integration))
    terraform = " ".join(script_lines(all_jobs["terraform"]))
    assert "fmt -check" in terraform and "validate" in terraform
    pushed = script_lines(all_jobs["build-image"])
    assert any(re.search(r'docker push "\$IMAGE:\$CI_COMMIT_TAG"', line) for line in pushed)



def test_the_integration_job_runs_the_suites_with_production_tokens_on_agents_with_acls():
    """ACLs on in both agents, bootstrapped, the Terraform policies applied, and the contract suites run with the
    tokens caravan holds in production (and nothing else); then the production-ACL tests."""
    integration = jobs()["integration"]
    lines = script_lines(integration)
    (config,) = [line for line in lines if "> /tmp/agent.hcl" in line]
    assert re.search(r"acl \{\\n\s*enabled = true\\n\}", config), config
    consul = json.loads(integration["variables"]["CONSUL_LOCAL_CONFIG"])
    assert consul["acl"]["enabled"] is True and consul["acl"]["default_policy"] == "deny"
    assert any("hashicorp/consul" in str(service) for service in integration["services"])
    (bootstrap,) = [i for i, line in enumerate(lines) if ".ci/acl_bootstrap.py" in line]
    assert '--nomad "$CARAVAN_TEST_NOMAD_ADDR"' in lines[bootstrap] and '--consul "$CARAVAN_TEST_CONSUL_ADDR"' in \
        lines[bootstrap]
    (out,) = re.findall(r"--out (\S+)", lines[bootstrap])
    leader = max(i for i, line in enumerate(lines) if "/v1/status/leader" in line)
    contract = lines.index(f"(set -a; . {out}; exec .venv/bin/pytest tests/contract)")
    acl_tests = lines.index(".venv/bin/pytest tests/integration/test_acl_production.py tests/unit/test_acl_doubles.py")
    assert leader < bootstrap < contract < acl_tests
    assert (ROOT / "tests/integration/test_acl_production.py").is_file()
    conftest = (ROOT / "tests/conftest.py").read_text()
    assert '("CARAVAN_TEST_NOMAD_TOKEN", "NOMAD_TOKEN")' in conftest
    assert '("CARAVAN_TEST_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN")' in conftest


@contextlib.contextmanager
def acl_agents() -> Iterator[tuple[str, list[tuple[str, str, Any, str]]]]:
    """A stand-in for both agents' ACL endpoints: records (method, path, JSON body, token) and answers as
    Nomad and Consul do (bootstrap and token creation give a SecretID)."""
    seen: list[tuple[str, str, Any, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            token = self.headers.get("X-Nomad-Token") or self.headers.get("X-Consul-Token") or ""
            seen.append((self.command, self.path, body, token))
            reply: dict[str, Any] = {}
            if self.path.endswith(("/acl/bootstrap", "/acl/token")):
                reply = {"SecretID": f"secret-{len(seen)}-{self.path.split('/')[1]}", "AccessorID": "a"}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_PUT = do_POST = answer  # noqa: N815 - the stdlib's naming

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_acl_bootstrap_applies_terraforms_policies_and_hands_out_only_caravans_tokens(tmp_path, capsys):
    from tests.acl_policies import load_policies

    spec = importlib.util.spec_from_file_location("acl_bootstrap", ROOT / ".ci" / "acl_bootstrap.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "acl.env"
    with acl_agents() as (address, seen):
        assert module.main(["--nomad", address, "--consul", address, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    values = {"environment": "dev", "namespace": "default", "model": "ranker"}
    nomad_policies = {body["Name"]: body["Rules"] for _, path, body, _ in seen if path.startswith("/v1/acl/policy/")}
    assert nomad_policies == {f"caravan-dev-{kind}": rules for kind, rules in load_policies("nomad", **values).items()}
    consul_policies = {body["Name"]: body["Rules"] for _, path, body, _ in seen if path == "/v1/acl/policy"}
    assert set(consul_policies.values()) == set(load_policies("consul", **values).values())
    (management_nomad, management_consul) = [f"secret-{i + 1}-v1" for i, (_, path, _, _) in enumerate(seen)
                                             if path == "/v1/acl/bootstrap"]
    assert all(token in (management_nomad, management_consul) for _, path, _, token in seen
               if path != "/v1/acl/bootstrap"), "set-up calls use the management tokens"
    nomad_token = [body for _, path, body, _ in seen if path == "/v1/acl/token" and "Policies" in body
                   and isinstance(body["Policies"][0], str)]
    assert [sorted(b["Policies"]) for b in nomad_token] == [["caravan-dev-release", "caravan-dev-retrain"]]
    consul_token = [body for _, path, body, _ in seen if path == "/v1/acl/token" and body not in nomad_token]
    assert [b["Policies"] for b in consul_token] == [[{"Name": "caravan-dev-pipeline"}]]
    written = dict(line.split("=", 1) for line in out.read_text().splitlines())
    assert set(written) == {"CARAVAN_TEST_NOMAD_TOKEN", "CARAVAN_TEST_CONSUL_TOKEN"}
    assert management_nomad not in written.values() and management_consul not in written.values()
    assert out.stat().st_mode & 0o777 == 0o600
    for secret in [*written.values(), management_nomad, management_consul]:
        assert secret not in printed, "no token is printed"


def test_the_python_jobs_install_exactly_the_readmes_debian_prerequisites():
    """python:3.11-slim plus the README's Debian line is the bare machine the README promises to work on."""
    from tests.unit.test_system_deps import installed_packages, readme_prerequisites

    ci = load()
    assert ci["default"]["image"] == "python:3.11-slim"
    installs = [line for line in script_lines(ci[".python"]) if "apt-get install" in line]
    assert len(installs) == 1, installs
    command = installs[0].split("apt-get install", 1)[1].split(">")[0].split("&&")[0]
    installed = installed_packages("install " + command)
    assert "--no-install-recommends" in command.split(), "nothing but what the README names"
    readme = installed_packages(readme_prerequisites()["debian"][0])
    assert sorted(installed) == sorted(readme), f"CI installs {installed}, the README's Debian line {readme}"
    for name, job in jobs(ci).items():
        if "python:3.11-slim" in str(job.get("image", "")) and "before_script" in job:
            assert job["before_script"] == ci[".python"]["before_script"], f"{name} installs something else"


RELEASE_STAGES = {"publish-staging", "staging-test", "publish"}


def release_jobs() -> dict[str, dict[str, Any]]:
    return {name: job for name, job in jobs().items() if job.get("stage") in RELEASE_STAGES}


def runs_only_on_tags(job: Mapping[str, Any]) -> bool:
    if "only" in job or "except" in job or not job.get("rules"):
        return False
    return all(re.fullmatch(r"\$CI_COMMIT_TAG( && .+)?", str(rule.get("if", ""))) and "||" not in rule["if"]
               and rule.get("when") != "always" for rule in job["rules"])


def test_release_jobs_run_only_on_tags():
    releases = release_jobs()
    assert set(releases) == {"publish-staging", "staging-test", "publish-production"}
    for name, job in releases.items():
        assert runs_only_on_tags(job), name
        assert job.get("interruptible") is False, f"{name}: a newer pipeline must not cancel a release halfway"
    for name, job in jobs().items():
        if name not in releases:
            assert not any("caravan publish" in line for line in script_lines(job)), name


@pytest.mark.parametrize("rules", [
    None, [{"if": "$CI_COMMIT_BRANCH"}], [{"if": "$CI_COMMIT_TAG || $CI_COMMIT_BRANCH == 'main'"}],
    [{"if": "$CI_COMMIT_TAG"}, {"when": "manual"}], [{"if": "$CI_COMMIT_TAG", "when": "always"}],
])
def test_the_tag_rule_check_rejects_other_triggers(rules):
    job: dict[str, Any] = {"stage": "publish"}
    if rules is not None:
        job["rules"] = rules
    assert not runs_only_on_tags(job)
    assert not runs_only_on_tags({"only": ["tags", "branches"], "rules": [{"if": "$CI_COMMIT_TAG"}]})


PUBLISH = '.venv/bin/caravan publish --version "$CI_COMMIT_TAG"'


@pytest.mark.parametrize(("name", "stage", "namespace", "environment", "manual", "publish"), [
    # Staging promotes its serving canary by itself, so that staging-test reaches the new version.
    ("publish-staging", "publish-staging", "caravan-staging", "staging", False, f"{PUBLISH} --var auto_promote=true"),
    ("publish-production", "publish", "caravan", "production", True, PUBLISH),
])
def test_each_environment_gets_the_release_in_its_own_namespace(name, stage, namespace, environment, manual,
                                                                 publish):
    job = jobs()[name]
    assert job["stage"] == stage
    assert job["variables"]["NOMAD_NAMESPACE"] == namespace
    assert job["environment"]["name"] == environment
    assert job["resource_group"] == environment, "one release at a time per environment"
    assert any(rule.get("when") == "manual" for rule in job["rules"]) is manual
    assert [line for line in script_lines(job) if "caravan publish" in line] == [publish]
    # The image caravan publish writes into the specs is the one build-image pushed for this tag.
    assert job["variables"]["CARAVAN_IMAGE_REPOSITORY"] == "$IMAGE"
    # caravan logs in to Vault with the CI AppRole and reads the Nomad token itself.
    assert job["variables"]["CARAVAN_SECRETS"] == "vault"


def test_every_publish_var_is_declared_by_a_spec_with_a_value_of_its_type():
    from caravan.publish import coerce, read_spec

    declared: dict[str, str] = {}
    for path in sorted((ROOT / "nomad").glob("*.nomad.hcl")):
        declared.update(read_spec(path).variables)
    flags = [flag for job in release_jobs().values() for line in script_lines(job) if "caravan publish" in line
             for flag in re.findall(r"--var[ =](\S+)", line)]
    assert "auto_promote=true" in flags
    for flag in flags:
        name, _, value = flag.partition("=")
        assert name in declared, f"--var {flag}: no spec declares {name} (caravan publish would refuse it)"
        coerce(name, value, declared[name])  # raises on a value of the wrong type


def test_staging_is_tested_between_the_two_publishes():
    job = jobs()["staging-test"]
    assert STAGES.index("publish-staging") < STAGES.index(job["stage"]) < STAGES.index("publish")
    assert job["environment"] == {"name": "staging", "action": "verify"}
    assert job["resource_group"] == "staging", "no other release of staging while it is being tested"
    lines = script_lines(job)
    # Waiting first also fails the job on an empty URL, before a test could fall back to a server of its own.
    (wait,) = [i for i, line in enumerate(lines) if ".ci/wait_healthy.py" in line]
    assert 'python .ci/wait_healthy.py "$CARAVAN_TEST_SERVING_URL"' in lines[wait]
    assert '--release "$CI_COMMIT_TAG"' in lines[wait], "an old allocation of the canary update answers ok too"
    contract = lines.index(".venv/bin/pytest tests/integration/test_served_contract.py")
    assert "CARAVAN_TEST_SERVING_URL" in (ROOT / "tests/integration/test_served_contract.py").read_text()
    (bench,) = [i for i, line in enumerate(lines) if "bench/serving.py" in line]
    assert wait < contract < bench
    assert '--url "$CARAVAN_TEST_SERVING_URL"' in lines[bench], "the load test targets the staging server"
    declared = set(re.findall(r'add_argument\("(--[\w-]+)"', (ROOT / "bench/serving.py").read_text()))
    used = set(re.findall(r"(--[\w-]+)", lines[bench]))
    assert used <= declared, f"bench/serving.py has no {sorted(used - declared)}"


def test_the_variables_naming_real_servers_reach_the_tests():
    """tests/conftest.py clears a developer's CARAVAN_* settings, but not CI's CARAVAN_TEST_* ones."""
    env = {**os.environ, "CARAVAN_TEST_SERVING_URL": "http://staging.example:8080", "CARAVAN_POINTER": "consul"}
    code = ("import os, tests.conftest; "
            "print(os.environ.get('CARAVAN_TEST_SERVING_URL'), os.environ.get('CARAVAN_POINTER'))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["http://staging.example:8080", "None"]


# -- no secret in the file, none printed -----------------------------------------------------------------

SECRET_NAME = re.compile(r"TOKEN|SECRET(_ID|_KEY)?$|SECRET_ACCESS_KEY|PASSWORD|PASSWD|PRIVATE_KEY|CREDENTIAL|API_KEY",
                         re.IGNORECASE)
CREDENTIAL = re.compile(r"\b(hvs|hvb|s|b)\.[A-Za-z0-9_-]{20,}|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                        r"[0-9a-f]{12}\b|\bAKIA[0-9A-Z]{16}\b|\bglpat-[A-Za-z0-9_-]{20}|-----BEGIN [A-Z ]*PRIVATE KEY")


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def secret_problems(ci: Mapping[str, Any]) -> list[str]:
    """Secrets written into the pipeline, or lines that would print one into the job log."""
    found = [f"credential-looking literal: {text[:40]}" for text in strings(ci) if CREDENTIAL.search(text)]
    scopes = {"(global)": ci.get("variables", {})}
    scopes.update({name: body.get("variables", {}) for name, body in ci.items() if isinstance(body, Mapping)})
    for scope, variables in scopes.items():
        for name in variables or {}:
            if SECRET_NAME.search(name):
                found.append(f"{scope}: {name} is set in the file; it must be a protected, masked CI variable")
    for name, body in ci.items():
        if not isinstance(body, Mapping):
            continue
        for line in script_lines(body):
            if re.search(r"\bset\s+(-\w*x|-o\s+xtrace)", line):
                found.append(f"{name}: `{line}` echoes every command with its expanded secrets")
            if re.search(r"(^|[;&|]\s*)(printenv|env)\s*($|[;&>])", line):
                found.append(f"{name}: `{line}` prints the environment")
            for var in re.findall(r"\b(?:echo|printf|cat)\b[^|]*?\$\{?(\w+)", line):
                if SECRET_NAME.search(var) and "|" not in line.split(var, 1)[1]:
                    found.append(f"{name}: `{line}` prints {var}")
            if re.search(r"\bexport\s+\w+=[\"']?\$\(", line):
                found.append(f"{name}: `{line}`: export hides the command's failure; assign, then export")
            for var, value in re.findall(r"\b(\w+)=(\S+)", line):
                if SECRET_NAME.search(var) and not value.lstrip("\"'").startswith("$"):
                    found.append(f"{name}: `{line}` sets {var} to a literal")
            if re.search(r"\s(-p|--password)(\s|=)", line):
                found.append(f"{name}: `{line}` puts a password on a command line (use --password-stdin)")
            if "|| true" in line:
                found.append(f"{name}: `{line}` hides a failure")
    return found


def test_no_secret_in_the_pipeline():
    assert secret_problems(load()) == []


@pytest.mark.parametrize(("bad", "expected"), [
    ({"variables": {"VAULT_SECRET_ID": "$SOMETHING"}}, "VAULT_SECRET_ID is set in the file"),
    ({"job": {"variables": {"CONSUL_HTTP_TOKEN": "0b6b1e5e-8c4f-4bd5-9d43-0c1a2b3c4d5e"}}}, "credential-looking"),
    ({"job": {"script": ["export NOMAD_TOKEN=hvs.CAESIJ0123456789abcdefghijkl"]}}, "credential-looking"),
    ({"job": {"script": ["NOMAD_TOKEN=letmein caravan publish --version v1"]}}, "sets NOMAD_TOKEN to a literal"),
    ({"job": {"script": ['echo "token is $NOMAD_TOKEN"']}}, "prints NOMAD_TOKEN"),
    ({"job": {"script": ["set -x", "caravan publish"]}}, "echoes every command"),
    ({"job": {"before_script": ["printenv"]}}, "prints the environment"),
    ({"job": {"script": ['export NOMAD_TOKEN="$(vault kv get -field=token secret/caravan/nomad)"']}}, "export hides"),
    ({"job": {"script": ['docker login -u me -p "$CI_REGISTRY_PASSWORD" registry']}}, "password on a command line"),
    ({"job": {"script": ["make test || true"]}}, "hides a failure"),
])
def test_the_secret_checker_catches_each_leak(bad, expected):
    problems = secret_problems(bad)
    assert any(expected in problem for problem in problems), problems


def test_piping_a_secret_into_a_command_is_not_printing_it():
    ci = {"job": {"script": ['printf \'%s\' "$CI_REGISTRY_PASSWORD" | docker login --password-stdin registry',
                             'NOMAD_TOKEN="$(cat /run/secrets/nomad)"', "export NOMAD_TOKEN"]}}
    assert secret_problems(ci) == []


# -- .ci/wait_healthy.py, which staging-test runs first ------------------------------------------------------


def wait_healthy() -> Any:
    spec = importlib.util.spec_from_file_location("wait_healthy", ROOT / ".ci" / "wait_healthy.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextlib.contextmanager
def health_server(answers: list[tuple[int, bytes]]) -> Iterator[tuple[str, list[bytes]]]:
    """A stand-in for a deployed server whose /health gives ``answers`` in turn, then the last one forever."""
    seen: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = answers.pop(0) if len(answers) > 1 else answers[0]
            seen.append(body)
            self.send_response(status if self.path == "/health" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def model_server():
    """/health answers 503 "loading" twice, then 200 "ok"."""
    with health_server([(503, b'{"status": "loading", "model": null}')] * 2 +
                       [(200, b'{"status": "ok", "model": "m1"}')]) as (url, _):
        yield url


def test_wait_healthy_waits_for_ok(model_server, capsys):
    assert wait_healthy().main([model_server + "/", "--timeout-s", "5", "--interval-s", "0.01"]) == 0
    assert "serving model m1" in capsys.readouterr().out


@pytest.fixture
def rolling_server():
    """A deployment mid-update: healthy answers from release v1, then from v2 only."""
    with health_server([(200, b'{"status": "ok", "model": "m1", "release": "v1"}')] * 3 +
                       [(200, b'{"status": "ok", "model": "m1", "release": "v2"}')]) as server:
        yield server


def test_wait_healthy_waits_for_the_release_several_times_in_a_row(rolling_server, capsys):
    url, seen = rolling_server
    assert wait_healthy().main([url, "--release", "v2", "--consecutive", "3", "--timeout-s", "5",
                                "--interval-s", "0.01"]) == 0
    assert len(seen) == 6, "three old answers, then three in a row from the new release"
    assert "release v2" in capsys.readouterr().out
    assert wait_healthy().main([url, "--release", "v3", "--timeout-s", "0.3", "--interval-s", "0.05"]) == 1
    assert "release 'v2' answered, not 'v3'" in capsys.readouterr().err


def test_wait_healthy_gives_up_after_its_timeout(capsys):
    with ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler) as closed:
        url = f"http://127.0.0.1:{closed.server_address[1]}"
    assert wait_healthy().main([url, "--timeout-s", "0.2", "--interval-s", "0.05"]) == 1
    assert "not healthy after" in capsys.readouterr().err
