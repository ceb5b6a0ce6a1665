"""The Nomad executor's idempotency tokens: stable per (artifact, attempt), and their attempt readable back."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from caravan.executors.nomad import idempotency_token, token_attempt


@given(st.text(min_size=1, max_size=200), st.integers(min_value=0, max_value=10**9))
@example("Echo/date=2026-11-22/name=x--0123456789abcdef", 0)
def test_a_token_carries_its_attempt_and_differs_per_attempt(artifact_id, attempt):
    token = idempotency_token(artifact_id, attempt)
    assert token_attempt(token) == attempt
    assert token != idempotency_token(artifact_id, attempt + 1)
    assert token == idempotency_token(artifact_id, attempt), "stable across workers and restarts"


@given(st.text(max_size=80))
@example("")
@example("caravan-0123-4")
@example("caravan-" + "0" * 32 + "-x")
@example("caravan-" + "0" * 32 + "-3\n")
def test_a_token_caravan_did_not_make_has_no_attempt(token):
    made_by_caravan = token.startswith("caravan-") and len(token) > 41 and token[8:40].isalnum()
    if not made_by_caravan:
        assert token_attempt(token) is None


def test_near_misses_have_no_attempt():
    good = "caravan-" + "0" * 32 + "-3"
    assert token_attempt(good) == 3
    for near in (good + "\n", " " + good, good.upper(), good.replace("-3", "-٣"), good[:-2]):
        assert token_attempt(near) is None, near
