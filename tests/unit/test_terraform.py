"""terraform/ and nomad/ as code review would hold them: everything parses, every variable is declared, and
every Consul, Vault and Nomad policy grants exactly the rows of terraform/access.yaml, the one table of who may
do what (no write outside caravan/, no Vault wildcard, nothing of another environment). The test doubles ask,
for each row's endpoint, for the capability the table names. The checkers are tested on bad policies too.
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

from ..acl_policies import access_table, concrete, load_policies
from ..doubles.nomad.acl import glob_match  # go-glob: Vault's glob bound claims use it too, as Nomad's ACLs do

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "terraform"
SPECS = ROOT / "nomad"
POLICIES = TF / "policies"
SAMPLE = {"environment": "staging", "namespace": "caravan-staging", "model": "ranker"}

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


NOMAD_CAPABILITIES = {"list-jobs", "read-job", "parse-job", "submit-job", "dispatch-job", "read-logs"}


def check_nomad_policy(text: str) -> dict[tuple[str, str], frozenset[str]]:
    """(rule, name) => capabilities. Only listed capabilities on named namespaces and host volumes: no policy
    shorthand, no wildcard, nothing outside caravan's needs (no read-fs, no exec, no node or operator rules)."""
    try:
        tree = parse(text)
    except Exception as exc:  # any parse failure is a rejection
        raise PolicyRejected(f"not HCL: {exc}") from None
    if set(tree) - {"namespace", "host_volume"}:
        raise PolicyRejected(f"only namespace and host_volume rules are allowed, found {sorted(tree)}")
    grants: dict[tuple[str, str], frozenset[str]] = {}
    for kind, allowed in (("namespace", NOMAD_CAPABILITIES), ("host_volume", {"mount-readonly", "mount-readwrite"})):
        for name, body in blocks(tree, kind):
            if not re.fullmatch(r"[a-zA-Z0-9-]+", name):
                raise PolicyRejected(f"{kind} {name!r}: wildcard or odd name")
            if set(body) != {"capabilities"}:
                raise PolicyRejected(f"{kind} {name!r}: only a capabilities list (no policy shorthand)")
            extra = set(body["capabilities"]) - allowed
            if extra:
                raise PolicyRejected(f"{kind} {name!r}: capabilities beyond caravan's needs: {sorted(extra)}")
            grants[(kind, name)] = frozenset(body["capabilities"])
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
        value = json.dumps(body["value"])
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



def test_every_spec_gets_the_environment_and_a_vault_spec_is_accepted_by_one_of_its_roles():
    tf = terraform()
    assert "environment = local.environment" in tf["locals"]["common_job_variables"]
    roles = {kind: set(jobs) for kind, jobs in tf["locals"]["vault_roles"].items()}
    table = access_table()["vault"]
    assert {f"caravan-<env>-{kind}" for kind in roles} | {"caravan-<env>-ci"} == set(table)
    for path in sorted(SPECS.glob("*.nomad.hcl")):
        job, text = path.name.removesuffix(".nomad.hcl"), path.read_text()
        values = {"${var.environment}": SAMPLE["environment"], "${var.model}": SAMPLE["model"]}
        for placeholder, value in values.items():
            text = text.replace(placeholder, value)
        reads = set(re.findall(r'secret \\?"([^"\\]+)\\?"', text))
        named = set(re.findall(r'role\s*=\s*"caravan-([a-z]+)-([a-z]+)"', text))
        if not re.search(r"(?m)^\s*vault\s*\{", text):
            assert not reads and not named, f"{job} reads {reads} without a vault block"
            continue
        assert "environment" in spec_variables(path), f"{job}: its Vault names must carry the environment"
        (role,) = named or {("", "")}
        assert role[0] == SAMPLE["environment"], f"{job}: role caravan-{role[0]}-{role[1]} is not the environment's"
        assert job in roles.get(role[1], set()), f"{job}: the role caravan-<env>-{role[1]} does not accept it"
        allowed = {concrete(p, **SAMPLE) for p in table[f"caravan-<env>-{role[1]}"]["read"]}
        assert reads <= allowed, f"{job} reads {reads - allowed} that caravan-<env>-{role[1]} cannot"


# -- the access table: every policy grants exactly its rows ---------------------------------------------------


def policy_kind(name: str) -> str:
    """A table entry's policy kind: caravan-<env>-serving-<model> -> serving (the file caravan-serving.*)."""
    return name.removeprefix("caravan-<env>-").removesuffix("-<model>")


@pytest.mark.parametrize("system", ["nomad", "consul", "vault"])
def test_the_table_and_the_policy_files_name_the_same_policies(system):
    table = access_table()[system]
    files = {p.name.split(".", 1)[0].removeprefix("caravan-") for p in (POLICIES / system).iterdir()}
    assert {policy_kind(name) for name in table} == files
    for name, entry in table.items():
        assert entry["holder"], f"{system} {name}: who holds it?"


def nomad_rows(entry: Mapping[str, Any]) -> dict[tuple[str, str], frozenset[str]]:
    expected = {("namespace", concrete(entry["namespace"], **SAMPLE)):
                frozenset(row["capability"] for row in entry["calls"])}
    for volume, capability in (entry.get("host_volumes") or {}).items():
        expected[("host_volume", volume)] = frozenset({capability})
    return expected


def test_every_row_names_code_that_exists():
    """Each row's "by" names files (src/caravan/... or nomad/...) and functions defined in them."""
    rows = [row for system in ("nomad", "consul") for entry in access_table()[system].values()
            for row in entry.get("calls", entry.get("rules", []))]
    for row in rows:
        for part in re.split(r";\s*|,\s*(?=nomad/)", row["by"]):
            where, *functions = part.split()
            if where.startswith("nomad/"):
                assert sorted(ROOT.glob(where)), f"{row}: no spec {where}"
                continue
            source = (ROOT / "src" / "caravan" / where).read_text()
            for function in functions:
                assert re.search(rf"^\s*def {re.escape(function)}\(", source, re.M), f"{where} has no {function}"


def test_nomad_policies_grant_exactly_the_tables_capabilities():
    texts = load_policies("nomad", **SAMPLE)
    for name, entry in access_table()["nomad"].items():
        assert check_nomad_policy(texts[policy_kind(name)]) == nomad_rows(entry), name
        for row in entry["calls"]:
            assert row["by"] and re.fullmatch(r"(GET|PUT|POST|DELETE) /v1/\S+", row["call"]), row


def test_consul_policies_grant_exactly_the_tables_rules():
    texts = load_policies("consul", **SAMPLE)
    for name, entry in access_table()["consul"].items():
        kind = policy_kind(name)
        grants = check_consul_policy(texts[kind], sessions=kind == "pipeline")
        assert grants == {(row["rule"], concrete(row["name"], **SAMPLE)): row["policy"] for row in entry["rules"]}, name


def test_vault_policies_read_exactly_the_tables_paths():
    texts = load_policies("vault", **SAMPLE)
    for name, entry in access_table()["vault"].items():
        grants = check_vault_policy(texts[policy_kind(name)])
        assert grants == {concrete(path, **SAMPLE): frozenset({"read"}) for path in entry["read"]}, name


def test_the_task_role_covers_every_consul_read_of_the_specs_templates_and_nothing_else():
    """The reads of every template of a task with a consul {} block, rendered for one environment, are exactly
    the task policy's key and service rules."""
    from ..doubles.consul_acl import Authorizer

    authz = Authorizer([load_policies("consul", **SAMPLE)["tasks"]])
    keys: set[str] = set()
    services: set[str] = set()
    for path in sorted(SPECS.glob("*.nomad.hcl")):
        text = path.read_text().replace("${var.environment}", SAMPLE["environment"]).replace("${var.model}",
                                                                                            SAMPLE["model"])
        keys |= set(re.findall(r'\b(?:key|keyOrDefault|keyExists) \\?"([^"\\]+)\\?"', text))
        services |= set(re.findall(r'\bservice \\?"([^"\\]+)\\?"', text))
        reads_consul = re.search(r'\b(?:key|keyOrDefault|keyExists|service) \\?"', text)
        assert not reads_consul or re.search(r"(?m)^\s*consul \{\}", text), \
            f"{path.name}: templates read Consul but no task has a consul {{}} block (no identity on Nomad 1.10+)"
    assert keys and services, "the specs' templates read Consul; the scan must see it"
    for key in keys:
        assert authz.allowed("key", key, "read"), key
    for service in services:
        assert authz.allowed("service", service, "read") and authz.allowed("node", "any-node", "read"), service
    rows = access_table()["consul"]["caravan-<env>-tasks"]["rules"]
    granted = {concrete(r["name"], **SAMPLE) for r in rows if r["rule"] in ("key", "service")}
    assert granted == keys | services, "the task role grants reads no template makes"


def test_the_nomad_double_asks_for_the_tables_capability_for_each_call():
    """tests/doubles/nomad/acl.py and the table agree: each row's endpoint needs (any of) a set of capabilities
    that contains the row's."""
    from urllib.parse import parse_qsl

    from ..doubles.nomad.acl import endpoint_capabilities

    ids = {"job": "train-lightgbm", "id": "train-lightgbm/dispatch-1764000000-ab12cd34",
           "alloc": "6a1b8f0e-3c2d-4e5f-8a9b-0c1d2e3f4a5b", "eval": "0b1c2d3e-4f5a-6b7c-8d9e-0f1a2b3c4d5e"}
    for name, entry in access_table()["nomad"].items():
        for row in entry["calls"]:
            method, target = row["call"].split(" ", 1)
            path, _, query = concrete(target, **SAMPLE, **ids).partition("?")
            needed = endpoint_capabilities(method, path, dict(parse_qsl(query)))
            assert needed and row["capability"] in needed, f"{name}: {row['call']} needs {needed}"


ENV = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@settings(max_examples=60, deadline=None)
@given(mine=ENV, other=ENV, model=st.sampled_from(["ranker", "ctr-2"]))
def test_one_environments_policies_grant_nothing_of_another(mine, other, model):
    """Staging and production share one Consul and one Vault: a policy rendered for one environment reaches no
    key, service or secret path of another (names that merely start alike included)."""
    from ..doubles.consul_acl import Authorizer

    if mine == other:
        return
    values = {"environment": mine, "namespace": f"caravan-{mine}", "model": model}
    consul = Authorizer(load_policies("consul", **values).values())
    for key in (f"caravan/{other}/models/{model}/current", f"caravan/{other}/models/{model}/lock",
                f"caravan/{other}/tls/consul-ca.pem"):
        assert not consul.allowed("key", key, "read"), key
    assert not consul.allowed("service", f"caravan-{other}-luigid", "read")
    for text in load_policies("vault", **values).values():
        assert not any(f"/caravan/{other}/" in path for path in check_vault_policy(text))
    for text in load_policies("nomad", **values).values():
        assert ("namespace", f"caravan-{other}") not in check_nomad_policy(text)


# -- Terraform applies those files, with the environment in every name ----------------------------------------


def templatefile_of(expression: str) -> Path:
    match = re.fullmatch(r'\$\{templatefile\("\$\{path\.module\}/([^"]+)", local\.policy_variables\)\}', expression)
    assert match, f"load policies with templatefile(\"${{path.module}}/...\", local.policy_variables): {expression}"
    return TF / match.group(1)


def test_policy_variables_are_the_environment_the_namespace_and_the_model():
    tf = terraform()
    assert tf["locals"]["policy_variables"] == {"environment": "${local.environment}", "namespace": "${var.namespace}",
                                                "model": "${var.model}"}


def terraform_environment(environment: str, namespace: str) -> str:
    """The locals.environment expression of vault.tf, by hand (test_the_environment_expression pins its text)."""
    if environment:
        return environment
    if namespace == "caravan":
        return "production"
    if namespace == "default":
        return "dev"
    return namespace.removeprefix("caravan-")


def test_the_environment_expression():
    expression = " ".join(terraform()["locals"]["environment"].split())
    assert expression == ('${var.environment != "" ? var.environment : (var.namespace == "caravan" ? "production" : '
                          'var.namespace == "default" ? "dev" : trimprefix(var.namespace, "caravan-"))}')


@settings(max_examples=100, deadline=None)
@given(namespace=st.one_of(st.sampled_from(["caravan", "caravan-staging", "default", "ml"]),
                           st.from_regex(r"(caravan-)?[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)))
def test_terraform_derives_the_environment_from_the_namespace_as_caravan_does(namespace):
    from caravan import config

    derive = getattr(config, "environment_of_namespace", None)
    if derive is None:
        pytest.skip("caravan.config has no environment_of_namespace yet")
    assert terraform_environment("", namespace) == derive(namespace)


NOMAD_POLICIES = {"retrain": "caravan-${local.environment}-retrain", "release": "caravan-${local.environment}-release"}
CONSUL_POLICIES = {"pipeline": "caravan-${local.environment}-pipeline",
                   "serving": "caravan-${local.environment}-serving-${var.model}",
                   "tasks": "caravan-${local.environment}-tasks"}


def test_every_policy_file_is_applied_under_a_name_that_carries_the_environment():
    tf = terraform()
    applied: set[Path] = set()
    for kind, name in NOMAD_POLICIES.items():
        policy = resource(tf, "nomad_acl_policy", kind)
        assert policy["name"] == name
        applied.add(templatefile_of(policy["rules_hcl"]))
    for kind, name in CONSUL_POLICIES.items():
        policy = resource(tf, "consul_acl_policy", kind)
        assert policy["name"] == name
        applied.add(templatefile_of(policy["rules"]))
    job_policy = resource(tf, "vault_policy", "job")
    assert job_policy["for_each"] == "${local.vault_roles}"
    assert job_policy["name"] == "caravan-${local.environment}-${each.key}"
    assert templatefile_of(job_policy["policy"]) == POLICIES / "vault" / "caravan-${each.key}.hcl.tftpl"
    applied |= {POLICIES / "vault" / f"caravan-{kind}.hcl.tftpl" for kind in tf["locals"]["vault_roles"]}
    ci = resource(tf, "vault_policy", "ci")
    assert ci["name"] == "caravan-${local.environment}-ci"
    applied.add(templatefile_of(ci["policy"]))
    assert applied == set(POLICIES.rglob("*.tftpl")), "a policy file nothing applies, or one that is missing"
    assert not [p for p in POLICIES.rglob("*") if p.is_file() and p.suffix != ".tftpl"]
    assert resource(tf, "consul_acl_token", "pipeline")["policies"] == ["${consul_acl_policy.pipeline.name}"]
    assert resource(tf, "consul_acl_token", "serving")["policies"] == ["${consul_acl_policy.serving.name}"]


def test_the_release_policy_mounts_exactly_luigids_host_volume():
    (luigid,) = [body for _, body in blocks(parse((SPECS / "luigid.nomad.hcl").read_text()), "job")]
    default = spec_variables(SPECS / "luigid.nomad.hcl")["host_volume"]["default"]
    volumes = {name: body for group in luigid["group"] for _, g in group.items() for entry in g.get("volume", [])
               for name, body in entry.items()}
    read_write = [v for v in volumes.values() if v.get("type") == "host" and not v.get("read_only")]
    assert read_write and all(v["source"] == "${var.host_volume}" for v in read_write)
    assert access_table()["nomad"]["caravan-<env>-release"]["host_volumes"] == {default: "mount-readwrite"}


# -- Vault -----------------------------------------------------------------------------------------------


def test_each_jwt_role_binds_its_environments_workload_identities_to_its_own_policy():
    tf = terraform()
    backend = resource(tf, "vault_jwt_auth_backend", "nomad")
    assert backend["count"] == "${var.manage_shared_auth ? 1 : 0}", "one mount per Vault, shared"
    assert backend["path"] == "${var.vault_jwt_path}" and tf["variable"]["vault_jwt_path"]["default"] == "jwt-nomad"
    assert "default_role" not in backend
    role = resource(tf, "vault_jwt_auth_backend_role", "job")
    assert role["for_each"] == "${local.vault_roles}"
    assert role["role_name"] == "caravan-${local.environment}-${each.key}", "roles of two environments never collide"
    assert role["backend"] == "${var.manage_shared_auth ? vault_jwt_auth_backend.nomad[0].path : var.vault_jwt_path}"
    assert role["role_type"] == "jwt"
    assert role["token_policies"] == ["${vault_policy.job[each.key].name}"]
    assert role["bound_audiences"] == ["vault.io"]
    assert role["user_claim"] == "/nomad_job_id" and role["user_claim_json_pointer"] is True
    assert role["bound_claims_type"] == "glob", "a sized step's twin <job>@<cpu>c<mem>m is bound by pattern"
    assert role["bound_claims"] == {
        "nomad_namespace": "${var.namespace}",
        "nomad_job_id": '${join(",", each.key == "step" ? concat(each.value, [for job in each.value : "${job}@*"]) '
                        ': each.value)}'}
    assert role["claim_mappings"] == {k: k for k in ("nomad_namespace", "nomad_job_id", "nomad_task")}
    assert role["token_explicit_max_ttl"] == 0


def test_ci_approle_gets_only_its_environments_ci_policy():
    tf = terraform()
    ci = resource(tf, "vault_approle_auth_backend_role", "ci")
    assert ci["role_name"] == "caravan-${local.environment}-ci"
    assert ci["token_policies"] == ["${vault_policy.ci.name}"]
    assert resource(tf, "vault_auth_backend", "approle")["count"] == "${var.manage_shared_auth ? 1 : 0}"
    assert "secret_id" not in tf["resource"].get("vault_approle_auth_backend_role_secret_id", {}), \
        "secret ids are generated by hand, never kept in the state"


# -- Consul workload identities ----------------------------------------------------------------------------


def test_consul_auth_method_trusts_nomads_workload_identities():
    tf = terraform()
    method = resource(tf, "consul_acl_auth_method", "nomad")
    assert method["count"] == "${var.manage_shared_auth ? 1 : 0}"
    assert method["name"] == "${var.consul_auth_method}" and method["type"] == "jwt"
    assert tf["variable"]["consul_auth_method"]["default"] == "nomad-workloads"  # Nomad's default auth method name
    config = method["config_json"]
    for needle in ("BoundAudiences", '"consul.io"', "local.nomad_jwks_url", "nomad_namespace", "nomad_service"):
        assert needle in config, needle


def test_binding_rules_give_only_this_namespaces_tasks_the_task_role():
    tf = terraform()
    role = resource(tf, "consul_acl_role", "tasks")
    assert role["name"] == "caravan-${local.environment}-tasks"
    assert role["policies"] == ["${consul_acl_policy.tasks.id}"]
    tasks = resource(tf, "consul_acl_binding_rule", "tasks")
    services = resource(tf, "consul_acl_binding_rule", "services")
    for rule in (tasks, services):
        assert rule["auth_method"] == "${var.consul_auth_method}"
        assert 'value.nomad_namespace == "${var.namespace}"' in rule["selector"], rule["selector"]
    assert '"nomad_service" not in value' in tasks["selector"]
    assert (tasks["bind_type"], tasks["bind_name"]) == ("role", "${consul_acl_role.tasks.name}")
    assert rule["selector"].startswith('"nomad_service" in value')
    assert (services["bind_type"], services["bind_name"]) == ("service", "$${value.nomad_service}")


# -- the checkers ------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("bad", [
    'namespace "*" {\n  capabilities = ["read-job"]\n}\n',
    'namespace "caravan" {\n  policy = "write"\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job", "alloc-exec"]\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job", "read-fs"]\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job"]\n}\nnode {\n  policy = "write"\n}\n',
    'namespace "caravan" {\n  capabilities = ["read-job"]\n}\noperator {\n  policy = "write"\n}\n',
    'host_volume "*" {\n  capabilities = ["mount-readwrite"]\n}\n',
    'host_volume "luigid-state" {\n  policy = "write"\n}\n',
    'host_volume "luigid-state" {\n  capabilities = ["deny", "mount-readwrite"]\n}\n',
])
def test_nomad_checker_rejects_bad_policies(bad):
    with pytest.raises(PolicyRejected):
        check_nomad_policy(bad)


def bound_job_patterns(roles: Mapping[str, list[str]], role: str) -> list[str]:
    """The nomad_job_id patterns the JWT role ``role`` binds: vault.tf's expression evaluated for it."""
    jobs = list(roles[role])
    return jobs + [f"{job}@*" for job in jobs] if role == "step" else jobs


def test_every_job_name_binds_its_own_role_only():
    roles = terraform()["locals"]["vault_roles"]
    for role, jobs in roles.items():
        for name in jobs:
            assert "*" not in name, f"{name}: a job name of role {role} would be a glob pattern"
            matched = {r for r in roles if any(glob_match(p, name) for p in bound_job_patterns(roles, r))}
            assert matched == {role}, f"{name} is bound by {matched}, not only {role}"


@settings(max_examples=60, deadline=None)
@given(cpu=st.integers(1, 1_000_000), memory=st.integers(10, 4_194_304), data=st.data())
def test_a_sized_steps_children_get_the_step_role_and_no_other(vault_roles, cpu, memory, data):
    from caravan.executors.sizing import Ask, sized_job_id

    job = data.draw(st.sampled_from(sorted(vault_roles["step"])))
    twin = sized_job_id(job, Ask(cpu, memory))
    matches = {r for r in vault_roles if any(glob_match(p, twin) for p in bound_job_patterns(vault_roles, r))}
    assert matches == {"step"}, f"{twin} is bound by {matches}"
    other = data.draw(st.sampled_from(sorted(vault_roles["serving"] + vault_roles["retrain"])))
    other_twin = sized_job_id(other, Ask(cpu, memory))
    assert not any(glob_match(p, other_twin) for p in bound_job_patterns(vault_roles, "step"))


@pytest.fixture(scope="module")
def vault_roles() -> dict[str, list[str]]:
    return {role: list(jobs) for role, jobs in terraform()["locals"]["vault_roles"].items()}
