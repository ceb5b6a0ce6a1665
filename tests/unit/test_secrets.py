"""The env secret source, secret naming and redaction (no server needed)."""

from __future__ import annotations

import logging
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan import secrets
from caravan.errors import ConfigurationError, SecretNotFound, StepFailed

segment = st.text(string.ascii_lowercase + string.digits + "_.-", min_size=1, max_size=12).filter(
    lambda s: s[0] not in "_.-" and s not in (".", ".."))


@given(st.lists(segment, min_size=1, max_size=4))
def test_well_formed_paths_are_accepted_and_map_to_one_env_name(parts: list[str]) -> None:
    path = "/".join(parts)
    assert secrets.check_path(path) == path
    name = secrets.env_name(path, "token")
    assert name.replace("_", "").isalnum() and name == name.upper()


@given(st.sampled_from(["", "/abs", "a//b", "../x", "a/../b", "a/", "UPPER", "a b", "a/./b", "é"]))
def test_malformed_paths_are_refused_by_name(path: str) -> None:
    with pytest.raises(ConfigurationError, match="secret path"):
        secrets.check_path(path)


def test_env_source_reads_the_well_known_names_and_the_generic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-example")
    monkeypatch.setenv("CARAVAN_SECRET_WAREHOUSE_PASSWORD", "hunter22")
    source = secrets.EnvSecrets()
    assert source.read("storage") == {"aws_access_key_id": "AKIAEXAMPLE",
                                      "aws_secret_access_key": "wJalrXUtnFEMI-example"}
    assert source.read("warehouse") == {"password": "hunter22"}
    assert secrets.get_secret("storage", "aws_secret_access_key") == "wJalrXUtnFEMI-example"
    assert secrets.get_secret("storage", "webhdfs_token") is None


def test_a_missing_secret_names_the_path_and_the_variable_never_a_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMAD_TOKEN", raising=False)
    with pytest.raises(SecretNotFound) as caught:
        secrets.require_secret("nomad", "token")
    assert "nomad#token" in str(caught.value) and "NOMAD_TOKEN" in str(caught.value)
    with pytest.raises(SecretNotFound, match="nowhere"):
        secrets.EnvSecrets().read("nowhere")


def test_unknown_source_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CARAVAN_SECRETS", "keychain")
    monkeypatch.delenv("CARAVAN_SECRET_WAREHOUSE_PASSWORD", raising=False)
    with pytest.raises(ConfigurationError, match="keychain"):
        secrets.get_secret("warehouse", "password")


secret_values = st.text(string.ascii_letters + string.digits + "+/=-_", min_size=secrets.MIN_REDACTED_LENGTH,
                        max_size=40)


@given(secret_values, st.text(max_size=30), st.text(max_size=30))
def test_redaction_hides_every_value_read(value: str, before: str, after: str) -> None:
    secrets.remember(value)
    assert value not in secrets.redact(before + value + after)


def test_values_read_from_the_environment_are_redacted_in_logs_and_step_failures(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    marker = "tok-3b1f0c9e-marker"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", marker)
    caplog.set_level(logging.INFO)
    assert secrets.get_secret("consul", "token") == marker
    secrets.install_log_redaction()  # caplog's handler was added after the first read
    logging.getLogger("caravan.test").info("connecting with %s", marker)
    assert marker not in caplog.text and secrets.REDACTED in caplog.text
    failure = StepFailed("step failed", stderr_tail=f"Traceback ...\nValueError: bad token {marker}\n")
    assert marker not in str(failure) and marker not in failure.stderr_tail


def test_short_values_are_not_redacted() -> None:
    secrets.remember("abc")
    assert secrets.redact("abc abc") == "abc abc"
