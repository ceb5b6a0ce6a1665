"""The doubles' ACL enforcement: the rule matchers (property-tested against independent oracles) and the HTTP
answers a token gets, as Nomad's acl/acl.go and Consul's acl/policy_authorizer.go decide them."""

from __future__ import annotations

import itertools
import re
import uuid

import consul
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from ..acl_policies import token_policies
from ..doubles.consul import ConsulDouble
from ..doubles.consul_acl import ANONYMOUS_ACCESSOR, Authorizer, accessor_of, lookup, parse_rules
from ..doubles.nomad import NomadDouble
from ..doubles.nomad.acl import ACL, PolicyError, endpoint_capabilities, glob_match, parse_policy

PRODUCTION = {"environment": "production", "namespace": "caravan", "model": "ranker"}
NAME = st.text("ab/", max_size=5)
LEVEL = st.sampled_from(["deny", "read", "list", "write"])
RULE = st.tuples(st.booleans(), NAME, LEVEL)  # (prefix?, name, level)


def rules_text(rules: list[tuple[bool, str, str]]) -> str:
    return "".join(f'{"key_prefix" if prefix else "key"} "{name}" {{\n  policy = "{level}"\n}}\n'
                   for prefix, name, level in rules)


def oracle(policies: list[list[tuple[bool, str, str]]], key: str) -> str | None:
    """The deciding level, straight from the docs: among the rules naming exactly ``key`` (if any) or else the
    longest prefix of it, the strongest level any policy gives that name (deny > write > list > read)."""
    strength = ["read", "list", "write", "deny"]
    exact = [level for rules in policies for prefix, name, level in rules if not prefix and name == key]
    if exact:
        return max(exact, key=strength.index)
    prefixes = [(len(name), level) for rules in policies for prefix, name, level in rules
                if prefix and key.startswith(name)]
    if not prefixes:
        return None
    longest = max(n for n, _ in prefixes)
    return max((level for n, level in prefixes if n == longest), key=strength.index)


@settings(max_examples=300, deadline=None)
@given(policies=st.lists(st.lists(RULE, max_size=4), max_size=3), key=NAME)
def test_consul_key_rules_pick_exact_then_longest_prefix_then_the_strongest_level(policies, key):
    merged = None
    for rules in policies:
        merged = parse_rules(rules_text(rules), merged)
    assert lookup(merged or parse_rules(""), "key", key) == oracle(policies, key)


@settings(max_examples=200, deadline=None)
@given(policies=st.lists(st.lists(RULE, max_size=4), min_size=1, max_size=3), key=NAME,
       access=st.sampled_from(["read", "list", "write"]), data=st.data())
def test_consul_deny_wins_order_does_not_matter_and_write_implies_list_implies_read(policies, key, access, data):
    texts = [rules_text(rules) for rules in policies]
    authz = Authorizer(texts, accessor_id="a")
    order = data.draw(st.permutations(texts))
    assert Authorizer(order, accessor_id="a").allowed("key", key, access) == authz.allowed("key", key, access)
    if authz.allowed("key", key, "write"):
        assert authz.allowed("key", key, "list") and authz.allowed("key", key, "read")
    if authz.allowed("key", key, "list"):
        assert authz.allowed("key", key, "read")
    denied = Authorizer([*texts, f'key "{key}" {{\n  policy = "deny"\n}}\n'], accessor_id="a")
    assert not denied.allowed("key", key, access), "an exact deny in any policy beats every grant"


def test_consul_exact_rule_beats_a_prefix_and_the_default_is_deny():
    authz = Authorizer(['key_prefix "" {\n  policy = "write"\n}\nkey "a/b" {\n  policy = "read"\n}\n'])
    assert authz.allowed("key", "a/bc", "write") and not authz.allowed("key", "a/b", "write")
    assert authz.allowed("key", "a/b", "read")
    assert not Authorizer([]).allowed("key", "a", "read")
    assert not authz.allowed("service", "a", "read"), "rules of one resource say nothing about another"


def test_consul_denials_carry_consuls_text():
    assert Authorizer([], accessor_id="abc").denial("key", "k/1", "write") == \
        "Permission denied: token with AccessorID 'abc' lacks permission 'key:write' on \"k/1\""
    anonymous = Authorizer([]).denial("session", "node-1", "write")
    assert anonymous is not None and anonymous.startswith(
        "Permission denied: anonymous token lacks permission 'session:write' on \"node-1\".")
    assert ANONYMOUS_ACCESSOR == "00000000-0000-0000-0000-000000000002"


@settings(max_examples=300, deadline=None)
@given(pattern=st.text("ab*.?[", max_size=6), name=st.text("ab.?[", max_size=6))
def test_nomad_glob_is_go_globs_star_only(pattern, name):
    expected = re.fullmatch(".*".join(re.escape(part) for part in pattern.split("*")), name, re.DOTALL) is not None
    assert glob_match(pattern, name) == expected


CAPS = st.sets(st.sampled_from(["read-job", "list-jobs", "submit-job", "dispatch-job", "read-logs", "deny"]),
               min_size=1, max_size=3)


@settings(max_examples=200, deadline=None)
@given(grants=st.lists(CAPS, min_size=1, max_size=4), capability=st.sampled_from(["read-job", "submit-job"]),
       data=st.data())
def test_nomad_capabilities_add_up_and_deny_wins_in_any_order(grants, capability, data):
    texts = [f'namespace "caravan" {{\n  capabilities = {sorted(g)!r}\n}}\n'.replace("'", '"') for g in grants]
    order = data.draw(st.permutations(texts))
    allowed = ACL(order).allow_namespace("caravan", capability)
    denied = any("deny" in g for g in grants)
    assert allowed == (not denied and any(capability in g for g in grants))
    assert not ACL(order).allow_namespace("other", capability)


def test_nomad_exact_namespace_beats_globs_and_the_closest_glob_decides():
    acl = ACL(['namespace "*" {\n  policy = "read"\n}\nnamespace "caravan-*" {\n  policy = "write"\n}\n'
               'namespace "caravan-staging" {\n  capabilities = ["list-jobs"]\n}\n'])
    assert acl.allow_namespace("caravan-dev", "submit-job"), "caravan-* is closer than *"
    assert not acl.allow_namespace("ml", "submit-job") and acl.allow_namespace("ml", "read-job")
    assert not acl.allow_namespace("caravan-staging", "read-job"), "an exact rule wins over every glob"


@pytest.mark.parametrize("bad", ['namespace "x" {\n  capabilities = ["read-jobs"]\n}\n',
                                 'namespace "x" {\n  policy = "admin"\n}\n',
                                 'host_volume "v" {\n  capabilities = ["mount-rw"]\n}\n', "namespace {"])
def test_nomad_refuses_bad_policies(bad):
    with pytest.raises(PolicyError):
        parse_policy(bad)


def test_every_nomad_endpoint_the_double_serves_has_a_capability():
    for method, path in itertools.product(["GET"], ["/v1/jobs", "/v1/job/x", "/v1/job/x/allocations",
                                                    "/v1/evaluation/e", "/v1/allocation/a", "/v1/client/fs/logs/a"]):
        assert endpoint_capabilities(method, path), path
    assert endpoint_capabilities("DELETE", "/v1/job/a/dispatch-1-x") == ("submit-job", "purge-job", "deregister-job")
    assert endpoint_capabilities("DELETE", "/v1/job/a", {"purge": "true"}) == ("submit-job", "purge-job")
    assert endpoint_capabilities("POST", "/v1/job/a/dispatch") == ("dispatch-job",)
    assert endpoint_capabilities("PUT", "/v1/system/gc") is None, "management only"


# -- over HTTP, through the real clients ---------------------------------------------------------------------

LUIGID_LIKE = '''
job "luigid" {
  namespace = "caravan"
  type      = "service"
  group "scheduler" {
    volume "state" {
      type      = "host"
      source    = "luigid-state"
      read_only = %s
    }
    task "luigid" {
      driver = "docker"
      config {
        image = "x"
      }
    }
  }
}
'''


@pytest.fixture
def nomad_acl():
    secrets = {"retrain": f"r-{uuid.uuid4()}", "release": f"c-{uuid.uuid4()}"}
    policies = {secret: token_policies("nomad", name, **PRODUCTION) for name, secret in secrets.items()}
    with NomadDouble(acl_token="management", acl_policies=policies) as server:
        yield server, secrets


def call(server: NomadDouble, token: str | None, method: str, path: str, **kwargs):
    headers = {"X-Nomad-Token": token} if token else {}
    return requests.request(method, f"{server.address}{path}", headers=headers, timeout=10, **kwargs)


def test_nomad_answers_each_token_as_its_policy_says(nomad_acl):
    server, secrets = nomad_acl
    hcl = LUIGID_LIKE % "false"
    parse = {"JobHCL": hcl, "Canonicalize": True}
    assert call(server, secrets["retrain"], "GET", "/v1/jobs?namespace=caravan").status_code == 200
    # JobsParseRequest takes parse-job or submit-job: the retrain token (submit-job, to stop children) parses too.
    assert call(server, secrets["retrain"], "POST", "/v1/jobs/parse?namespace=caravan", json=parse).status_code == 200
    refused = call(server, secrets["release"], "POST", "/v1/jobs/parse?namespace=caravan-staging", json=parse)
    assert (refused.status_code, refused.text) == (403, "Permission denied")
    parsed = call(server, secrets["release"], "POST", "/v1/jobs/parse?namespace=caravan", json=parse)
    assert parsed.status_code == 200
    job = parsed.json()
    for token in (secrets["retrain"], None):  # retrain: submit-job, but no mount of luigid's volume
        answer = call(server, token, "POST", "/v1/jobs?namespace=caravan", json={"Job": job})
        assert (answer.status_code, answer.text) == (403, "Permission denied")
    assert call(server, secrets["release"], "POST", "/v1/jobs?namespace=caravan", json={"Job": job}).status_code == 200
    other = call(server, secrets["release"], "GET", "/v1/jobs?namespace=caravan-staging")
    assert other.status_code == 403, "nothing in another environment's namespace"
    unknown = call(server, "no-such-token", "GET", "/v1/jobs")
    assert (unknown.status_code, unknown.text) == (403, "ACL token not found")


def test_registering_a_host_volume_needs_its_mount_capability():
    only_namespace = 'namespace "caravan" {\n  capabilities = ["submit-job", "parse-job"]\n}\n'
    read_only = only_namespace + 'host_volume "luigid-state" {\n  capabilities = ["mount-readonly"]\n}\n'
    with NomadDouble(acl_policies={"ns": [only_namespace], "ro": [read_only]}) as double:
        for token, writable, status in (("ns", "false", 403), ("ns", "true", 403), ("ro", "false", 403),
                                        ("ro", "true", 200)):
            job = call(double, token, "POST", "/v1/jobs/parse?namespace=caravan",
                       json={"JobHCL": LUIGID_LIKE % writable}).json()
            answer = call(double, token, "POST", "/v1/jobs?namespace=caravan", json={"Job": job})
            assert answer.status_code == status, (token, writable, answer.text)


def test_consul_answers_each_token_as_its_policy_says():
    pipeline, serving = f"p-{uuid.uuid4()}", f"s-{uuid.uuid4()}"
    policies = {pipeline: token_policies("consul", "pipeline", **PRODUCTION),
                serving: token_policies("consul", "serving", **PRODUCTION)}
    with ConsulDouble(acl_token="management", acl_policies=policies) as server:
        def client(token: str) -> consul.Consul:
            return consul.Consul(host=server.host, port=server.port, token=token)

        mine, theirs = "caravan/production/models/ranker/current", "caravan/staging/models/ranker/current"
        client("management").kv.put(theirs, b"staging")
        assert client(pipeline).kv.put(mine, b"{}")
        with pytest.raises(consul.ACLPermissionDenied) as refused:
            client(pipeline).kv.put(theirs, b"{}")
        assert f"token with AccessorID '{accessor_of(pipeline)}' lacks permission 'key:write' on \"{theirs}\"" \
            in str(refused.value)
        session = client(pipeline).session.create(ttl=10)
        assert client(pipeline).kv.put("caravan/production/models/ranker/lock", b"me", acquire=session)
        assert client(serving).kv.get(mine)[1]["Value"] == b"{}"
        with pytest.raises(consul.ACLPermissionDenied):
            client(serving).kv.put(mine, b"{}")
        with pytest.raises(consul.ACLPermissionDenied):
            client(serving).session.create(ttl=10)
        everything = requests.get(f"{server.address}/v1/kv/caravan/?recurse", headers={"X-Consul-Token": pipeline},
                                  timeout=10)
        assert everything.headers.get("X-Consul-Results-Filtered-By-ACLs") == "true"
        assert {e["Key"] for e in everything.json()} == {mine, "caravan/production/models/ranker/lock"}


def test_consul_health_queries_show_only_instances_whose_service_and_node_the_token_reads():
    tasks = f"t-{uuid.uuid4()}"
    service_only = f"s-{uuid.uuid4()}"
    policies = {tasks: token_policies("consul", "tasks", **PRODUCTION),
                service_only: ['service "caravan-production-luigid" {\n  policy = "read"\n}\n']}
    with ConsulDouble(acl_token="management", acl_policies=policies) as server:
        server.register_service("caravan-production-luigid", "10.0.0.7", 8082)
        server.register_service("caravan-production-luigid", "10.0.0.8", 8082, passing=False)

        def health(token: str) -> requests.Response:
            return requests.get(f"{server.address}/v1/health/service/caravan-production-luigid?passing",
                                headers={"X-Consul-Token": token}, timeout=10)

        shown = health(tasks)
        assert shown.status_code == 200 and [e["Service"]["Address"] for e in shown.json()] == ["10.0.0.7"]
        assert int(shown.headers["X-Consul-Index"]) > 0
        for token in (service_only, ""):  # no node:read, or no rule at all: filtered, never refused
            hidden = health(token)
            assert (hidden.status_code, hidden.json()) == (200, [])
            assert hidden.headers["X-Consul-Results-Filtered-By-ACLs"] == "true"
        index, entries = consul.Consul(host=server.host, port=server.port, token=tasks).health.service(
            "caravan-production-luigid")
        assert len(entries) == 2 and int(index) == int(shown.headers["X-Consul-Index"])


STOPPABLE = '''
job "sleepy" {
  type = "batch"
  parameterized {
    payload = "forbidden"
  }
  group "g" {
    task "t" {
      driver = "raw_exec"
      config {
        command = "%s"
        args    = ["-c", "import time; print('started', flush=True); time.sleep(30)"]
      }
    }
  }
}
'''


def test_the_retrain_token_dispatches_reads_logs_and_stops_a_child(nomad_acl):
    """What the executor does with a step, with the retrain token: dispatch, follow, copy the logs
    (read-logs), stop the child (DELETE is Job.Deregister: submit-job)."""
    import sys
    import time

    server, secrets = nomad_acl
    server.load_hcl(STOPPABLE % sys.executable, namespace="caravan")
    token = secrets["retrain"]
    child = call(server, token, "POST", "/v1/job/sleepy/dispatch?namespace=caravan", json={}).json()["DispatchedJobID"]
    deadline = time.monotonic() + 20
    logs = None
    while time.monotonic() < deadline:
        allocs = call(server, token, "GET", f"/v1/job/{child}/allocations?namespace=caravan").json()
        if allocs and allocs[0]["ClientStatus"] == "running":
            logs = call(server, token, "GET", f"/v1/client/fs/logs/{allocs[0]['ID']}?task=t&type=stdout&plain=true"
                                              "&origin=start&namespace=caravan")
            if "started" in logs.text:
                break
        time.sleep(0.05)
    assert logs is not None and logs.status_code == 200 and "started" in logs.text
    assert call(server, token, "DELETE", f"/v1/job/{child}?namespace=caravan").status_code == 200
    assert call(server, token, "GET", f"/v1/job/{child}?namespace=caravan").json()["Stop"] is True
    no_submit = 'namespace "caravan" {\n  capabilities = ["list-jobs", "read-job", "dispatch-job", "read-logs"]\n}\n'
    with NomadDouble(acl_policies={"no-submit": [no_submit]}) as double:
        double.load_hcl(STOPPABLE % sys.executable, namespace="caravan")
        other = call(double, "no-submit", "POST", "/v1/job/sleepy/dispatch?namespace=caravan", json={})
        refused = call(double, "no-submit", "DELETE", f"/v1/job/{other.json()['DispatchedJobID']}?namespace=caravan")
        assert (refused.status_code, refused.text) == (403, "Permission denied"), "stopping needs submit-job"
