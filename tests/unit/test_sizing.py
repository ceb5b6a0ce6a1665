"""A step's CPU/memory ask: the luigi parameters (bounds, parsing, defaults from the spec), that they leave the
artifact alone, the sized job's id and derivation, and telling an ask too large for every node from a full one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import hcl2
import luigi
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from caravan.executors import placement as pl
from caravan.executors import sizing
from caravan.executors.jobspec import load_spec, plain_hcl
from caravan.tasks import NomadJobTask

from ..steps.tasks import Echo

DAY = dt.date(2026, 11, 22)
ROOT = Path(__file__).resolve().parents[2]
STEP_SPECS = sorted(p for p in (ROOT / "nomad").glob("*.nomad.hcl") if "caravan_output" in p.read_text()
                    and "parameterized" in p.read_text() and "retrain" not in p.name)

cpus = st.integers(sizing.MIN_CPU_MHZ, sizing.MAX_CPU_MHZ)
memories = st.integers(sizing.MIN_MEMORY_MB, sizing.MAX_MEMORY_MB)
asks = st.builds(sizing.Ask, cpus, memories)


# -- parsing and bounds ----------------------------------------------------------------------------------

@given(memories, st.sampled_from(["{}", " {} ", "{}\n", "0{}"]))
def test_a_memory_ask_in_bounds_parses_from_the_command_line(value, form):
    assert sizing.memory_parameter().parse(form.format(value)) == value


@given(cpus)
def test_a_cpu_ask_in_bounds_parses_and_serializes_back(value):
    param = sizing.cpu_parameter()
    assert param.parse(param.serialize(param.parse(str(value)))) == value


@given(st.one_of(st.integers(max_value=sizing.MIN_MEMORY_MB - 1), st.integers(min_value=sizing.MAX_MEMORY_MB + 1)))
@example(0)
@example(9)
@example(8 * 1024**3)  # bytes typed where MB were meant
def test_a_memory_ask_out_of_bounds_is_refused_naming_the_parameter(value):
    with pytest.raises(ValueError, match=r"memory_mb .*(out of bounds|whole number)"):
        sizing.memory_parameter().parse(str(value))
    with pytest.raises(ValueError, match="memory_mb"):
        sizing.memory_parameter().normalize(value)


@given(st.text(max_size=12).filter(lambda t: not (t.strip().isascii() and t.strip().isdigit())))
@example("8G")
@example("1.5")
@example("1e3")
@example("-256")
@example("0x100")
def test_anything_but_whole_digits_is_refused(text):
    if not text.strip():
        assert sizing.cpu_parameter().parse(text) is None  # empty: the spec's value
        return
    with pytest.raises(ValueError, match="cpu_mhz must be a whole number of MHz"):
        sizing.cpu_parameter().parse(text)


@pytest.mark.parametrize("value", [True, 2.0, 1.5, "512"])
def test_programmatic_values_must_be_ints(value):
    with pytest.raises(ValueError, match="memory_mb must be a whole number"):
        sizing.memory_parameter().normalize(value)


def test_unset_is_none_and_means_the_specs_value():
    assert sizing.memory_parameter().parse("") is None
    assert Echo(date=DAY, name="x").memory_mb is None
    assert sizing.resolve(sizing.Ask(200, 256), None, 1024) == sizing.Ask(200, 1024)
    assert sizing.resolve(sizing.Ask(200, 256), 300, None) == sizing.Ask(300, 256)


# -- defaults from the spec ------------------------------------------------------------------------------

@pytest.mark.parametrize("path", STEP_SPECS, ids=lambda p: p.name)
def test_each_project_steps_default_ask_is_its_specs_resources(path):
    tree = plain_hcl(hcl2.loads(path.read_text()))
    defaults = {name: body["default"] for block in tree["variable"] for name, body in block.items()}
    ask = load_spec(path.name.removesuffix(".nomad.hcl"), path.parent).ask
    assert ask == sizing.Ask(defaults["cpu"], defaults["memory"])


SPEC = (ROOT / "tests" / "steps" / "nomad" / "echo.nomad.hcl").read_text()


@settings(max_examples=25)  # each example parses a spec with python-hcl2
@given(cpus, memories, st.booleans())
def test_the_ask_is_read_from_literals_or_variable_defaults(tmp_path_factory, cpu, memory, as_variables):
    folder = tmp_path_factory.mktemp("specs")
    if as_variables:
        text = (f'variable "cpu" {{\n  default = {cpu}\n}}\nvariable "memory" {{\n  default = {memory}\n}}\n'
                + SPEC.replace("cpu    = 200", "cpu    = var.cpu").replace("memory = 256", "memory = var.memory"))
    else:
        text = SPEC.replace("cpu    = 200", f"cpu    = {cpu}").replace("memory = 256", f"memory = {memory}")
    (folder / "echo.nomad.hcl").write_text(text)
    assert load_spec("echo", folder).ask == sizing.Ask(cpu, memory)


def test_a_spec_without_resources_gets_nomads_defaults(tmp_path):
    start = SPEC.index("      resources {")
    (tmp_path / "echo.nomad.hcl").write_text(SPEC[:start] + SPEC[SPEC.index("}", start) + 1:])
    assert load_spec("echo", tmp_path).ask == sizing.Ask(100, 300)  # api/resources.go DefaultResources


def test_a_spec_whose_memory_is_out_of_bounds_is_refused_naming_it(tmp_path):
    (tmp_path / "echo.nomad.hcl").write_text(SPEC.replace("memory = 256", "memory = 4"))
    with pytest.raises(Exception, match=r"echo.*resources: memory_mb = 4 is out of bounds"):
        load_spec("echo", tmp_path)


# -- the artifact does not depend on the size ------------------------------------------------------------

@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture only sets the spec folder
@given(st.none() | cpus, st.none() | memories)
def test_a_step_at_any_size_is_the_same_artifact(test_specs_dir, cpu, memory):
    sized = Echo(date=DAY, name="same", cpu_mhz=cpu, memory_mb=memory)
    plain = Echo(date=DAY, name="same")
    assert sized.output().id == plain.output().id
    assert sized.task_id == plain.task_id, "luigi's scheduler sees one task"
    assert sized.hyperparameters() == plain.hyperparameters()


@pytest.fixture
def test_specs_dir(test_specs, local_root):
    return test_specs


class _Upstream(NomadJobTask):
    job = "echo"
    date = luigi.DateParameter()


class _Downstream(NomadJobTask):
    job = "echo"
    date = luigi.DateParameter()

    def requires(self) -> _Upstream:
        return self.clone(_Upstream)


def test_a_size_given_to_one_step_does_not_size_the_steps_it_requires():
    task = _Downstream(date=DAY, memory_mb=16384, cpu_mhz=4000, timeout_s=60)
    upstream = task.requires()
    assert (upstream.memory_mb, upstream.cpu_mhz) == (None, None)
    assert upstream.timeout_s == 60, "other shared parameters are still passed on"
    assert task.clone().memory_mb == 16384, "a clone of the same step keeps its size"


# -- the sized job ---------------------------------------------------------------------------------------

job_names = st.from_regex(r"[a-z][a-z0-9-]{0,30}", fullmatch=True)


@given(job_names, asks)
def test_a_sized_job_names_its_step_job_and_its_ask(job, ask):
    sized = sizing.sized_job_id(job, ask)
    assert sizing.sized_parent(sized) == job
    assert sizing.in_family(sized, job) and sizing.in_family(job, job)
    assert " " not in sized and "/" not in sized, "a valid Nomad job id that is not a child's"
    assert not sizing.in_family(f"{job}-distributed", job)
    assert not sizing.in_family(f"{job}x@1c10m", job)


def _registered(cpu: int = 200, memory: int = 256, index: int = 11, version: int = 0) -> dict:
    return {"ID": "echo", "Name": "echo", "Type": "batch", "Version": version, "JobModifyIndex": index,
            "ModifyIndex": index, "CreateIndex": 10, "Status": "running", "SubmitTime": 1, "Stable": False,
            "Stop": False, "ParameterizedJob": {"Payload": "forbidden", "MetaRequired": ["a"]},
            "Meta": {"owner": "ds"},
            "TaskGroups": [{"Name": "step", "Count": 1,
                            "Tasks": [{"Name": "step", "Resources": {"CPU": cpu, "MemoryMB": memory,
                                                                      "MemoryMaxMB": 0}}]}]}


@given(asks)
def test_the_sized_job_is_the_registered_one_with_its_resources_replaced(ask):
    parent = _registered()
    job = sizing.derive(parent, ask)
    assert job["ID"] == job["Name"] == sizing.sized_job_id("echo", ask)
    assert sizing.task_ask(job) == ask
    assert job["ParameterizedJob"] == parent["ParameterizedJob"]
    assert job["Meta"] == {"owner": "ds", "caravan_sized_from": "echo", "caravan_sized_from_version": "0",
                           "caravan_sized_from_index": "11"}
    assert not {"Status", "Version", "JobModifyIndex", "CreateIndex", "SubmitTime", "Stop"} & set(job)
    assert parent == _registered(), "the parent is not touched"
    registered = {**job, "Stop": False, "JobModifyIndex": 40}
    assert sizing.stale(registered, parent) == ""
    assert "version 0 of echo, which is now at version 1" in sizing.stale(registered, _registered(index=50, version=1))
    assert sizing.stale(None, parent) == "not registered"
    assert sizing.stale({**registered, "Stop": True}, parent) == "stopped"


def test_memory_max_is_raised_to_the_memory_ask():
    parent = _registered()
    parent["TaskGroups"][0]["Tasks"][0]["Resources"]["MemoryMaxMB"] = 512
    resources = sizing.derive(parent, sizing.Ask(200, 1024))["TaskGroups"][0]["Tasks"][0]["Resources"]
    assert resources["MemoryMaxMB"] == 1024


def test_only_a_parameterized_job_is_sized():
    with pytest.raises(ValueError, match="not a parameterized job"):
        sizing.derive({**_registered(), "ParameterizedJob": None}, sizing.Ask(1, 10))


# -- too large for every node vs a full cluster ----------------------------------------------------------

def _node(cpu: int, memory: int, *, reserved_memory: int = 0, **fields) -> dict:
    return {"ID": f"n{cpu}-{memory}", "Status": "ready", "SchedulingEligibility": "eligible", "Drain": False,
            "Datacenter": "dc1", "NodePool": "default",
            "NodeResources": {"Cpu": {"CpuShares": cpu}, "Memory": {"MemoryMB": memory}},
            "ReservedResources": {"Cpu": {"CpuShares": 0}, "Memory": {"MemoryMB": reserved_memory}}, **fields}


def _job(cpu: int, memory: int) -> dict:
    job = _registered(cpu, memory)
    job.update(Datacenters=["dc*"], NodePool="default")
    return job


@given(st.lists(st.tuples(st.integers(100, 20_000), st.integers(64, 65_536)), min_size=1, max_size=5),
       st.integers(1, 30_000), st.integers(10, 100_000))
def test_an_ask_is_too_large_exactly_when_no_empty_node_holds_it(nodes, cpu, memory):
    verdict = pl.too_large(_job(cpu, memory), [_node(c, m) for c, m in nodes])
    fits = any(cpu <= c and memory <= m for c, m in nodes)
    assert (verdict == "") == fits
    if not fits:
        assert f"asks cpu {cpu} MHz and memory {memory} MB" in verdict


def test_reserved_resources_and_ineligible_nodes_do_not_count():
    job = _job(500, 4000)
    assert "more memory than any of the 1 node" in pl.too_large(job, [_node(8000, 4096, reserved_memory=512)])
    big_elsewhere = [_node(8000, 2048), _node(8000, 65536, Datacenter="eu1"), _node(8000, 65536, Drain=True),
                     _node(8000, 65536, SchedulingEligibility="ineligible"), _node(8000, 65536, Status="down"),
                     _node(8000, 65536, NodePool="gpu")]
    assert "largest: cpu 8000 MHz, memory 2048 MB" in pl.too_large(job, big_elsewhere)
    assert pl.too_large(job, []) == "", "no eligible node at all: the scheduler's metrics say why"
