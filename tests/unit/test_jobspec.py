"""The job contract is checked from the spec before anything is dispatched."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan import JobSpecError
from caravan.executors.jobspec import CONTRACT_META, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]
GOOD = (ROOT / "nomad" / "make-numbers.nomad.hcl").read_text()


def spec_file(tmp_path: Path, text: str, name: str = "make-numbers") -> Path:
    path = tmp_path / f"{name}.nomad.hcl"
    path.write_text(text)
    return path


def test_every_shipped_step_spec_follows_the_contract():
    # Steps are the specs that take the contract's meta; retrain-ranker(-backfill), serving and luigid are not.
    step_specs = [p for p in (ROOT / "nomad").glob("*.nomad.hcl") if "caravan_output" in p.read_text()]
    assert step_specs
    for path in step_specs:
        spec = parse_spec(path.name.removesuffix(".nomad.hcl"), path)
        assert spec.payload == "forbidden"
        assert set(CONTRACT_META) <= set(spec.meta_required)
        assert spec.command == "python" and spec.args[0] == "-m"


def test_the_example_spec_reads_as_expected():
    spec = load_spec("make-numbers", ROOT / "nomad")
    assert (spec.group, spec.task, spec.driver) == ("step", "step", "docker")
    assert spec.args == ("-m", "jobs.make_numbers")
    assert spec.env == {"CARAVAN_STEP_EXECUTOR": "nomad"}
    assert spec.command_line({}, python="/venv/bin/python") == ["/venv/bin/python", "-m", "jobs.make_numbers"]


@pytest.mark.parametrize(("change", "message"), [
    (('type        = "batch"', 'type        = "service"'), "must be type = \"batch\""),
    (('payload       = "forbidden"', 'payload       = "optional"'), "payload = \"forbidden\""),
    (('"caravan_job"]', '"other"]'), "lacks the contract's keys \\['caravan_job'\\]"),
    (('command = "python"', 'image2 = "x"'), "has no config.command"),
    (('job "make-numbers"', 'job "other-name"'), "must match the file name"),
    (('parameterized {', 'parameterized_not {'), "one parameterized block"),
])
def test_a_spec_that_breaks_the_contract_is_refused_naming_the_file(tmp_path, change, message):
    old, new = change
    assert old in GOOD
    path = spec_file(tmp_path, GOOD.replace(old, new))
    with pytest.raises(JobSpecError, match=message) as info:
        parse_spec("make-numbers", path)
    assert str(path) in str(info.value)


def test_missing_and_unparsable_specs_are_clear(tmp_path):
    with pytest.raises(JobSpecError, match="no spec at"):
        load_spec("nope", tmp_path)
    path = spec_file(tmp_path, 'job "make-numbers" {')
    with pytest.raises(JobSpecError, match="not valid HCL"):
        parse_spec("make-numbers", path)


meta_keys = st.sampled_from([*CONTRACT_META, "extra", "caravan_other", "x"])


@given(st.dictionaries(meta_keys, st.text(max_size=5)))
def test_meta_is_accepted_exactly_when_it_matches_the_spec(meta):
    spec = load_spec("make-numbers", ROOT / "nomad")
    allowed = set(spec.meta_required) | set(spec.meta_optional)
    ok = set(meta) <= allowed and set(spec.meta_required) <= set(meta)
    if ok:
        spec.check_meta(meta)
    else:
        with pytest.raises(JobSpecError) as info:
            spec.check_meta(meta)
        for key in sorted(set(meta) - allowed):
            assert key in str(info.value)
