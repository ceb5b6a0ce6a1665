"""Signed request ids (caravan.gateway.signing) and the gateway's body parsers (caravan.gateway.bodies)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.errors import CaravanError, ConfigurationError
from caravan.gateway.bodies import feedback_body, predict_body
from caravan.gateway.signing import RequestIdInvalid, RequestSigner, experiment_tag, signer_from_secrets
from caravan.serving.limits import REQUEST_ID_MAX
from caravan.serving.model import RequestInvalid

KEY = b"k" * 32
ARMS = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,39}", fullmatch=True)


@given(arm=ARMS, salt=st.text(min_size=1, max_size=40), now=st.integers(0, 2**40))
def test_a_request_id_carries_its_arm_and_experiment(arm: str, salt: str, now: int) -> None:
    signer = RequestSigner(KEY)
    request_id = signer.issue(arm, experiment_tag(salt), now)
    issued = signer.verify(request_id)
    assert (issued.arm, issued.experiment, issued.issued_at) == (arm, experiment_tag(salt), now)
    # what caravan serve and the worker accept as a request id: short printable ASCII
    assert len(request_id) <= REQUEST_ID_MAX and request_id.isascii() and request_id.isprintable()


@given(arm=ARMS, position=st.integers(0, 200), replacement=st.characters(codec="ascii"))
def test_any_change_to_a_request_id_is_refused(arm: str, position: int, replacement: str) -> None:
    signer = RequestSigner(KEY)
    request_id = signer.issue(arm, "abc")
    position %= len(request_id)
    forged = request_id[:position] + replacement + request_id[position + 1:]
    if forged == request_id:
        return
    # base64url's last character can carry padding bits that decoding ignores; the MAC is compared as text
    with pytest.raises(RequestIdInvalid):
        signer.verify(forged)


def test_a_forged_arm_or_another_key_is_refused() -> None:
    signer = RequestSigner(KEY)
    request_id = signer.issue("control", "abc", 100)
    other = signer.issue("challenger", "abc", 100)
    parts, other_parts = request_id.split("."), other.split(".")
    swapped = ".".join(parts[:1] + other_parts[1:2] + parts[2:])  # the challenger's arm under control's MAC
    with pytest.raises(RequestIdInvalid, match="signature"):
        signer.verify(swapped)
    with pytest.raises(RequestIdInvalid, match="signature"):
        RequestSigner(b"x" * 32).verify(request_id)
    for malformed in ("", "abc", "r1.a.b.c.d", "r2." + request_id[3:], request_id + ".x", "r1.é.b.c.d.e"):
        with pytest.raises(RequestIdInvalid, match="malformed"):
            signer.verify(malformed)


def test_the_key_comes_from_the_secrets_source_and_is_never_shown(monkeypatch: pytest.MonkeyPatch,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from caravan import secrets

    secret = "gateway-signing-key-0123456789abcdef"
    monkeypatch.setenv("CARAVAN_SECRET_GATEWAY_SIGNING_KEY", secret)
    secrets.reset()
    signer, configured = signer_from_secrets()
    assert configured and secret not in repr(signer)
    assert RequestSigner(secret.encode()).verify(signer.issue("a", "t")).arm == "a"
    monkeypatch.setenv("CARAVAN_SECRET_GATEWAY_SIGNING_KEY", "short")
    with pytest.raises(ConfigurationError, match="shorter than 16 bytes") as error:
        signer_from_secrets()
    assert "short" not in str(error.value).replace("shorter", "")
    monkeypatch.delenv("CARAVAN_SECRET_GATEWAY_SIGNING_KEY")
    signer, configured = signer_from_secrets()
    assert not configured and "random key" in caplog.text and secret not in caplog.text
    # the secrets source's own name for it (serving/gateway_signing_key, where Vault keeps it)
    monkeypatch.setenv("CARAVAN_SECRET_SERVING_GATEWAY_SIGNING_KEY", secret)
    signer, configured = signer_from_secrets()
    assert configured and RequestSigner(secret.encode()).verify(signer.issue("a", "t")).arm == "a"
    assert secret not in str(CaravanError(f"failed with {secret}"))  # remembered, so redacted


# -- bodies ---------------------------------------------------------------------------------------------


def test_predict_bodies_take_the_unit_out_of_the_rows() -> None:
    one = predict_body(b'{"user_id": "u1", "a": 1.5}', "user_id")
    assert (one.rows, one.single, one.unit) == ([{"a": 1.5}], True, "u1")
    beside = predict_body(b'{"user_id": 7, "rows": [{"a": 1}, {"a": 2}]}', "user_id")
    assert (beside.rows, beside.single, beside.unit) == ([{"a": 1}, {"a": 2}], False, "7")
    listed = predict_body(b'[{"uid": "x", "a": 1}, {"uid": "x", "a": 2}]', "uid")
    assert (listed.rows, listed.unit) == ([{"a": 1}, {"a": 2}], "x")
    assert predict_body(b'{"rows": [{"a": 1}]}', "user_id").unit is None
    assert predict_body(b'{"a": 1, "user_id": null}', "user_id") == predict_body(b'{"a": 1}', "user_id")


@pytest.mark.parametrize(("body", "message"), [
    (b'[{"user_id": "a"}, {"user_id": "b"}]', "different 'user_id' values"),
    (b'[{"user_id": "a"}, {"x": 1}]', "and none"),
    (b'{"user_id": true, "a": 1}', "'user_id' must be a string or an integer, got bool"),
    (b'{"user_id": "", "a": 1}', "1-256 characters"),
    (b'{"user_id": "u", "rows": [{"user_id": "u"}]}', "not both"),
    (b'{"rows": 3}', "'rows' must be a list"),
    (b'[]', "no rows"),
    (b'3', "got int"),
    (b'{', "not JSON"),
])
def test_bad_predict_bodies_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(RequestInvalid, match=message.replace("(", r"\(")):
        predict_body(body, "user_id")


@pytest.mark.parametrize(("body", "message"), [
    (b'{"request_id": "x", "reward": 2}', "'reward' must be 0 or 1, got 2"),
    (b'{"request_id": "x", "reward": true}', "got True"),
    (b'{"request_id": "x", "reward": 1.0}', "got 1.0"),
    (b'{"request_id": "x"}', "got None"),
    (b'{"request_id": 5, "reward": 1}', "'request_id' must be"),
    (b'{"request_id": "x", "reward": 1, "arm": "b"}', "unknown fields 'arm'"),
    (b'[1]', "must be a JSON object"),
])
def test_bad_feedback_bodies_name_the_problem(body: bytes, message: str) -> None:
    with pytest.raises(RequestInvalid, match=message):
        feedback_body(body)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                    max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(value=JSON | st.dictionaries(st.sampled_from(["user_id", "rows", "request_id", "reward", "a"]), JSON),
       raw=st.binary(max_size=40))
def test_any_body_is_parsed_or_refused_as_invalid(value: object, raw: bytes) -> None:
    for body in (json.dumps(value).encode(), raw):
        for parse in (lambda b: predict_body(b, "user_id"), feedback_body):
            try:
                parse(body)
            except RequestInvalid:
                pass
