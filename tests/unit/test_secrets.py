"""The env secret source, secret naming and redaction (no server needed)."""

from __future__ import annotations

import io
import logging
import string
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from uvicorn.logging import AccessFormatter, DefaultFormatter

from caravan import secrets
from caravan.errors import BackendRejected, ConfigurationError, SecretNotFound, StepFailed

segment = st.text(string.ascii_lowercase + string.digits + "_.-", min_size=1, max_size=12).filter(
    lambda s: s[0] not in "_.-" and s not in (".", ".."))


@given(st.lists(segment, min_size=1, max_size=4))
def test_well_formed_paths_are_accepted_and_map_to_one_env_name(parts: list[str]) -> None:
    path = "/".join(parts)
    assert secrets.check_path(path) == path
    name = secrets.env_name(path, "token")
    assert name.replace("_", "").isalnum() and name == name.upper()


@pytest.mark.parametrize("path", ["", "/abs", "a//b", "../x", "a/../b", "a/", "UPPER", "a b", "a/./b", "é", "a\n",
                                  "storage\n", "-lead", "a/.hidden/../b"])
def test_malformed_paths_are_refused_by_name(path: str) -> None:
    with pytest.raises(ConfigurationError, match="secret path"):
        secrets.check_path(path)


# Anything outside lower-case letters, digits, "_", ".", "-" and "/" (newlines included).
foreign = st.characters(exclude_characters=string.ascii_lowercase + string.digits + "_.-/")


@given(st.lists(segment, min_size=1, max_size=4), foreign, st.data())
def test_a_foreign_character_anywhere_in_a_path_is_refused(parts: list[str], bad: str, data: st.DataObject) -> None:
    path = "/".join(parts)
    at = data.draw(st.integers(0, len(path)), label="at")
    with pytest.raises(ConfigurationError, match="secret path"):
        secrets.check_path(path[:at] + bad + path[at:])


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


@pytest.fixture
def root_logging() -> Iterator[None]:
    """Put the root logger's handlers and level back after a test that reconfigures logging."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def test_handlers_added_after_the_secret_was_read_never_print_it(
        monkeypatch: pytest.MonkeyPatch, root_logging: None) -> None:
    marker = "tok-3b1f0c9e-late-handlers"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", marker)
    assert secrets.get_secret("consul", "token") == marker
    # Only now is logging configured, as an application does after startup...
    root_out = io.StringIO()
    logging.basicConfig(force=True, stream=root_out, level=logging.INFO,
                        format="%(levelname)s %(name)s %(message)s")
    # ...and as uvicorn does: its own loggers, their own handlers, no propagation to the root.
    access_out, error_out = io.StringIO(), io.StringIO()
    for name, stream, formatter in (
            ("caravan.test.uvicorn.access", access_out,
             AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False)),
            ("caravan.test.uvicorn.error", error_out, DefaultFormatter("%(levelprefix)s %(message)s",
                                                                       use_colors=False))):
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger(name)
        monkeypatch.setattr(logger, "handlers", [])  # all three put back after the test
        monkeypatch.setattr(logger, "propagate", False)
        monkeypatch.setattr(logger, "level", logging.INFO)
        logger.addHandler(handler)

    logging.getLogger("caravan.test").info("connecting with %s", marker)
    logging.getLogger("caravan.test").info(f"token={marker}")  # already formatted by the caller
    logging.getLogger("caravan.test").info("token=%s%s", marker[:8], marker[8:])  # split over two arguments
    try:
        raise ValueError(f"refused token {marker}")
    except ValueError:
        logging.getLogger("caravan.test").exception("call failed")
    logging.getLogger("caravan.test.uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", f"/health?token={marker}", "1.1", 200)
    logging.getLogger("caravan.test.uvicorn.error").warning("bad header %r", {"X-Consul-Token": marker})

    outputs = {"root": root_out.getvalue(), "access": access_out.getvalue(), "error": error_out.getvalue()}
    assert all(text for text in outputs.values()), f"every handler wrote something: {outputs}"
    assert {name for name, text in outputs.items() if marker in text} == set(), outputs
    assert outputs["root"].count(secrets.REDACTED) == 4 and "ValueError: refused token" in outputs["root"]
    assert '"GET /health?token=[redacted] HTTP/1.1" 200' in outputs["access"], "uvicorn's formatter still works"
    assert secrets.REDACTED in outputs["error"]


def test_step_failures_and_every_caravan_error_hide_values_read(monkeypatch: pytest.MonkeyPatch) -> None:
    marker = "tok-3b1f0c9e-marker"
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", marker)
    assert secrets.get_secret("consul", "token") == marker
    failure = StepFailed("step failed", stderr_tail=f"Traceback ...\nValueError: bad token {marker}\n")
    assert marker not in str(failure) and marker not in failure.stderr_tail
    assert marker not in str(BackendRejected(f"GET /v1/kv?token={marker}: 403", backend="consul"))


def test_short_values_are_not_redacted() -> None:
    secrets.remember("abc")
    assert secrets.redact("abc abc") == "abc abc"
