"""Environments: one name (``caravan.config.environment``) in the KV prefix, the Vault paths and the service names,
so that staging and production can share one Consul and one Vault without seeing each other."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import consul as py_consul
import hvac
import luigi
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from caravan import config
from caravan.config import check_environment, environment, environment_of_namespace
from caravan.errors import ConfigurationError, SecretAccessDenied
from caravan.registry.base import current_key, history_prefix, lock_key, models_prefix
from caravan.registry.consul import ConsulPointer
from caravan.registry.file import FilePointer
from caravan.secrets.vault import VaultSecrets

ENVIRONMENTS = ("staging", "production")


@pytest.fixture(autouse=True)
def _no_environment_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("CARAVAN_ENVIRONMENT", "NOMAD_NAMESPACE"):
        monkeypatch.delenv(name, raising=False)
    config.reload()
    yield
    config.reload()


@pytest.mark.parametrize(("namespace", "expected"), [
    ("", "dev"), ("default", "dev"), ("caravan", "production"), ("caravan-staging", "staging"),
    ("caravan-qa2", "qa2"), ("ml-prod", "ml-prod"),
])
def test_the_environment_comes_from_the_nomad_namespace(namespace, expected, monkeypatch):
    if namespace:
        monkeypatch.setenv("NOMAD_NAMESPACE", namespace)
    assert environment_of_namespace(namespace) == expected
    assert environment() == expected


def test_the_setting_and_its_variable_win_over_the_namespace(monkeypatch):
    monkeypatch.setenv("NOMAD_NAMESPACE", "caravan-staging")
    luigi.configuration.get_config().set("caravan", "environment", "qa")
    try:
        config.reload()
        assert environment() == "qa"
        monkeypatch.setenv("CARAVAN_ENVIRONMENT", "production")
        assert environment() == "production"
    finally:
        luigi.configuration.get_config().remove_option("caravan", "environment")
        config.reload()


def test_the_nomad_section_namespace_is_read_when_no_variable_is_set():
    cfg = luigi.configuration.get_config()
    had = cfg.has_option("nomad", "namespace")
    cfg.set("nomad", "namespace", "caravan-canary")
    try:
        assert environment() == "canary"
    finally:
        if not had:
            cfg.remove_option("nomad", "namespace")


@given(st.one_of(st.text(max_size=40), st.from_regex(r"[a-z0-9][a-z0-9-]{0,32}", fullmatch=True)))
@example("production")
@example("prod\n")
@example("-staging")
@example("staging-")
@example("Staging")
@example("a" * 32)
@example("a" * 33)
@example("")
def test_environment_names_are_checked(name):
    valid = (0 < len(name) <= 32 and all(c in "abcdefghijklmnopqrstuvwxyz0123456789-" for c in name)
             and name[0] != "-" and name[-1] != "-")
    if valid:
        assert check_environment(name) == name
        assert models_prefix(name) == f"caravan/{name}/models/"
    else:
        with pytest.raises(ConfigurationError, match="environment"):
            check_environment(name)


def test_a_bad_environment_variable_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("CARAVAN_ENVIRONMENT", "Prod/../x")
    with pytest.raises(ConfigurationError, match="CARAVAN_ENVIRONMENT"):
        current_key("ranker")


def test_a_namespace_that_gives_no_valid_name_says_so(monkeypatch):
    monkeypatch.setenv("NOMAD_NAMESPACE", "Caravan_Prod")
    with pytest.raises(ConfigurationError, match="derived from the Nomad namespace 'Caravan_Prod'; set CARAVAN_ENV"):
        environment()
    monkeypatch.setenv("CARAVAN_ENVIRONMENT", "production")
    assert environment() == "production", "an explicit environment needs no usable namespace"


def test_every_key_of_a_model_is_inside_its_environment_prefix():
    for env in ENVIRONMENTS:
        keys = (current_key("ranker", env), history_prefix("ranker", env), lock_key("ranker", env))
        assert all(key.startswith(f"caravan/{env}/models/ranker/") for key in keys)
    assert current_key("ranker") == "caravan/dev/models/ranker/current"  # no setting, no namespace: dev


def doc(artifact: str) -> dict:
    return {"artifact_uri": f"file:///a/{artifact}", "artifact_id": artifact, "metrics": {"auc": 0.7},
            "action": "promote", "promoted_by": "test"}


def test_two_environments_share_one_consul_without_crossover(consul_address):
    model = f"m-{uuid.uuid4().hex[:8]}"
    staging, production = (ConsulPointer(address=consul_address, token="", environment=env) for env in ENVIRONMENTS)
    staging.change(model, lambda state: doc("staging-1"))
    assert production.read(model).document is None, "a staging promotion moved production's pointer"
    production.change(model, lambda state: doc("production-1"))
    staging.change(model, lambda state: doc("staging-2"))
    assert staging.read(model).artifact_id == "staging-2"
    assert production.read(model).artifact_id == "production-1"
    assert [h["artifact_id"] for h in production.history(model)] == ["production-1"]
    assert [h["artifact_id"] for h in staging.history(model)] == ["staging-1", "staging-2"]
    # One environment's promotion lock does not hold up the other's.
    with staging.lock(model, "staging-run", timeout_s=5), production.lock(model, "production-run", timeout_s=1):
        pass
    host, port = consul_address.split("://")[-1].rsplit(":", 1)
    _, keys = py_consul.Consul(host=host, port=int(port)).kv.get("caravan/", keys=True)
    mine = sorted(k for k in keys or [] if f"/models/{model}/" in k)
    assert mine and all(k.startswith(("caravan/staging/models/", "caravan/production/models/")) for k in mine)


def test_file_pointers_keep_environments_apart(tmp_path):
    staging, production = (FilePointer(tmp_path, environment=env) for env in ENVIRONMENTS)
    staging.change("ranker", lambda state: doc("s"))
    assert production.read("ranker").document is None
    assert (tmp_path / "caravan" / "staging" / "models" / "ranker" / "current").is_file()


def test_two_environments_share_one_vault_without_crossover(vault_server):
    address, root_token = vault_server
    admin = hvac.Client(url=address, token=root_token)
    tokens, values = {}, {}
    for env in ENVIRONMENTS:
        # Values that occur nowhere else: caravan redacts every secret value it read from its messages.
        values[env] = {"aws_access_key_id": f"AKIA-{env}-{uuid.uuid4().hex}"}
        admin.secrets.kv.v2.create_or_update_secret(f"caravan/{env}/storage", secret=values[env])
        # What Terraform's per-environment step policy grants: its own environment's folder only.
        admin.sys.create_or_update_policy(f"caravan-{env}-step",
                                          f'path "secret/data/caravan/{env}/storage" {{ capabilities = ["read"] }}\n')
        tokens[env] = admin.auth.token.create(policies=[f"caravan-{env}-step"], ttl="10m")["auth"]["client_token"]
    staging = VaultSecrets(address, tokens["staging"], environment="staging")
    production = VaultSecrets(address, tokens["production"], environment="production")
    assert staging.full_path("storage") == "secret/data/caravan/staging/storage"
    assert staging.read("storage") == values["staging"]
    assert production.read("storage") == values["production"]
    # A staging token pointed at production's folder is refused: the paths are the boundary.
    crossed = VaultSecrets(address, tokens["staging"], environment="production")
    with pytest.raises(SecretAccessDenied, match="secret/data/caravan/production/storage"):
        crossed.read("storage")
