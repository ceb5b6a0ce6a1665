"""The Vault secret source against a real OpenBao dev server, driven through hvac."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest

from caravan import secrets
from caravan.errors import ConfigurationError, SecretAccessDenied, SecretNotFound
from caravan.secrets.vault import VaultSecrets
from tests.servers import poll_until

POLICY = """
path "secret/data/caravan/dev/storage" { capabilities = ["read"] }
"""


@pytest.fixture(scope="module")
def bao(vault_server: tuple[str, str]) -> Iterator[tuple[str, hvac.Client]]:
    """The server with caravan's storage secret, a read-only policy for it and an AppRole."""
    address, root_token = vault_server
    admin = hvac.Client(url=address, token=root_token)
    admin.sys.create_or_update_policy("caravan-step", POLICY)
    if "approle/" not in admin.sys.list_auth_methods()["data"]:
        admin.sys.enable_auth_method("approle")
    yield address, admin


@pytest.fixture
def storage_secret(bao: tuple[str, hvac.Client], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """caravan's storage secret in Vault; the environment's AWS keys (moto's fixture sets some) removed."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    _, admin = bao
    value = {"aws_access_key_id": "AKIA" + uuid.uuid4().hex[:16].upper(),
             "aws_secret_access_key": f"sk-{uuid.uuid4().hex}"}
    admin.secrets.kv.v2.create_or_update_secret("caravan/dev/storage", secret=value)
    return value


def scoped_token(admin: hvac.Client, **kwargs: object) -> str:
    reply = admin.auth.token.create(policies=["caravan-step"], no_default_policy=False, **kwargs)
    return str(reply["auth"]["client_token"])


def approle(admin: hvac.Client, **role: object) -> tuple[str, str]:
    name = f"step-{uuid.uuid4().hex[:8]}"
    admin.auth.approle.create_or_update_approle(name, token_policies=["caravan-step"], **role)
    role_id = admin.auth.approle.read_role_id(name)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id(name)["data"]["secret_id"]
    return str(role_id), str(secret_id)


def test_reads_a_kv2_secret_with_a_scoped_token(bao: tuple[str, hvac.Client],
                                                storage_secret: dict[str, str]) -> None:
    address, admin = bao
    source = VaultSecrets(address, scoped_token(admin))
    assert dict(source.read("storage")) == storage_secret
    # Every value read is redacted from now on.
    assert storage_secret["aws_secret_access_key"] not in secrets.redact(f"x {storage_secret['aws_secret_access_key']}")


def test_configured_through_the_environment_and_env_variables_still_win(
        bao: tuple[str, hvac.Client], storage_secret: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    address, admin = bao
    monkeypatch.setenv("CARAVAN_SECRETS", "vault")
    monkeypatch.setenv("VAULT_ADDR", address)
    monkeypatch.setenv("VAULT_TOKEN", scoped_token(admin))
    assert secrets.get_secret("storage", "aws_access_key_id") == storage_secret["aws_access_key_id"]
    assert secrets.get_secret("storage", "webhdfs_token") is None  # optional field: absent, not an error
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENV")
    assert secrets.get_secret("storage", "aws_access_key_id") == "AKIAFROMTHEENV"


def test_a_missing_secret_names_the_path_not_a_value(bao: tuple[str, hvac.Client]) -> None:
    address, admin = bao
    source = VaultSecrets(address, admin.token)
    with pytest.raises(SecretNotFound) as caught:
        source.read("no-such-secret")
    assert "secret/data/caravan/dev/no-such-secret" in str(caught.value) and address in str(caught.value)


def test_a_path_outside_the_policy_is_access_denied_naming_the_path(bao: tuple[str, hvac.Client]) -> None:
    address, admin = bao
    admin.secrets.kv.v2.create_or_update_secret("caravan/dev/nomad", secret={"token": "nomad-" + uuid.uuid4().hex})
    token = scoped_token(admin)
    with pytest.raises(SecretAccessDenied) as caught:
        VaultSecrets(address, token).read("nomad")
    assert "secret/data/caravan/dev/nomad" in str(caught.value)
    assert token not in str(caught.value)


def test_a_wrong_token_is_refused_up_front_without_echoing_it(bao: tuple[str, hvac.Client]) -> None:
    address, _ = bao
    wrong = f"s.{uuid.uuid4().hex}"
    with pytest.raises(SecretAccessDenied, match="refused the token") as caught:
        VaultSecrets(address, wrong)
    assert wrong not in str(caught.value)


def test_no_credentials_at_all_is_a_configuration_error(bao: tuple[str, hvac.Client], tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token either
    with pytest.raises(ConfigurationError, match="no token"):
        VaultSecrets(bao[0])


def token_alive(admin: hvac.Client, token: str) -> bool:
    """Whether the server still accepts ``token`` (asked with the admin token, so nothing renews it)."""
    try:
        admin.auth.token.lookup(token)
    except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest):
        return False
    return True


def test_a_renewable_token_is_renewed_before_it_expires(bao: tuple[str, hvac.Client],
                                                        storage_secret: dict[str, str]) -> None:
    address, admin = bao
    started = time.monotonic()  # before the token exists: its first TTL ends after started + 4 s
    source = VaultSecrets(address, scoped_token(admin, ttl="4s", explicit_max_ttl="60s"))
    reads: list[bool] = []

    def read_until_past_first_ttl() -> bool:
        reads.append(source.read("storage") == storage_secret)  # each read renews once half the TTL is gone
        return time.monotonic() - started > 4.5

    # Reading all along until the first TTL is over: without renewals the token would be dead by then.
    poll_until(read_until_past_first_ttl, timeout_s=30, what="reads past the token's first TTL", interval_s=0.2)
    assert reads and all(reads), "every read succeeded"
    assert token_alive(admin, source.client.token), "the token outlived its first TTL"
    assert source.renewals >= 1 and source.logins == 0


def test_approle_logs_in_again_once_its_token_expires(bao: tuple[str, hvac.Client],
                                                      storage_secret: dict[str, str]) -> None:
    address, admin = bao
    role_id, secret_id = approle(admin, token_ttl="2s", token_max_ttl="2s")
    source = VaultSecrets(address, role_id=role_id, secret_id=secret_id)
    first = source.client.token
    assert source.logins == 1
    assert source.read("storage") == storage_secret
    # Wait for the server itself to refuse the first token (past its max TTL: only a new login helps).
    poll_until(lambda: not token_alive(admin, first), timeout_s=30, what="the first AppRole token expired")
    assert source.read("storage") == storage_secret
    assert source.client.token != first and source.logins >= 2


def test_approle_with_a_bad_secret_id_is_refused_clearly(bao: tuple[str, hvac.Client]) -> None:
    address, admin = bao
    role_id, _ = approle(admin)
    bad = str(uuid.uuid4())
    with pytest.raises(SecretAccessDenied, match="AppRole login refused") as caught:
        VaultSecrets(address, role_id=role_id, secret_id=bad)
    assert bad not in str(caught.value)


def test_approle_secret_id_from_a_file(bao: tuple[str, hvac.Client], storage_secret: dict[str, str],
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    address, admin = bao
    role_id, secret_id = approle(admin)
    (tmp_path / "secret-id").write_text(secret_id + "\n")
    monkeypatch.setenv("VAULT_ADDR", address)
    monkeypatch.setenv("VAULT_ROLE_ID", role_id)
    monkeypatch.setenv("CARAVAN_SECRETS", "vault")
    config = tmp_path / "luigi.cfg"
    config.write_text(f"[vault]\nsecret_id_file = {tmp_path / 'secret-id'}\n")
    import luigi.configuration

    from caravan import config as caravan_config

    parser = luigi.configuration.get_config()
    parser.add_config_path(str(config))
    try:
        caravan_config.reload()
        assert secrets.require_secret("storage", "aws_secret_access_key") == storage_secret["aws_secret_access_key"]
    finally:
        parser.remove_section("vault")
        caravan_config.reload()


def test_an_unreachable_vault_is_backend_unavailable() -> None:
    from caravan.errors import BackendUnavailable
    from tests.servers import free_port

    with pytest.raises(BackendUnavailable, match="could not look up its token"):
        VaultSecrets(f"http://127.0.0.1:{free_port()}", "s.whatever")
