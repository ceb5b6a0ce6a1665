"""Hyperparameters and inputs travel through NOMAD_META_* into the step unchanged."""

from __future__ import annotations

import datetime as dt
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from caravan.executors.local import meta_env
from caravan.step import StepContext, execute_step

from ..steps.tasks import Echo

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**63) | st.text()
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hyper=st.dictionaries(st.text(min_size=1, max_size=12), json_values, max_size=6))
def test_any_hyperparameters_round_trip_through_meta_into_the_step(hyper, local_root, test_specs):
    task = Echo(date=dt.date(2026, 11, 22), name="roundtrip", hyper=hyper)
    env = meta_env(task.meta())
    assert all(isinstance(v, str) for v in env.values())
    received = {}

    def step(ctx: StepContext) -> None:
        received.update(ctx.params)
        ctx.writer.write_text("ok", "1")

    assert execute_step(step, "echo", env=env) == 0
    assert received == json.loads(json.dumps(hyper))
    assert received == hyper


def test_a_tampered_identity_is_refused(local_root, test_specs, capsys):
    task = Echo(date=dt.date(2026, 11, 22), name="tamper")
    meta = task.meta()
    identity = json.loads(meta["caravan_identity"])
    identity["params"]["name"] = "other"
    meta["caravan_identity"] = json.dumps(identity)
    assert execute_step(lambda ctx: None, "echo", env=meta_env(meta)) == 2
    assert "hashes to" in capsys.readouterr().err
    assert not task.output().exists()


def test_missing_meta_is_a_contract_error(capsys):
    assert execute_step(lambda ctx: None, "echo", env={}) == 2
    assert "NOMAD_META_caravan_output is not set" in capsys.readouterr().err
