"""The Nomad double renders ``template`` blocks from a real OpenBao (and the Consul double) as a Nomad client does.

Jobs are dispatched and read through python-nomad; secrets are written with hvac. The client's token is a
scoped one (read on this module's prefix only), as the token a task's workload identity gives would be.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nomad
from caravan import StepFailed
from pipelines.example import MakeNumbers

from ..doubles.consul import ConsulDouble
from ..doubles.nomad import NomadDouble
from ..doubles.nomad.templates import (
    MissingDependency,
    Sources,
    TemplateError,
    UnsupportedAction,
    parse,
    parse_env,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = f"tmpl-{uuid.uuid4().hex[:8]}"
ZERO_TIME = "0001-01-01T00:00:00Z"


@pytest.fixture(scope="module")
def vault(vault_server: tuple[str, str]) -> dict[str, Any]:
    """The session's OpenBao with this module's secrets and a token that may read only them."""
    address, root_token = vault_server
    admin = hvac.Client(url=address, token=root_token)
    kv = admin.secrets.kv.v2
    written = kv.create_or_update_secret(f"{PREFIX}/db", secret={"user": "app", "password": "pw-1"})
    kv.create_or_update_secret(f"{PREFIX}-elsewhere/db", secret={"password": "not-for-you"})
    policy = f"tmpl-{PREFIX}"
    admin.sys.create_or_update_policy(policy, f'path "secret/data/{PREFIX}/*" {{ capabilities = ["read"] }}\n')
    token = admin.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"]
    return {"address": address, "admin": admin, "token": token, "version": written["data"]["version"]}


@pytest.fixture(scope="module")
def consul_addr() -> Iterator[str]:
    double = ConsulDouble(lock_delay_s=0.0)
    yield double.start()
    double.stop()


@pytest.fixture(scope="module")
def double(vault: dict[str, Any], consul_addr: str) -> Iterator[NomadDouble]:
    with NomadDouble(vault_addr=vault["address"], vault_token=vault["token"], consul_addr=consul_addr,
                     kill_timeout_s=2.0) as server:
        yield server


@pytest.fixture
def n(double: NomadDouble) -> nomad.Nomad:
    return nomad.Nomad(address=double.address, timeout=10)


def hcl(job_id: str, templates: list[dict[str, Any]], script: str, *, vault_block: bool = True,
        env: dict[str, str] | None = None, parameterized: bool = False) -> str:
    """A one-task batch job running ``python -c script``; json.dumps quotes strings the way HCL reads them."""
    blocks = []
    for template in templates:
        body = "\n".join(f"        {k} = {json.dumps(v)}" for k, v in template.items())
        blocks.append(f"      template {{\n{body}\n      }}")
    env_lines = "\n".join(f"        {k} = {json.dumps(v)}" for k, v in (env or {}).items())
    return f"""
job "{job_id}" {{
  type = "batch"
  {'parameterized { payload = "forbidden" }' if parameterized else ""}
  group "g" {{
    restart {{
      attempts = 0
      mode     = "fail"
    }}
    reschedule {{
      attempts  = 0
      unlimited = false
    }}
    task "t" {{
      driver = "raw_exec"
      config {{
        command = "python"
        args    = ["-c", {json.dumps(script)}]
      }}
      env {{
{env_lines}
      }}
      {'vault { role = "tmpl-test" }' if vault_block else ""}
{chr(10).join(blocks)}
    }}
  }}
}}
"""


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def finished(n: nomad.Nomad, job_id: str, timeout_s: float = 15) -> dict[str, Any]:
    """The job's only allocation once the job is dead (followed with blocking queries)."""
    index, deadline = 0, time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = n.job.request(job_id, method="get", params={"index": index, "wait": "5s"}, timeout=10)
        index = int(response.headers["X-Nomad-Index"])
        if response.json()["Status"] == "dead":
            (alloc,) = n.job.get_allocations(job_id)
            return n.allocation.get_allocation(alloc["ID"])
    raise AssertionError(f"{job_id} never finished")


def run(double: NomadDouble, n: nomad.Nomad, text: str) -> dict[str, Any]:
    """Register a plain batch job (it runs at once) and return its finished allocation."""
    return finished(n, double.load_hcl(text))


def events(alloc: dict[str, Any]) -> list[dict[str, Any]]:
    return alloc["TaskStates"]["t"]["Events"]


def stdout(n: nomad.Nomad, alloc: dict[str, Any], kind: str = "stdout") -> str:
    return str(n.client.stream_logs.stream(alloc["ID"], "t", kind, plain=True))


def assert_failed_before_start(alloc: dict[str, Any], message_part: str) -> dict[str, Any]:
    """The task was failed by its template and its command never ran; the Killing event is returned."""
    state = alloc["TaskStates"]["t"]
    assert alloc["ClientStatus"] == "failed" and state["State"] == "dead" and state["Failed"] is True
    assert state["StartedAt"] == ZERO_TIME
    kinds = [e["Type"] for e in state["Events"]]
    assert "Started" not in kinds and "Terminated" not in kinds
    killing = state["Events"][-1]
    assert killing["Type"] == "Killing" and killing["FailsTask"] is True
    assert killing["Details"]["fails_task"] == "true"
    assert killing["DisplayMessage"].startswith("Template failed")
    assert message_part in killing["DisplayMessage"]
    return killing


SECRET_ENV = """{{ with secret "secret/data/PREFIX/db" -}}
DB_PASSWORD={{ .Data.data.password }}
DB_USER={{ .Data.data.user }}
DB_VERSION={{ .Data.metadata.version }}
{{ end -}}
# the runtime's own variables win over a template's
NOMAD_JOB_ID=from-template
""".replace("PREFIX", PREFIX)
PRINT_ENV = ("import json, os; print(json.dumps({k: os.environ.get(k) for k in "
             "('DB_PASSWORD', 'DB_USER', 'DB_VERSION', 'SPEC_ONLY', 'NOMAD_JOB_ID')}, sort_keys=True))")


# -- rendering into the task -------------------------------------------------------------------------------

def test_a_dispatched_task_gets_its_secrets_as_environment_variables(double, n, vault):
    parent = unique("secret-env")
    double.load_hcl(hcl(parent, [{"data": SECRET_ENV, "destination": "secrets/db.env", "env": True,
                                  "error_on_missing_key": True}], PRINT_ENV,
                        env={"DB_USER": "from-spec", "SPEC_ONLY": "spec"}, parameterized=True))
    child = n.job.dispatch_job(parent)["DispatchedJobID"]
    alloc = finished(n, child)
    assert alloc["ClientStatus"] == "complete", events(alloc)
    assert [e["Type"] for e in events(alloc)] == ["Received", "Task Setup", "Started", "Terminated"]
    seen = json.loads(stdout(n, alloc))
    assert seen == {"DB_PASSWORD": "pw-1", "DB_USER": "app", "DB_VERSION": str(vault["version"]),
                    "SPEC_ONLY": "spec", "NOMAD_JOB_ID": child}, "template over env block, runtime over template"
    rendered = double.task_dir(alloc["ID"], "t") / "secrets" / "db.env"
    assert "DB_PASSWORD=pw-1\n" in rendered.read_text()


def test_destinations_permissions_and_the_vault_token(double, n, vault):
    data = f'user={{{{ with secret "secret/data/{PREFIX}/db" }}}}{{{{ .Data.data.user }}}}{{{{ end }}}}\n'
    script = ("import os; print(os.environ['VAULT_TOKEN'] == open(os.path.join(os.environ['NOMAD_SECRETS_DIR'], "
              "'vault_token')).read())")
    alloc = run(double, n, hcl(unique("files"), [
        {"data": data, "destination": "local/conf/app.conf", "perms": "0600"},
        {"data": "shared={{ env \"NOMAD_ALLOC_INDEX\" }}\n", "destination": "alloc/shared.txt"},
        {"data": "x", "destination": "${NOMAD_SECRETS_DIR}/interpolated.txt"},
    ], script))
    assert alloc["ClientStatus"] == "complete", events(alloc)
    assert stdout(n, alloc) == "True\n", "VAULT_TOKEN and secrets/vault_token carry the client's token"
    task_dir = double.task_dir(alloc["ID"], "t")
    conf = task_dir / "local" / "conf" / "app.conf"
    assert conf.read_text() == "user=app\n" and conf.stat().st_mode & 0o777 == 0o600
    shared = task_dir.parent / "alloc" / "shared.txt"
    assert shared.read_text() == "shared=0\n" and shared.stat().st_mode & 0o777 == 0o644
    assert (task_dir / "secrets" / "interpolated.txt").read_text() == "x"
    assert (task_dir / "secrets" / "vault_token").stat().st_mode & 0o777 == 0o600


def test_env_function_sees_the_task_environment_only(double, n):
    data = 'GREETING=hello {{ env "WHO" }} from {{ env "NOMAD_TASK_NAME" }}, home={{ env "HOME" }}\n'
    alloc = run(double, n, hcl(unique("env-fn"), [{"data": data, "destination": "local/greeting.env",
                                                   "env": True}],
                               "import os; print(os.environ['GREETING'])", vault_block=False, env={"WHO": "world"}))
    assert alloc["ClientStatus"] == "complete", events(alloc)
    assert stdout(n, alloc) == "hello world from t, home=\n", "the agent's own HOME is masked"


def test_consul_keys_and_defaults(double, n, consul_addr):
    import consul

    host, port = consul_addr.split("://")[1].split(":")
    key = f"{PREFIX}/current"
    consul.Consul(host=host, port=int(port)).kv.put(key, "model-7")
    data = (f'CURRENT={{{{ key "{key}" }}}}\nOTHER={{{{ keyOrDefault "{PREFIX}/absent" "none" }}}}\n'
            f'HAS={{{{ keyExists "{key}" }}}}\n')
    alloc = run(double, n, hcl(unique("consul"), [{"data": data, "destination": "local/kv.env", "env": True}],
                               "import os; print(os.environ['CURRENT'], os.environ['OTHER'], os.environ['HAS'])",
                               vault_block=False))
    assert stdout(n, alloc) == "model-7 none true\n"
    missing = run(double, n, hcl(unique("consul-missing"), [{"data": f'{{{{ key "{PREFIX}/never" }}}}',
                                                             "destination": "local/x"}], "print(1)",
                                 vault_block=False))
    assert_failed_before_start(missing, f"kv.block({PREFIX}/never)")
    assert events(missing)[-2]["DisplayMessage"] == f"Missing: kv.block({PREFIX}/never)"


def test_a_missing_field_renders_no_value_unless_error_on_missing_key(double, n):
    data = f'{{{{ with secret "secret/data/{PREFIX}/db" }}}}NOPE={{{{ .Data.data.nope }}}}{{{{ end }}}}\n'
    lenient = run(double, n, hcl(unique("no-value"), [{"data": data, "destination": "secrets/a.env", "env": True}],
                                 "import os; print(os.environ['NOPE'])"))
    assert stdout(n, lenient) == "<no value>\n"
    before = double.processes_started
    strict = run(double, n, hcl(unique("missing-key"), [{"data": data, "destination": "secrets/a.env", "env": True,
                                                         "error_on_missing_key": True}], "print(1)"))
    assert_failed_before_start(strict, 'map has no entry for key "nope"')
    assert double.processes_started == before


# -- failures ------------------------------------------------------------------------------------------------

def test_a_missing_secret_path_fails_the_task_with_events_naming_the_path(double, n):
    path = f"secret/data/{PREFIX}/absent"
    before = double.processes_started
    alloc = run(double, n, hcl(unique("absent"), [{"data": f'{{{{ with secret "{path}" }}}}X={{{{ end }}}}',
                                                   "destination": "secrets/x.env", "env": True}], "print(1)"))
    killing = assert_failed_before_start(alloc, f"vault.read({path})")
    assert f"no secret exists at {path}" in killing["DisplayMessage"]
    kinds = [e["Type"] for e in events(alloc)]
    assert kinds == ["Received", "Task Setup", "Template", "Killing"]
    assert events(alloc)[2]["DisplayMessage"] == f"Missing: vault.read({path})"
    assert double.processes_started == before, "the command never ran"
    assert n.job.get_summary(alloc["JobID"])["Summary"]["g"]["Failed"] == 1


def test_a_path_outside_the_tokens_policy_is_forbidden(double, n):
    path = f"secret/data/{PREFIX}-elsewhere/db"
    alloc = run(double, n, hcl(unique("forbidden"), [{"data": f'{{{{ with secret "{path}" }}}}'
                                                              '{{ .Data.data.password }}{{ end }}',
                                                      "destination": "secrets/x"}], "print(1)"))
    killing = assert_failed_before_start(alloc, f"vault.read({path})")
    assert "403" in killing["DisplayMessage"] and "not-for-you" not in json.dumps(alloc)


def test_a_secret_in_a_task_without_a_vault_block_fails(double, n):
    alloc = run(double, n, hcl(unique("no-vault"), [{"data": SECRET_ENV, "destination": "secrets/db.env",
                                                     "env": True}], "print(1)", vault_block=False))
    killing = assert_failed_before_start(alloc, f"vault.read(secret/data/{PREFIX}/db)")
    assert "no vault block" in killing["DisplayMessage"]


def test_an_unsupported_action_fails_the_task_naming_it(double, n):
    alloc = run(double, n, hcl(unique("unsupported"), [{"data": "{{ range ls \"x\" }}{{ .Key }}{{ end }}",
                                                        "destination": "local/x"}], "print(1)", vault_block=False))
    assert_failed_before_start(alloc, "{{ range }} is not supported")
    alloc = run(double, n, hcl(unique("unsupported-fn"), [{"data": "A={{ env \"X\" | toJSON }}",
                                                           "destination": "local/x"}], "print(1)", vault_block=False))
    assert_failed_before_start(alloc, 'function "toJSON" is not supported')


def test_a_destination_outside_the_task_dir_is_refused(double, n):
    alloc = run(double, n, hcl(unique("escape"), [{"data": "x", "destination": "../../escaped"}], "print(1)",
                               vault_block=False))
    assert_failed_before_start(alloc, "template destination path escapes alloc directory")


def test_a_template_failure_surfaces_as_the_executors_step_failed(double, monkeypatch, local_root):
    """A project step whose token may not read its storage secret: the executor raises StepFailed."""
    double.load_hcl(ROOT / "nomad" / "make-numbers.nomad.hcl")
    monkeypatch.setenv("CARAVAN_EXECUTOR", "nomad")
    monkeypatch.setenv("NOMAD_ADDR", double.address)
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(ROOT / "nomad"))
    task = MakeNumbers(date=dt.date(2026, 11, 1), count=10)
    with pytest.raises(StepFailed) as info:
        task.run()
    assert info.value.job_id.startswith("make-numbers/dispatch-") and info.value.alloc_ids
    alloc = nomad.Nomad(address=double.address, timeout=10).allocation.get_allocation(info.value.alloc_ids[0])
    killing = alloc["TaskStates"]["step"]["Events"][-1]
    assert killing["Type"] == "Killing"
    assert "vault.read(secret/data/caravan/dev/storage)" in killing["DisplayMessage"]
    assert not task.output().exists()


# -- no secret leaves the task directory -------------------------------------------------------------------

def test_no_response_event_or_log_carries_a_secret(double, n, vault):
    marker = f"marker-{uuid.uuid4().hex}"
    vault["admin"].secrets.kv.v2.create_or_update_secret(f"{PREFIX}/leak", secret={"value": marker})
    bodies: list[bytes] = []
    double.response_hook = lambda method, path, status, body: bodies.append(body)
    try:
        good = f'{{{{ with secret "secret/data/{PREFIX}/leak" }}}}LEAK={{{{ .Data.data.value }}}}{{{{ end }}}}\n'
        digest = "import hashlib, os; print(hashlib.sha256(os.environ['LEAK'].encode()).hexdigest())"
        ok = run(double, n, hcl(unique("leak"), [{"data": good, "destination": "secrets/leak.env", "env": True}],
                                digest))
        assert stdout(n, ok) == hashlib.sha256(marker.encode()).hexdigest() + "\n", "the secret reached the task"
        # Failing after the value was read: an env file that does not parse, and a bad field after the value.
        broken = f'{{{{ with secret "secret/data/{PREFIX}/leak" }}}}{{{{ .Data.data.value }}}}{{{{ end }}}}\n'
        bad_env = run(double, n, hcl(unique("leak-env"), [{"data": broken, "destination": "secrets/b.env",
                                                           "env": True}], "print(1)"))
        assert bad_env["TaskStates"]["t"]["Events"][-1]["DisplayMessage"].startswith(
            "Template failed to read environment variables")
        late = (f'{{{{ with secret "secret/data/{PREFIX}/leak" }}}}{{{{ .Data.data.value }}}}'
                '{{ .Data.data.value.deeper }}{{ end }}')
        bad_field = run(double, n, hcl(unique("leak-field"), [{"data": late, "destination": "secrets/c"}],
                                       "print(1)"))
        assert_failed_before_start(bad_field, "can't evaluate field deeper in type string")
        # Read everything anyone could read, so that it passes through the hook too.
        for alloc in (ok, bad_env, bad_field):
            n.job.get_job(alloc["JobID"])
            n.job.get_allocations(alloc["JobID"])
            n.job.get_evaluations(alloc["JobID"])
            n.job.get_summary(alloc["JobID"])
            n.allocation.get_allocation(alloc["ID"])
            for kind in ("stdout", "stderr"):
                if alloc["TaskStates"]["t"]["StartedAt"] != ZERO_TIME:
                    stdout(n, alloc, kind)
                    n.client.stream_logs.stream(alloc["ID"], "t", kind, plain=False)
        n.jobs.get_jobs()
    finally:
        double.response_hook = None
    assert len(bodies) > 20
    leaks = [body[:200] for body in bodies if marker.encode() in body]
    assert leaks == [], "a response carried the secret"
    for alloc in (ok, bad_env, bad_field):
        assert marker not in json.dumps(n.allocation.get_allocation(alloc["ID"])["TaskStates"])
    assert marker not in json.dumps(double.requests) + json.dumps(double.dispatch_requests)
    # On disk, only the rendered files hold it: never the logs the double writes.
    holders = []
    for alloc in (ok, bad_env, bad_field):
        alloc_dir = double.task_dir(alloc["ID"], "t").parent
        holders += [str(p.relative_to(alloc_dir)) for p in alloc_dir.rglob("*")
                    if p.is_file() and marker.encode() in p.read_bytes()]
    assert sorted(holders) == ["t/secrets/b.env", "t/secrets/leak.env"], "bad_field wrote nothing"


# -- the template language -----------------------------------------------------------------------------------

def test_the_renderer_refuses_what_it_does_not_implement():
    for text, named in (('{{ range ls "x" }}{{ end }}', "{{ range }}"), ('{{ printf "%s" "a" }}', '"printf"'),
                        ("{{ $x := 1 }}", "$x"), ('{{ nomadService "web" }}', '"nomadService"'),
                        ('{{ template "t" }}', "{{ template }}")):
        with pytest.raises(UnsupportedAction, match=named.replace("$", r"\$").replace("{", r"\{")):
            parse(text, "local/x")
    for text, message in (("{{ if 1 }}", "has no {{ end }}"), ("{{ end }}", "unexpected {{ end }}"),
                          ('{{ env "x }}', "unterminated quoted string"), ("{{ }}", "missing value")):
        with pytest.raises(TemplateError, match=message.replace("{", r"\{")):
            parse(text, "local/x")


def test_index_tolerates_missing_keys_even_when_fields_may_not_be_missing():
    template = parse('{{ with index .Data.data "token" }}TOKEN={{ . }}{{ end }}|{{ index .Data.data "n" }}'
                     '|{{ (index .Data.list 1) }}', "t")
    data = {"data": {"data": {"n": None}, "list": ["a", "b"]}}
    secret = Sources(secret=lambda path: data)
    wrapped = parse('{{ with secret "p" }}' + template.text + "{{ end }}", "t")
    assert render(wrapped, secret, error_on_missing_key=True) == "|<nil>|b"
    data["data"]["data"]["token"] = "tok"
    assert render(wrapped, secret, error_on_missing_key=True) == "TOKEN=tok|<nil>|b"


def test_missing_data_is_a_dependency_to_wait_for():
    with pytest.raises(MissingDependency) as info:
        render(parse('{{ with secret "secret/data/x" }}{{ end }}'), Sources(secret=lambda path: None))
    assert info.value.dependency == "vault.read(secret/data/x)" and info.value.retry
    with pytest.raises(MissingDependency) as info:
        render(parse('{{ key "k" }}'), Sources(key=lambda key: None))
    assert info.value.dependency == "kv.block(k)"
    assert render(parse('{{ keyOrDefault "k" "d" }}'), Sources(key=lambda key: None)) == "d"


def test_env_files_follow_go_envparse():
    text = 'A=1\n\n  # a comment\nexport B = "x\\"y\\n" # trailing\nC=\'q #\'  \nD=a b # c\nE=\nF= spaced  \n'
    assert parse_env(text) == {"A": "1", "B": 'x"y\n', "C": "q #", "D": "a b", "E": "", "F": "spaced"}
    for bad in ("NOEQUALS", "1A=x", '=x', 'A="open', "A='open"):
        with pytest.raises(ValueError, match="line 1"):
            parse_env(bad)


_DELIMS = st.sampled_from([("{{", "}}"), ("[[", "]]"), ("<%", "%>")])
_VALUE = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=30)


@settings(max_examples=150)
@given(text=st.text(max_size=200), delims=_DELIMS)
def test_text_without_a_left_delimiter_renders_to_itself(text, delims):
    left, right = delims
    if left in text:
        text = text.replace(left, "")
    if left in text:  # removing one occurrence can make another ("{{{" -> "{")
        return
    assert render(parse(text, "t", left, right)) == text


@settings(max_examples=150)
@given(before=st.text(max_size=20), after=st.text(max_size=20), value=st.text(max_size=20))
def test_trim_markers_eat_the_whitespace_beside_them(before, after, value):
    before, after = before.replace("{{", ""), after.replace("{{", "")
    if "{{" in before + after or before.endswith("{") or "{" in after[:1]:
        return
    template = parse(before + '{{- env "V" -}}' + after, "t")
    assert render(template, Sources(env={"V": value})) == before.rstrip(" \t\r\n") + value + after.lstrip(" \t\r\n")


_KEY = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)


@settings(max_examples=150)
@given(env=st.dictionaries(_KEY, _VALUE.filter(lambda v: all(ord(c) >= 32 for c in v)), max_size=8))
def test_env_files_round_trip_double_quoted_values(env):
    def quoted(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    text = "".join(f"{key}={quoted(value)}\n" for key, value in env.items())
    assert parse_env(text) == env


@settings(max_examples=150)
@given(env=st.dictionaries(_KEY, st.from_regex(r"[A-Za-z0-9_./:@+=-]([A-Za-z0-9_./:@+= -]*[A-Za-z0-9_./:@+=-])?",
                                               fullmatch=True), max_size=8))
def test_env_files_round_trip_plain_values_through_a_template(env):
    template = parse("".join(f'{key}={{{{ env "{key}" }}}}\n' for key in env), "t")
    assert parse_env(render(template, Sources(env=env))) == env
