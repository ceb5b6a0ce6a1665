"""terraform/ and nomad/ as code review would hold them: everything parses, every variable is declared, and
every Consul, Vault and Nomad policy is exactly as narrow as the secrets contract (no write outside caravan/,
no Vault wildcard, each Vault role reading exactly its secrets). The checkers are tested on bad policies too.
Terraform itself is not run here; CI runs `terraform fmt -check` and `terraform validate`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
SPECS = ROOT / "nomad"
POLICIES = TF / "policies"

# -- the decided contract --------------------------------------------------------------------------------

STEPS = {"simulate-events", "prepare-dataset", "validate-data", "process-text", "train-lightgbm", "evaluate",
         "gate-model", "make-numbers", "summarize"}
STORAGE, CONSUL, NOMAD, SERVING = (f"secret/data/caravan/{name}" for name in ("storage", "consul", "nomad", "serving"))
# Vault policy (= JWT role for the jobs, AppRole for CI) => the paths it reads. Nothing else, nothing more.
VAULT_READS = {
    "caravan-step": {STORAGE},
    "caravan-retrain": {STORAGE, CONSUL, NOMAD},
    "caravan-serving": {STORAGE, SERVING},
    "caravan-ci": {NOMAD},
}
ROLE_JOBS = {
    "caravan-step": STEPS,
    "caravan-retrain": {"retrain-ranker", "retrain-ranker-backfill"},
    "caravan-serving": {"serving"},
}
CONSUL_PIPELINE = {("key_prefix", "caravan/models/"): "write", ("session_prefix", ""): "write"}
NOMAD_CAPABILITIES = {"list-jobs", "read-job", "parse-job", "submit-job", "dispatch-job", "read-logs", "read-fs"}

# -- parsing ---------------------------------------------------------------------------------------------

_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, preserve_heredocs=False,
                                     with_comments=False)


def parse(text: str) -> dict[str, Any]:
    """HCL as plain Python: blocks as lists of {label: body}, strings without their quotes."""
    return hcl2.loads(text, serialization_options=_OPTIONS)


def blocks(tree: Mapping[str, Any], kind: str) -> Iterator[tuple[str, Any]]:
    """(label, body) of every `kind "label" { ... }` block; bodies of repeated labels come one by one."""
    for entry in tree.get(kind, []):
        yield from entry.items()


def strings(value: Any) -> Iterator[str]:
    """Every string in a parsed tree, keys included."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield key
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def tf_files() -> list[Path]:
    return sorted(p for p in TF.rglob("*.tf") if ".terraform" not in p.parts)


def terraform() -> dict[str, dict[str, Any]]:
    """All .tf files merged: {"resource": {type: {name: body}}, "variable": {...}, "output": {...}, "locals": {...}}."""
    merged: dict[str, Any] = {"resource": {}, "data": {}, "variable": {}, "output": {}, "locals": {}, "provider": {},
                              "terraform": []}
    for path in tf_files():
        tree = parse(path.read_text())
        for kind, entries in tree.items():
            for entry in entries:
                if kind in ("resource", "data"):
                    for rtype, named in entry.items():
                        merged[kind].setdefault(rtype, {}).update(named)
                elif kind in ("variable", "output", "provider"):
                    merged[kind].update(entry)
                elif kind == "locals":
                    merged[kind].update(entry)
                else:
                    merged[kind].append(entry)
    return merged


def resource(tf: Mapping[str, Any], rtype: str, name: str) -> dict[str, Any]:
    body = tf["resource"].get(rtype, {}).get(name)
    assert body is not None, f"terraform/ has no resource {rtype}.{name}"
    return body


def render(template: str, **values: str) -> str:
    """A templatefile() of plain ${name} substitutions (the only kind the policy templates may use)."""
    names = set(re.findall(r"\$\{([^}]*)\}", template))
    assert names <= set(values), f"template uses {sorted(names - set(values))} beyond {sorted(values)}"
    assert "%{" not in template, "policy templates must not use template directives"
    return re.sub(r"\$\{([^}]*)\}", lambda m: values[m.group(1)], template)


def policy_file(expression: str, function: str = "file") -> Path:
    """The file a `file("${path.module}/…")` or `templatefile("${path.module}/…", {…})` expression loads."""
    match = re.fullmatch(r'\$\{' + function + r'\("\$\{path\.module\}/([^"]+)"(?:, \{.*\})?\)\}', expression)
    assert match, f"policy must be loaded with {function}(\"${{path.module}}/policies/...\"), got {expression!r}"
    return TF / match.group(1)


# -- the policy checkers ---------------------------------------------------------------------------------


class PolicyRejected(Exception):
    """A policy grants more than caravan may have; the message says what."""


VAULT_CAPABILITIES = {"create", "read", "update", "patch", "delete", "list", "sudo", "deny", "subscribe", "recover"}
VAULT_WRITES = {"create", "update", "patch", "delete", "sudo", "recover"}


def check_vault_policy(text: str) -> dict[str, frozenset[str]]:
    """path => capabilities. Rejects wildcards and templated paths anywhere, and writes outside caravan/."""
    try:
        tree = parse(text)
    except Exception as exc:  # any parse failure is a rejection, whatever python-hcl2 raises
        raise PolicyRejected(f"not HCL: {exc}") from None
    unknown = set(tree) - {"path"}
    if unknown:
        raise PolicyRejected(f"only path blocks are allowed, found {sorted(unknown)}")
    grants: dict[str, set[str]] = {}
    for path, body in blocks(tree, "path"):
        if not isinstance(path, str) or not path or re.search(r"[*+]|\{\{", path):
            raise PolicyRejected(f"wildcard or templated path {path!r}")
        caps = body.get("capabilities") if isinstance(body, Mapping) else None
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps) or not caps:
            raise PolicyRejected(f"path {path!r}: capabilities must be a list of names")
        if set(caps) - VAULT_CAPABILITIES:
            raise PolicyRejected(f"path {path!r}: unknown capabilities {sorted(set(caps) - VAULT_CAPABILITIES)}")
        if set(caps) & VAULT_WRITES and not path.startswith("secret/data/caravan/"):
            raise PolicyRejected(f"path {path!r}: {sorted(set(caps) & VAULT_WRITES)} outside secret/data/caravan/")
        grants.setdefault(path, set()).update(caps)
    return {path: frozenset(caps) for path, caps in grants.items()}


CONSUL_RESOURCES = {"acl", "agent", "agent_prefix", "event", "event_prefix", "identity", "identity_prefix", "key",
                    "key_prefix", "keyring", "mesh", "node", "node_prefix", "operator", "peering", "query",
                    "query_prefix", "service", "service_prefix", "session", "session_prefix"}


def check_consul_policy(text: str, *, sessions: bool) -> dict[tuple[str, str], str]:
    """(resource, name) => policy. Write only on keys under caravan/, and on sessions when `sessions`."""
    try:
        tree = parse(text)
    except Exception as exc:  # any parse failure is a rejection
        raise PolicyRejected(f"not HCL: {exc}") from None
    grants: dict[tuple[str, str], str] = {}
    for kind, value in tree.items():
        if kind not in CONSUL_RESOURCES:
            raise PolicyRejected(f"unknown Consul rule {kind!r}")
        if isinstance(value, str):  # acl = "read", operator = "write", ...
            entries = [("", {"policy": value})]
        else:
            entries = list(blocks(tree, kind))
        for name, body in entries:
            policy = body.get("policy") if isinstance(body, Mapping) else None
            if policy not in ("read", "list", "write", "deny"):
                raise PolicyRejected(f"{kind} {name!r}: policy must be read, list, write or deny, got {policy!r}")
            if policy == "write":
                on_caravan_keys = kind in ("key", "key_prefix") and name.startswith("caravan/")
                on_sessions = sessions and kind in ("session", "session_prefix")
                if not (on_caravan_keys or on_sessions):
                    raise PolicyRejected(f"{kind} {name!r}: write outside caravan/ keys")
            grants[(kind, name)] = policy
    return grants


def check_nomad_policy(text: str) -> dict[str, frozenset[str]]:
    """namespace => capabilities. Only listed capabilities on named namespaces: no shorthand, no wildcard."""
    try:
        tree = parse(text)
    except Exception as exc:  # any parse failure is a rejection
        raise PolicyRejected(f"not HCL: {exc}") from None
    if set(tree) - {"namespace"}:
        raise PolicyRejected(f"only namespace rules are allowed, found {sorted(set(tree) - {'namespace'})}")
    grants: dict[str, frozenset[str]] = {}
    for name, body in blocks(tree, "namespace"):
        if not re.fullmatch(r"[a-zA-Z0-9-]+", name):
            raise PolicyRejected(f"namespace {name!r}: wildcard or odd name")
        if set(body) != {"capabilities"}:
            raise PolicyRejected(f"namespace {name!r}: only a capabilities list (no policy shorthand, no variables)")
        extra = set(body["capabilities"]) - NOMAD_CAPABILITIES
        if extra:
            raise PolicyRejected(f"namespace {name!r}: capabilities beyond caravan's needs: {sorted(extra)}")
        grants[name] = frozenset(body["capabilities"])
    return grants


# -- everything parses; every variable is declared --------------------------------------------------------


@pytest.mark.parametrize("path", tf_files() + sorted(SPECS.glob("*.hcl")) + sorted(POLICIES.rglob("*.hcl")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_hcl_file_parses(path):
    assert parse(path.read_text())


def test_terraform_has_the_expected_files():
    names = {p.name for p in TF.iterdir()}
    assert {"versions.tf", "variables.tf", "nomad.tf", "consul.tf", "vault.tf", "outputs.tf",
            "terraform.tfvars.example", "README.md"} <= names
    assert not list(TF.glob("*.tfvars")), "real tfvars stay out of the repository"


VAR_REF = re.compile(r"(?<![\w.])var\.([A-Za-z_][A-Za-z0-9_-]*)")


def referenced_variables(tf: Mapping[str, Any]) -> set[str]:
    # validation blocks reference their own variable: not a use
    uses = {kind: body for kind, body in tf.items() if kind != "variable"}
    return {name for text in strings(uses) for name in VAR_REF.findall(text)}


def test_every_referenced_variable_is_declared_and_every_declared_one_used():
    tf = terraform()
    declared = set(tf["variable"])
    referenced = referenced_variables(tf)
    assert referenced - declared == set(), f"undeclared: {sorted(referenced - declared)}"
    assert declared - referenced == set(), f"declared but never used: {sorted(declared - referenced)}"
    for name, body in tf["variable"].items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"


def test_the_variable_scan_finds_an_undeclared_variable():
    tf = terraform()
    tf["resource"]["nomad_namespace"]["caravan"]["name"] = "${var.nmespace}"
    assert "nmespace" in referenced_variables(tf) - set(tf["variable"])


def test_providers_are_pinned_and_carry_no_credentials():
    tf = terraform()
    (settings_block,) = tf["terraform"]
    (required,) = settings_block["required_providers"]
    for name in ("nomad", "consul", "vault"):
        assert required[name]["source"] == f"hashicorp/{name}"
        assert re.search(r"\d", required[name]["version"]), f"{name}: no version constraint"
    for name, body in tf["provider"].items():
        secretish = {key for key in body if re.search(r"token|secret|password|auth|key_file|cert_file", key)}
        assert not secretish, f"provider {name} sets {sorted(secretish)}: credentials come from the environment"


def test_tfvars_example_sets_only_declared_non_secret_variables():
    tf = terraform()
    values = parse((TF / "terraform.tfvars.example").read_text())
    assert set(values) <= set(tf["variable"])
    for name in values:
        assert not re.search(r"(?i)token|secret|password", name)
    for text in strings(values):
        assert not looks_like_a_credential(text), text


def looks_like_a_credential(text: str) -> bool:
    """Vault/OpenBao tokens, UUIDs (Consul and Nomad secret ids), AWS access keys, PEM private keys."""
    return bool(re.search(r"\b(hvs|hvb|s|b)\.[A-Za-z0-9_-]{20,}|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-"
                          r"[0-9a-f]{12}\b|\bAKIA[0-9A-Z]{16}\b|-----BEGIN [A-Z ]*PRIVATE KEY-----", text))


def test_outputs_carry_no_secret():
    tf = terraform()
    for name, body in tf["output"].items():
        value = body["value"]
        assert not re.search(r"secret_id|client_token|\.token\b|password", value), f"output {name} exposes {value}"
        if "role_id" in value:
            assert body.get("sensitive") is True, f"output {name} must be sensitive"


# -- Nomad: every spec becomes a job with only its own variables -------------------------------------------


def spec_variables(path: Path) -> dict[str, Any]:
    return dict(blocks(parse(path.read_text()), "variable"))


def test_the_jobs_are_every_spec_of_the_spec_dir_with_its_own_variables():
    tf = terraform()
    default_dir = tf["variable"]["jobspec_dir"]["default"]
    assert (TF / default_dir).resolve() == SPECS.resolve()
    locals_ = tf["locals"]
    assert 'fileset(local.jobspec_dir, "*.nomad.hcl")' in locals_["jobspecs"]
    # The regex Terraform uses to find each spec's declared variables finds exactly what the HCL parser finds.
    (raw,) = re.findall(r'regexall\("((?:[^"\\]|\\.)*)"', locals_["declared_variables"])
    pattern = re.compile(json.loads(f'"{raw}"'))
    for path in sorted(SPECS.glob("*.nomad.hcl")):
        assert set(pattern.findall(path.read_text())) == set(spec_variables(path)), path.name
        (job,) = [name for name, _ in blocks(parse(path.read_text()), "job")]
        assert job == path.name.removesuffix(".nomad.hcl"), f"{path.name}: the job ID must be the file name"
    job = resource(tf, "nomad_job", "caravan")
    assert "contains(local.declared_variables[each.key], name)" in job["hcl2"][0]["vars"]


def vault_roles(tf: Mapping[str, Any]) -> dict[str, set[str]]:
    return {role: set(jobs) for role, jobs in tf["locals"]["vault_roles"].items()}


def test_every_spec_that_asks_vault_is_bound_to_a_role_whose_policy_covers_its_secrets():
    roles = vault_roles(terraform())
    assert roles == ROLE_JOBS
    for path in sorted(SPECS.glob("*.nomad.hcl")):
        job = path.name.removesuffix(".nomad.hcl")
        reads = set(re.findall(r'secret \\?"([^"\\]+)\\?"', path.read_text()))
        variables = spec_variables(path)
        if "vault_role" not in variables:
            assert not reads, f"{job} reads {reads} without a Vault role"
            continue
        role = variables["vault_role"]["default"]
        assert job in roles.get(role, set()), f"{job}: its role {role} does not accept it"
        assert reads <= VAULT_READS[role], f"{job} reads {reads - VAULT_READS[role]} that {role} cannot"


# -- Vault -----------------------------------------------------------------------------------------------


def test_vault_policies_read_exactly_the_contracts_paths():
    tf = terraform()
    job_policy = resource(tf, "vault_policy", "job")
    assert job_policy["for_each"] == "${local.vault_roles}" and job_policy["name"] == "${each.key}"
    assert policy_file(job_policy["policy"]) == POLICIES / "vault" / "${each.key}.hcl"
    ci_policy = resource(tf, "vault_policy", "ci")
    assert ci_policy["name"] == "caravan-ci"
    loaded = {role: POLICIES / "vault" / f"{role}.hcl" for role in vault_roles(tf)}
    loaded["caravan-ci"] = policy_file(ci_policy["policy"])
    assert set(loaded.values()) == set((POLICIES / "vault").glob("*.hcl")), "a policy file nothing applies"
    for role, path in loaded.items():
        grants = check_vault_policy(path.read_text())
        assert set(grants) == VAULT_READS[role], f"{role}: {sorted(grants)}"
        assert all(caps == {"read"} for caps in grants.values()), f"{role}: {grants}"


def test_each_jwt_role_binds_nomad_workload_identities_to_its_own_policy():
    tf = terraform()
    backend = resource(tf, "vault_jwt_auth_backend", "nomad")
    assert backend["path"] == "${var.vault_jwt_path}" and tf["variable"]["vault_jwt_path"]["default"] == "jwt-nomad"
    assert "default_role" not in backend
    role = resource(tf, "vault_jwt_auth_backend_role", "job")
    assert role["for_each"] == "${local.vault_roles}" and role["role_name"] == "${each.key}"
    assert role["backend"] == "${vault_jwt_auth_backend.nomad.path}" and role["role_type"] == "jwt"
    assert role["token_policies"] == ["${vault_policy.job[each.key].name}"]
    assert role["bound_audiences"] == ["vault.io"]
    assert role["user_claim"] == "/nomad_job_id" and role["user_claim_json_pointer"] is True
    assert role["bound_claims"] == {"nomad_namespace": "${var.namespace}", "nomad_job_id": '${join(",", each.value)}'}
    assert role["claim_mappings"] == {k: k for k in ("nomad_namespace", "nomad_job_id", "nomad_task")}
    assert role["token_explicit_max_ttl"] == 0


def test_ci_approle_gets_only_the_ci_policy():
    tf = terraform()
    ci = resource(tf, "vault_approle_auth_backend_role", "ci")
    assert ci["role_name"] == "caravan-ci"
    assert ci["token_policies"] == ["${vault_policy.ci.name}"]
    assert "secret_id" not in tf["resource"].get("vault_approle_auth_backend_role_secret_id", {}), \
        "secret ids are generated by hand, never kept in the state"


@pytest.mark.parametrize("bad", [
    'path "secret/data/caravan/*" {\n  capabilities = ["read"]\n}\n',
    'path "secret/data/+/storage" {\n  capabilities = ["read"]\n}\n',
    'path "secret/data/other" {\n  capabilities = ["create", "read"]\n}\n',
    'path "sys/policies/acl/caravan-step" {\n  capabilities = ["update"]\n}\n',
    'path "auth/token/create" {\n  capabilities = ["sudo"]\n}\n',
    'path "secret/data/caravan/storage" {\n  capabilities = ["root"]\n}\n',
    'path "secret/data/{{identity.entity.name}}" {\n  capabilities = ["read"]\n}\n',
    'path "secret/data/caravan/storage" {\n  capabilities = ["read"]\n',
])
def test_vault_checker_rejects_bad_policies(bad):
    with pytest.raises(PolicyRejected):
        check_vault_policy(bad)


PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789/_-."


@settings(max_examples=150, deadline=None)
@given(path=st.text(PATH_CHARS, min_size=1, max_size=40).filter(lambda p: not p.startswith("secret/data/caravan/")),
       caps=st.sets(st.sampled_from(sorted(VAULT_WRITES)), min_size=1), wildcard=st.sampled_from(["", "*", "+"]))
def test_vault_checker_rejects_any_write_outside_caravan(path, caps, wildcard):
    text = f'path "{path}{wildcard}" {{\n  capabilities = {json.dumps(sorted(caps | {"read"}))}\n}}\n'
    with pytest.raises(PolicyRejected):
        check_vault_policy(text)


@settings(max_examples=100, deadline=None)
@given(path=st.text(PATH_CHARS, min_size=1, max_size=40))
def test_vault_checker_accepts_plain_reads(path):
    text = f'path "{path}" {{\n  capabilities = ["read"]\n}}\n'
    assert check_vault_policy(text) == {path: frozenset({"read"})}


# -- Consul ----------------------------------------------------------------------------------------------


def test_consul_pipeline_policy_writes_only_model_keys_and_sessions():
    tf = terraform()
    policy = resource(tf, "consul_acl_policy", "pipeline")
    grants = check_consul_policy(policy_file(policy["rules"]).read_text(), sessions=True)
    assert grants == CONSUL_PIPELINE
    token = resource(tf, "consul_acl_token", "pipeline")
    assert token["policies"] == ["${consul_acl_policy.pipeline.name}"]


def test_consul_serving_policy_reads_its_model_and_writes_nothing():
    tf = terraform()
    policy = resource(tf, "consul_acl_policy", "serving")
    assert policy["rules"].endswith(", {model = var.model})}")
    template = policy_file(policy["rules"], "templatefile").read_text()
    for model in ("ranker", "ctr-2"):
        grants = check_consul_policy(render(template, model=model), sessions=False)
        assert grants == {("key_prefix", f"caravan/models/{model}/"): "read"}
    token = resource(tf, "consul_acl_token", "serving")
    assert token["policies"] == ["${consul_acl_policy.serving.name}"]
    applied = {policy_file(resource(tf, "consul_acl_policy", "pipeline")["rules"]),
               policy_file(policy["rules"], "templatefile")}
    assert set((POLICIES / "consul").iterdir()) == applied, "a policy file nothing applies"


@pytest.mark.parametrize(("bad", "sessions"), [
    ('key_prefix "" {\n  policy = "write"\n}\n', True),
    ('key_prefix "caravan" {\n  policy = "write"\n}\n', True),
    ('key "other/caravan/models/x" {\n  policy = "write"\n}\n', True),
    ('session_prefix "" {\n  policy = "write"\n}\n', False),
    ('service_prefix "" {\n  policy = "write"\n}\n', True),
    ('acl = "write"\n', True),
    ('operator = "write"\n', True),
    ('key_prefix "caravan/models/" {\n  policy = "sudo"\n}\n', True),
    ('bogus "x" {\n  policy = "read"\n}\n', True),
])
def test_consul_checker_rejects_bad_policies(bad, sessions):
    with pytest.raises(PolicyRejected):
        check_consul_policy(bad, sessions=sessions)


@settings(max_examples=150, deadline=None)
@given(name=st.text(PATH_CHARS, max_size=40).filter(lambda p: not p.startswith("caravan/")),
       kind=st.sampled_from(["key", "key_prefix", "service", "service_prefix", "node_prefix", "agent_prefix",
                             "event_prefix", "query_prefix"]))
def test_consul_checker_rejects_any_write_outside_caravan(name, kind):
    with pytest.raises(PolicyRejected):
        check_consul_policy(f'{kind} "{name}" {{\n  policy = "write"\n}}\n', sessions=True)


# -- Nomad -----------------------------------------------------------------------------------------------


def test_nomad_pipeline_policy_is_scoped_to_the_namespace():
    tf = terraform()
    policy = resource(tf, "nomad_acl_policy", "caravan_pipeline")
    assert policy["rules_hcl"].endswith(", {namespace = var.namespace})}")
    template = policy_file(policy["rules_hcl"], "templatefile").read_text()
    assert check_nomad_policy(render(template, namespace="caravan-staging")) == {
        "caravan-staging": frozenset(NOMAD_CAPABILITIES)}


@pytest.mark.parametrize("bad", [
    'namespace "*" {\n  capabilities = ["read-job"]\n}\n',
    'namespace "caravan" {\n  policy = "write"\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job", "alloc-exec"]\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job"]\n}\nnode {\n  policy = "write"\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job"]\n}\noperator {\n  policy = "write"\n}\n',
])
def test_nomad_checker_rejects_bad_policies(bad):
    with pytest.raises(PolicyRejected):
        check_nomad_policy(bad)
