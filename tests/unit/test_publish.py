"""`caravan publish` and `caravan trigger retrain`, driven in-process against the Nomad double through python-nomad.

The parse/plan tests on a small spec (`small_spec`) run unchanged against a real `nomad agent -dev` when
CARAVAN_TEST_NOMAD_ADDR is set; the ones that publish the project's specs need the double (their vault blocks
need a Vault-enabled cluster).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hcl2
import pytest
from hcl2.utils import process_escape_sequences
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import nomad
from caravan import ConfigurationError
from caravan.cli import main
from caravan.nomad_api import NomadAPI, NomadUnavailable
from caravan.publish import (
    Change,
    Publisher,
    PublishError,
    coerce,
    common_variables,
    find_specs,
    image_for,
    plan_changes,
    read_spec,
    render_var_file,
    variables_for,
)
from caravan.trigger import last_complete_day

from ..doubles.nomad import NomadDouble
from ..doubles.nomad import plan as nomad_plan

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "nomad"
JOB_IDS = sorted(p.name.removesuffix(".nomad.hcl") for p in SPECS.glob("*.nomad.hcl"))


@pytest.fixture
def double(monkeypatch: pytest.MonkeyPatch) -> Iterator[NomadDouble]:
    """A fresh Nomad double per test, made the configured Nomad (as NOMAD_ADDR)."""
    with NomadDouble() as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        yield server


def client(double: NomadDouble, namespace: str | None = None) -> nomad.Nomad:
    return nomad.Nomad(address=double.address, namespace=namespace, timeout=10)


def registrations(double: NomadDouble, since: int = 0) -> list[tuple[str, str]]:
    """Job registrations (POST|PUT /v1/jobs or /v1/job/:id) recorded since request number ``since``."""
    found = []
    for method, raw in double.requests[since:]:
        path = urlsplit(raw).path
        job_write = path.startswith("/v1/job/") and not path.endswith(
            ("/dispatch", "/periodic/force", "/plan", "/evaluate", "/revert", "/stable", "/scale"))
        if method in ("POST", "PUT") and (path == "/v1/jobs" or job_write):
            found.append((method, raw))
    return found


def publish(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["publish", "--jobs-dir", str(SPECS), *args])
    out, err = capsys.readouterr()
    return code, out, err


def actions(out: str) -> dict[str, str]:
    """job id -> created/changed/unchanged, from publish's report."""
    return {m.group(2): m.group(1) for m in re.finditer(r"^(created|changed|unchanged) +(\S+)", out, re.M)}


# -- publish --------------------------------------------------------------------------------------------


def test_the_first_publish_creates_every_job_with_the_namespace_and_image(double, capsys, monkeypatch):
    monkeypatch.setenv("NOMAD_NAMESPACE", "caravan-staging")
    monkeypatch.setenv("CARAVAN_IMAGE_REPOSITORY", "registry.example:5000/ml/caravan")
    code, out, _ = publish(capsys, "--version", "v1.4.0")
    assert code == 0, out
    assert actions(out) == dict.fromkeys(JOB_IDS, "created")
    assert {"gateway", "worker", "serving", "luigid"} <= set(JOB_IDS)  # issue 12's specs are published with the others
    assert f"{len(JOB_IDS)} created, 0 changed, 0 unchanged" in out
    n = client(double, "caravan-staging")
    for job_id in JOB_IDS:
        job = n.job.get_job(job_id)
        assert (job["Namespace"], job["Version"]) == ("caravan-staging", 0)
        images = {t["Config"]["image"] for g in job["TaskGroups"] for t in g["Tasks"]}
        assert images == {"registry.example:5000/ml/caravan:v1.4.0"}, job_id
    assert len(registrations(double)) == len(JOB_IDS)
    assert all("namespace=caravan-staging" in raw for _, raw in registrations(double))


def test_the_release_tag_reaches_the_server_environment(double, capsys):
    code, out, _ = publish(capsys, "--version", "v7.1.0")
    assert code == 0, out
    (task,) = [t for g in client(double).job.get_job("serving")["TaskGroups"] for t in g["Tasks"]]
    assert task["Env"]["CARAVAN_RELEASE"] == "v7.1.0"


def test_list_variables_reach_the_jobs_as_lists(double, capsys):
    code, out, _ = publish(capsys, "--version", "v1", "--var", 'datacenters=["dc1", "dc2"]')
    assert code == 0, out
    n = client(double)
    assert {tuple(n.job.get_job(job_id)["Datacenters"]) for job_id in JOB_IDS} == {("dc1", "dc2")}


def test_the_same_tag_again_reports_every_job_unchanged_and_registers_nothing(double, capsys):
    assert publish(capsys, "--version", "v1")[0] == 0
    indexes = {j: client(double).job.get_job(j)["JobModifyIndex"] for j in JOB_IDS}
    before = len(double.requests)
    code, out, _ = publish(capsys, "--version", "v1")
    assert code == 0, out
    assert actions(out) == dict.fromkeys(JOB_IDS, "unchanged")
    assert registrations(double, before) == []
    assert {j: client(double).job.get_job(j)["JobModifyIndex"] for j in JOB_IDS} == indexes
    assert all(client(double).job.get_job(j)["Version"] == 0 for j in JOB_IDS)
    # Parse gives the API form and Nomad stores its defaults: the plan, not a field-by-field compare, says so.
    stored = client(double).job.get_job("serving")
    assert stored["NodePool"] == "default"
    luigid = client(double).job.get_job("luigid")
    assert luigid["TaskGroups"][0]["Services"][0]["Checks"][0]["Name"] == 'service: "caravan-dev-luigid" check'


def test_one_changed_variable_registers_exactly_that_job_and_prints_the_plan_diff(double, capsys):
    assert publish(capsys, "--version", "v1")[0] == 0
    before = len(double.requests)
    code, out, _ = publish(capsys, "--version", "v1", "--var", "count=3")  # only serving declares count
    assert code == 0, out
    assert actions(out) == {**dict.fromkeys(JOB_IDS, "unchanged"), "serving": "changed"}
    assert [urlsplit(raw).path for _, raw in registrations(double, before)] == ["/v1/jobs"]
    assert re.search(r"^changed +serving +v0 → v1 ", out, re.M)
    assert '    Edited  TaskGroups[server].Count: "2" → "3"\n' in out
    serving = client(double).job.get_job("serving")
    assert (serving["Version"], serving["TaskGroups"][0]["Count"]) == (1, 3)


def test_a_new_spec_is_created_and_the_others_left_alone(double, capsys, tmp_path):
    jobs = tmp_path / "nomad"
    shutil.copytree(SPECS, jobs)
    assert main(["publish", "--version", "v1", "--jobs-dir", str(jobs)]) == 0
    text = (jobs / "make-numbers.nomad.hcl").read_text()
    (jobs / "make-more-numbers.nomad.hcl").write_text(text.replace('job "make-numbers"', 'job "make-more-numbers"'))
    capsys.readouterr()
    before = len(double.requests)
    assert main(["publish", "--version", "v1", "--jobs-dir", str(jobs)]) == 0
    out = capsys.readouterr().out
    assert actions(out) == {**dict.fromkeys(JOB_IDS, "unchanged"), "make-more-numbers": "created"}
    assert len(registrations(double, before)) == 1
    assert f"1 created, 0 changed, {len(JOB_IDS)} unchanged" in out
    assert client(double).job.get_job("make-more-numbers")["Version"] == 0


def test_a_new_tag_changes_every_job_by_one_version_with_a_diff_naming_the_image(double, capsys):
    publish(capsys, "--version", "v1")
    code, out, _ = publish(capsys, "--version", "v2")
    assert code == 0
    assert actions(out) == dict.fromkeys(JOB_IDS, "changed")
    assert re.search(r"^changed +make-numbers +v0 → v1 ", out, re.M)
    assert 'Edited  TaskGroups[step].Tasks[step].Config.image: "caravan:v1" → "caravan:v2"' in out
    assert 'Edited  TaskGroups[server].Tasks[serve].Env[CARAVAN_RELEASE]: "v1" → "v2"' in out
    assert all(client(double).job.get_job(j)["Version"] == 1 for j in JOB_IDS)


def test_diff_prints_every_change_in_full(double, capsys):
    publish(capsys, "--version", "v1")
    long_root = "s3://bucket/" + "x" * 200
    code, out, _ = publish(capsys, "--version", "v1", "--var", f"artifact_root={long_root}", "--diff", "--dry-run")
    assert code == 0
    # The spec's env var was "": to Nomad's diff a value from "" is Added, not Edited.
    assert f'Added   TaskGroups[retrain].Tasks[retrain].Env[CARAVAN_ARTIFACT_ROOT]: "{long_root}"' in out
    code, out, _ = publish(capsys, "--version", "v1", "--var", f"artifact_root={long_root}", "--dry-run")
    assert long_root not in out and "…" in out  # the short diff truncates values


def test_a_dry_run_reports_without_registering(double, capsys):
    code, out, _ = publish(capsys, "--version", "v1", "--dry-run")
    assert code == 0
    assert actions(out) == dict.fromkeys(JOB_IDS, "created")
    assert "(dry run: nothing registered)" in out
    assert registrations(double) == []
    publish(capsys, "--version", "v1")
    before = len(double.requests)
    code, out, _ = publish(capsys, "--version", "v2", "--dry-run")
    assert actions(out)["serving"] == "changed" and "v0 → v1" in out
    assert registrations(double, before) == []
    assert client(double).job.get_job("serving")["Version"] == 0


@pytest.mark.parametrize(("old", "new", "message"), [
    ('crons            = [var.schedule]', 'crons            = [var.no_such_variable]', "no_such_variable"),
    ('job "retrain-ranker" {', 'job "retrain-ranker" {{', "not valid HCL"),
])
def test_one_broken_spec_registers_nothing_and_names_the_file(double, capsys, tmp_path, old, new, message):
    jobs = tmp_path / "nomad"
    shutil.copytree(SPECS, jobs)
    broken = jobs / "retrain-ranker.nomad.hcl"
    assert old in broken.read_text()
    broken.write_text(broken.read_text().replace(old, new))
    code = main(["publish", "--version", "v1", "--jobs-dir", str(jobs)])
    _, err = capsys.readouterr()
    assert code == 1
    assert str(broken) in err and message in err
    assert "nothing was registered" in err
    assert registrations(double) == []


def test_the_retrain_job_is_periodic_without_overlap_on_its_schedule(double, capsys):
    publish(capsys, "--version", "v1")
    job = client(double).job.get_job("retrain-ranker")
    assert job["Type"] == "batch" and job["ParameterizedJob"] is None
    assert job["Periodic"] == {"Enabled": True, "Spec": "", "Specs": ["0 */3 * * *"], "SpecType": "cron",
                               "ProhibitOverlap": True, "TimeZone": "UTC"}
    group = job["TaskGroups"][0]
    assert group["RestartPolicy"]["Attempts"] == 0 and group["ReschedulePolicy"]["Attempts"] == 0
    task = group["Tasks"][0]
    script = task["Config"]["args"][-1]
    assert "luigi --module pipelines.ranker RetrainRanker" in script
    assert '--date "$(date -u -d yesterday +%F)"' in script and '--scheduler-url "$LUIGI_SCHEDULER_URL"' in script
    assert task["Env"]["CARAVAN_EXECUTOR"] == "nomad" and task["Env"]["CARAVAN_POINTER"] == "consul"
    code, out, _ = publish(capsys, "--version", "v1", "--var", "schedule=*/30 * * * *",
                           "--var", "artifact_root=s3://models/caravan")
    assert code == 0 and actions(out)["retrain-ranker"] == "changed"
    # Specs is a set to Nomad's diff: one member deleted, one added (diff.go stringSetDiff).
    assert 'Added   Periodic.Specs: "*/30 * * * *"\n    Deleted Periodic.Specs: "0 */3 * * *"\n' in out
    job = client(double).job.get_job("retrain-ranker")
    assert job["Periodic"]["Specs"] == ["*/30 * * * *"]
    assert job["TaskGroups"][0]["Tasks"][0]["Env"]["CARAVAN_ARTIFACT_ROOT"] == "s3://models/caravan"
    # Only the specs that declare a variable get it.
    assert actions(out)["make-numbers"] == "unchanged"


def test_a_concurrent_register_between_plan_and_register_is_a_clear_conflict(double, capsys):
    publish(capsys, "--version", "v1")
    publisher = Publisher()
    specs = find_specs(SPECS, ())
    planned = publisher.plan(specs, common_variables("v2", None), {})
    planned_index = next(p.modify_index for p in planned if p.job_id == "make-numbers")
    # Someone else registers make-numbers between our plan and our register.
    n = client(double)
    job = n.job.get_job("make-numbers")
    job["TaskGroups"][0]["Tasks"][0]["Env"]["SOMEONE"] = "else"
    n.jobs.register_job({"Job": job})
    now = n.job.get_job("make-numbers")["JobModifyIndex"]
    with pytest.raises(PublishError, match=r"registering 'make-numbers' .*make-numbers.nomad.hcl.* changed in Nomad "
                                           r"after it was planned") as info:
        publisher.apply(planned)
    message = str(info.value)
    assert f"Enforcing job modify index {planned_index}: job exists with conflicting job modify index: {now}" in message
    assert "registered before it: evaluate, gate-model" in message
    assert n.job.get_job("make-numbers")["TaskGroups"][0]["Tasks"][0]["Env"]["SOMEONE"] == "else"
    assert n.job.get_job("serving")["Version"] == 0  # nothing after the refusal


def test_a_job_created_by_someone_else_after_the_plan_is_a_conflict_too(double, capsys, tmp_path):
    jobs = tmp_path / "nomad"
    jobs.mkdir()
    shutil.copy(SPECS / "make-numbers.nomad.hcl", jobs)
    publisher = Publisher()
    planned = publisher.plan(find_specs(jobs, ()), common_variables("v1", None), {})
    assert [(p.action, p.modify_index) for p in planned] == [("created", 0)]
    double.load_hcl(jobs / "make-numbers.nomad.hcl")
    with pytest.raises(PublishError, match=r"'make-numbers' changed in Nomad after it was planned.*"
                                           r"Enforcing job modify index 0: job already exists"):
        publisher.apply(planned)


class AnswerLost(NomadAPI):
    """The real client, except that the first job register's answer is lost: after Nomad applied it
    (``applied=True``, a leader change between apply and answer) or before it reached Nomad."""

    def __init__(self, address: str, applied: bool) -> None:
        super().__init__(address)
        self.applied, self.lost = applied, False

    def post(self, path: str, json: Any = None, params: Any = None) -> Any:
        if path == "jobs" and not self.lost:
            self.lost = True
            if self.applied:
                super().post(path, json, params)
            raise NomadUnavailable(f"POST {self.address}/v1/jobs: no answer: connection reset", backend="nomad")
        return super().post(path, json, params)


@pytest.mark.parametrize("applied", [True, False])
def test_a_register_without_an_answer_is_planned_again_not_sent_twice(double, capsys, tmp_path, applied):
    jobs = tmp_path / "nomad"
    jobs.mkdir()
    shutil.copy(SPECS / "make-numbers.nomad.hcl", jobs)
    publisher = Publisher(AnswerLost(double.address, applied), retry_s=10)
    planned = publisher.plan(find_specs(jobs, ()), common_variables("v1", None), {})
    before = len(double.requests)
    publisher.apply(planned)
    sent = [urlsplit(raw).path for method, raw in double.requests[before:] if method != "GET"]
    # Applied: the new plan shows no change, so nothing is sent again. Not applied: sent once more, at the
    # same modify index (0: create only), which Nomad accepts because nothing was written in between.
    assert sent == ["/v1/jobs", "/v1/job/make-numbers/plan"] if applied else \
        ["/v1/job/make-numbers/plan", "/v1/jobs"]
    job = client(double).job.get_job("make-numbers")
    assert (job["Version"], planned[0].registered) == (0, True)


def test_publish_waits_out_a_leader_election(double, capsys):
    # Every request in the window gets 500 "No cluster leader" or a dropped connection: nothing was decided.
    double.leader_loss(1.5, drop_connections=True)
    code, out, err = publish(capsys, "--version", "v1", "--only", "serving", "make-numbers")
    assert code == 0, err
    assert actions(out) == {"make-numbers": "created", "serving": "created"}
    assert double.stats["no_leader_answers"] >= 1 and double.stats["dropped_connections"] >= 1
    assert [client(double).job.get_job(j)["Version"] for j in ("make-numbers", "serving")] == [0, 0]
    code, out, err = publish(capsys, "--version", "v1", "--only", "serving", "make-numbers")
    assert code == 0 and actions(out) == {"make-numbers": "unchanged", "serving": "unchanged"}, err


def test_a_nomad_that_never_answers_is_one_clear_error(tmp_path):
    jobs = tmp_path / "nomad"
    jobs.mkdir()
    shutil.copy(SPECS / "make-numbers.nomad.hcl", jobs)
    with socket.socket() as unused:  # a port nothing listens on: every connection is refused
        unused.bind(("127.0.0.1", 0))
        address = f"http://127.0.0.1:{unused.getsockname()[1]}"
    publisher = Publisher(NomadAPI(address), retry_s=0.3)
    with pytest.raises(PublishError, match=r"Nomad did not answer within 0.3 s while parsing .*make-numbers.nomad.hcl; "
                                           r"nothing was registered: .*POST .*/v1/jobs/parse: no answer"):
        publisher.plan(find_specs(jobs, ()), common_variables("v1", None), {})


def test_only_and_var_are_checked(double, capsys):
    code, out, _ = publish(capsys, "--version", "v1", "--only", "serving", "luigid")
    assert code == 0 and actions(out) == {"luigid": "created", "serving": "created"}
    code, _, err = publish(capsys, "--version", "v1", "--only", "nope")
    assert code == 1 and "--only nope" in err and "make-numbers" in err
    code, _, err = publish(capsys, "--version", "v1", "--var", "no_such=1")
    assert code == 1 and "no spec" in err and "no_such" in err
    code, _, err = publish(capsys, "--version", "v1", "--var", "cpu=lots")
    assert code == 1 and "cpu='lots': not a number" in err
    code, _, err = publish(capsys, "--version", "v1/../x")
    assert code == 1 and "not a valid image tag" in err
    assert len(registrations(double)) == 2  # luigid and serving, from the first call only


def test_auto_promote_reaches_only_the_specs_with_canaries_as_a_bool(double, capsys):
    specs = {spec.path.name: spec for spec in find_specs(SPECS, ())}
    assert variables_for(specs["serving.nomad.hcl"], {}, {"auto_promote": "true"}) == {"auto_promote": True}
    assert "auto_promote = true" in render_var_file({"auto_promote": True})
    # serving and (issue 12) the gateway deploy canaries; nothing else declares the variable.
    assert sorted(name for name, spec in specs.items() if "auto_promote" in spec.variables) == \
        ["gateway.nomad.hcl", "serving.nomad.hcl"]
    code, out, _ = publish(capsys, "--version", "v1", "--var", "auto_promote=true", "--dry-run")
    assert code == 0 and actions(out)["serving"] == "created"
    code, _, err = publish(capsys, "--version", "v1", "--var", "auto_promote=yes")
    assert code == 1 and "auto_promote='yes': not a bool" in err


def test_auto_promote_changes_only_the_canary_groups_update_strategy(double, capsys):
    assert publish(capsys, "--version", "v1")[0] == 0
    stored = client(double).job.get_job("serving")
    # The job-level update block lives in each group (api/tasks.go); Nomad keeps Stagger/MaxParallel at job level.
    assert stored["TaskGroups"][0]["Update"]["Canary"] == 1 and stored["Update"]["Canary"] == 0
    before = len(double.requests)
    code, out, _ = publish(capsys, "--version", "v1", "--var", "auto_promote=true")
    assert code == 0 and actions(out)["serving"] == actions(out)["gateway"] == "changed"
    assert f"0 created, 2 changed, {len(JOB_IDS) - 2} unchanged" in out
    assert '    Edited  TaskGroups[server].Update.AutoPromote: "false" → "true"\n' in out
    assert '    Edited  TaskGroups[gateway].Update.AutoPromote: "false" → "true"\n' in out
    assert len(registrations(double, before)) == 2


def test_the_nomad_token_is_sent_but_never_printed(capsys, monkeypatch):
    token = "f5c0a1c4-token-never-shown-0123456789ab"
    with NomadDouble(acl_token=token) as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        monkeypatch.setenv("NOMAD_TOKEN", token)
        code, out, err = publish(capsys, "--version", "v1", "--only", "make-numbers")
        assert code == 0 and actions(out) == {"make-numbers": "created"}
        monkeypatch.setenv("NOMAD_TOKEN", token[::-1])
        code, out2, err2 = publish(capsys, "--version", "v1", "--only", "make-numbers")
        assert code == 1 and "ACL token not found" in err2
        for text in (out, err, out2, err2):
            assert token not in text and token[::-1] not in text


# -- variables ------------------------------------------------------------------------------------------


def test_each_spec_gets_only_the_variables_it_declares():
    luigid = read_spec(SPECS / "luigid.nomad.hcl")
    step = read_spec(SPECS / "train-lightgbm.nomad.hcl")
    assert {"image", "datacenters", "namespace", "cpu", "memory"} <= set(luigid.variables)
    assert "host_volume" not in step.variables and step.variables["environment"] == "string"
    common = {"image": "caravan:v1", "namespace": "caravan", "environment": "staging", "schedule": "@daily"}
    flags = {"datacenters": "dc1, dc2", "cpu": "250", "host_volume": "luigi"}
    assert variables_for(luigid, common, flags) == {"image": "caravan:v1", "namespace": "caravan",
                                                    "environment": "staging", "datacenters": ["dc1", "dc2"], "cpu": 250,
                                                    "host_volume": "luigi"}
    assert variables_for(step, common, flags) == {"image": "caravan:v1", "namespace": "caravan",
                                                  "environment": "staging", "datacenters": ["dc1", "dc2"], "cpu": 250}


def test_settings_fill_the_common_variables(monkeypatch, tmp_path):
    from caravan import config

    assert image_for("v1") == "caravan:v1"
    cfg = tmp_path / "luigi.cfg"
    cfg.write_text('[publish]\nimage_repository = ghcr.io/acme/caravan\ndatacenters = ["eu-1", "eu-2"]\n'
                   'variables = {"artifact_root": "s3://acme/caravan", "luigi_workers": 8}\n')
    import luigi.configuration

    parser = luigi.configuration.get_config()
    parser.add_config_path(str(cfg))
    try:
        config.reload()
        assert common_variables("v2", "caravan") == {
            "image": "ghcr.io/acme/caravan:v2", "datacenters": ["eu-1", "eu-2"], "namespace": "caravan",
            "artifact_root": "s3://acme/caravan", "luigi_workers": 8, "release": "v2", "environment": "production"}
        monkeypatch.setenv("CARAVAN_IMAGE_REPOSITORY", "registry.local/caravan")
        assert common_variables("v3", None)["image"] == "registry.local/caravan:v3"
    finally:
        parser.remove_section("publish")
        config.reload()
    with pytest.raises(ConfigurationError, match="without a tag"):
        monkeypatch.setenv("CARAVAN_IMAGE_REPOSITORY", "caravan:latest")
        image_for("v1")


@pytest.mark.parametrize(("text", "kind", "value"), [
    ("8", "number", 8), ("0.5", "number", 0.5), ("true", "bool", True), ("a,b", "list(string)", ["a", "b"]),
    ('["a,b", "c"]', "list(string)", ["a,b", "c"]), ("x=y", "string", "x=y"), ('{"k": 1}', "map(number)", {"k": 1}),
])
def test_var_flags_take_the_declared_type(text, kind, value):
    assert coerce("v", text, kind) == value


def _decode(raw: Any) -> Any:
    """python-hcl2 keeps a string's source form: its value is the text unquoted and unescaped."""
    if isinstance(raw, list):
        return [_decode(r) for r in raw]
    if isinstance(raw, str):
        assert raw[0] == raw[-1] == '"', raw
        return process_escape_sequences(raw[1:-1])
    return raw


@given(st.dictionaries(
    st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,20}", fullmatch=True),  # python-hcl2 keeps "__" keys for itself
    st.one_of(st.text(), st.lists(st.text(), max_size=4), st.integers(min_value=-(2**62), max_value=2**62)),
    max_size=5,
))
def test_var_files_round_trip_through_hcl(values):
    rendered = render_var_file(values)
    parsed = {k: v for k, v in hcl2.loads(rendered).items() if not k.startswith("__")}
    assert {k: _decode(v) for k, v in parsed.items()} == values


# -- Nomad's plan: parse form, stored form, diff ----------------------------------------------------------

SMALL = """
variable "image" {
  type    = string
  default = "busybox:1"
}
variable "count" {
  type    = number
  default = 1
}
variable "cpu" {
  type    = number
  default = 100
}
variable "greeting" {
  type    = string
  default = "hello"
}
variable "tags" {
  type    = list(string)
  default = ["a"]
}

job "JOB_ID" {
  type        = "service"
  datacenters = ["dc1"]

  group "web" {
    count = var.count

    network {
      port "http" {
        to = 8080
      }
    }

    service {
      name     = "JOB_ID-web"
      port     = "http"
      provider = "nomad"
      tags     = var.tags

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"
      }
    }

    task "web" {
      driver = "docker"

      config {
        image = var.image
        ports = ["http"]
      }

      env {
        GREETING = var.greeting
      }

      resources {
        cpu    = var.cpu
        memory = 64
      }
    }
  }
}
"""


@pytest.fixture
def nomad_target(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The Nomad the small-spec tests use: a real agent from CARAVAN_TEST_NOMAD_ADDR, else a fresh double."""
    real = os.environ.get("CARAVAN_TEST_NOMAD_ADDR")
    if real:
        monkeypatch.setenv("NOMAD_ADDR", real)
        yield real
        return
    with NomadDouble() as server:
        monkeypatch.setenv("NOMAD_ADDR", server.address)
        yield server.address


@pytest.fixture
def small_job(nomad_target: str) -> Iterator[str]:
    """A fresh job id for the small spec; purged afterwards (a real agent keeps what tests register)."""
    job_id = f"caravan-plan-{uuid.uuid4().hex[:8]}"
    yield job_id
    nomad.Nomad(address=nomad_target, timeout=10).job.deregister_job(job_id, purge=True)


def small_spec(job_id: str, tmp_path: Path) -> Path:
    path = tmp_path / f"{job_id}.nomad.hcl"
    path.write_text(SMALL.replace("JOB_ID", job_id))
    return path


def plan_of(publisher: Publisher, spec: Path, values: dict[str, Any]) -> dict[str, Any]:
    """Nomad's plan for the small spec with ``values`` for its variables (through publish's own calls)."""
    parsed = read_spec(spec)
    variables = render_var_file(values)
    job = publisher.parse(parsed, variables)
    from caravan.publish import Planned

    return publisher.plan_job(Planned(spec=parsed, job=job, variables=variables, namespace=""))


def test_parse_gives_the_api_form_and_a_read_the_stored_form(nomad_target, small_job, tmp_path):
    n = nomad.Nomad(address=nomad_target, timeout=10)
    job = n.jobs.parse(small_spec(small_job, tmp_path).read_text(), canonicalize=True)
    group = job["TaskGroups"][0]
    assert job["NodePool"] == ""
    assert group["Networks"][0]["DynamicPorts"][0]["HostNetwork"] == ""
    assert group["Services"][0]["Checks"][0]["Name"] == ""
    n.jobs.register_job({"Job": job})
    stored = n.job.get_job(small_job)
    group = stored["TaskGroups"][0]
    assert stored["NodePool"] == "default"
    assert group["Networks"][0]["DynamicPorts"][0]["HostNetwork"] == "default"
    assert group["Services"][0]["Checks"][0]["Name"] == f'service: "{small_job}-web" check'


def test_the_plan_sees_no_change_in_the_parse_form_and_exactly_the_edited_fields(nomad_target, small_job, tmp_path):
    spec = small_spec(small_job, tmp_path)
    publisher = Publisher(NomadAPI(nomad_target))
    created = plan_of(publisher, spec, {})
    assert (created["Diff"]["Type"], created["JobModifyIndex"]) == ("Added", 0)
    n = nomad.Nomad(address=nomad_target, timeout=10)
    n.jobs.register_job({"Job": publisher.parse(read_spec(spec), "")})
    stored_index = n.job.get_job(small_job)["JobModifyIndex"]
    same = plan_of(publisher, spec, {})
    assert (same["Diff"]["Type"], same["JobModifyIndex"]) == ("None", stored_index)
    assert plan_changes(same["Diff"]) == []
    edited = plan_of(publisher, spec, {"count": 2, "image": "busybox:2", "greeting": "hi", "tags": ["a", "b"]})
    assert (edited["Diff"]["Type"], edited["JobModifyIndex"]) == ("Edited", stored_index)
    # diff.go's order: a group's fields, its objects, then its tasks (fields, objects); tags are a set.
    assert plan_changes(edited["Diff"]) == [
        Change("Edited", "TaskGroups[web].Count", "1", "2"),
        Change("Added", "TaskGroups[web].Service.Tags", "", "b"),
        Change("Edited", "TaskGroups[web].Tasks[web].Env[GREETING]", "hello", "hi"),
        Change("Edited", "TaskGroups[web].Tasks[web].Config.image", "busybox:1", "busybox:2"),
    ]
    (count,) = [f for f in edited["Diff"]["TaskGroups"][0]["Fields"] if f["Name"] == "Count"]
    assert count["Annotations"] == ["forces create"]  # scheduler/annotate.go annotateCountChange
    (task,) = edited["Diff"]["TaskGroups"][0]["Tasks"]
    assert task["Annotations"] == ["forces create/destroy update"]


BIG = """
job "JOB_ID" {
  type        = "batch"
  datacenters = ["dc1"]

  group "big" {
    task "big" {
      driver = "raw_exec"

      config {
        command = "/bin/true"
      }

      resources {
        cpu    = 100
        memory = 100000000
      }
    }
  }
}
"""


def test_a_job_no_node_can_hold_is_published_with_the_plans_placement_failure(nomad_target, small_job, tmp_path,
                                                                                capsys):
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / f"{small_job}.nomad.hcl").write_text(BIG.replace("JOB_ID", small_job))
    planned = Publisher(NomadAPI(nomad_target)).plan(find_specs(jobs, ()), {}, {})
    (metric,) = planned[0].plan["FailedTGAllocs"].values()
    assert metric["NodesEvaluated"] >= 1
    if not os.environ.get("CARAVAN_TEST_NOMAD_ADDR"):  # a real agent may filter the node first (no raw_exec)
        assert (metric["NodesExhausted"], metric["DimensionExhausted"]) == (1, {"memory": 1})
    code = main(["publish", "--version", "v1", "--jobs-dir", str(jobs)])
    out = capsys.readouterr().out
    assert code == 0 and actions(out) == {small_job: "created"}
    assert "(Nomad's plan cannot place group big now (FailedTGAllocs)" in out


@pytest.fixture(scope="module")
def plan_double() -> Iterator[NomadDouble]:
    with NomadDouble() as server:
        yield server


VALUES = st.fixed_dictionaries({
    "image": st.sampled_from(["busybox:1", "busybox:2", "alpine:3"]),
    "count": st.integers(min_value=1, max_value=4),
    "cpu": st.sampled_from([100, 250, 500]),
    "greeting": st.text(alphabet="abcxyz -", min_size=1, max_size=8),
    "tags": st.lists(st.sampled_from(["a", "b", "c"]), unique=True, max_size=3),
})
BASE = {"image": "busybox:1", "count": 1, "cpu": 100, "greeting": "hello", "tags": ["a"]}
PATHS = {"image": "TaskGroups[web].Tasks[web].Config.image", "count": "TaskGroups[web].Count",
         "cpu": "TaskGroups[web].Tasks[web].Resources.CPU", "greeting": "TaskGroups[web].Tasks[web].Env[GREETING]"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=VALUES)
def test_random_variable_edits_give_exactly_the_edited_fields(plan_double, tmp_path, values):
    spec = small_spec("random-edits", tmp_path)
    publisher = Publisher(NomadAPI(plan_double.address))
    plan_double.load_hcl(spec)  # the defaults, BASE
    plan = plan_of(publisher, spec, values)
    expected = [Change("Edited", PATHS[name], str(BASE[name]), str(values[name]))
                for name in PATHS if values[name] != BASE[name]]
    expected += [Change("Added", "TaskGroups[web].Service.Tags", "", t) for t in set(values["tags"]) - {"a"}]
    expected += [Change("Deleted", "TaskGroups[web].Service.Tags", t, "") for t in {"a"} - set(values["tags"])]
    assert sorted(plan_changes(plan["Diff"]), key=repr) == sorted(expected, key=repr)
    assert plan["Diff"]["Type"] == ("Edited" if expected else "None")


# -- the double's diff against diff.go, by hand ------------------------------------------------------------


@given(st.text(max_size=3), st.text(max_size=3), st.booleans())
def test_field_diff_follows_diff_go(old, new, contextual):
    found = nomad_plan.field_diff(old, new, "F", contextual)
    if old == new:
        assert found == (nomad_plan._field("None", "F", old, new) if contextual else None)
    elif old == "":
        assert (found["Type"], found["Old"], found["New"]) == ("Added", "", new)
    elif new == "":
        assert (found["Type"], found["Old"], found["New"]) == ("Deleted", old, "")
    else:
        assert (found["Type"], found["Old"], found["New"]) == ("Edited", old, new)


@given(st.lists(st.sampled_from(["dc1", "dc2", "dc3", "eu"]), max_size=4),
       st.lists(st.sampled_from(["dc1", "dc2", "dc3", "eu"]), max_size=4))
def test_datacenters_diff_as_a_set(old, new):
    diff = nomad_plan.job_diff(_job(Datacenters=old), _job(Datacenters=new))
    expected = sorted([Change("Added", "Datacenters", "", d) for d in set(new) - set(old)]
                      + [Change("Deleted", "Datacenters", d, "") for d in set(old) - set(new)],
                      key=lambda c: (c.old, c.new))  # diff.go sorts a set's fields by name, old, new
    assert plan_changes(diff) == expected
    assert diff["Type"] == ("Edited" if set(old) != set(new) else "None")  # order and repeats are no change


def _job(**changes: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "ID": "j", "Name": "j", "Type": "batch", "Priority": 50, "Datacenters": ["dc1"], "Meta": {"team": "ml"},
        "Version": 3, "JobModifyIndex": 40, "SubmitTime": 1, "Status": "running",
        "Periodic": {"Enabled": True, "Spec": "", "Specs": ["0 * * * *"], "SpecType": "cron",
                     "ProhibitOverlap": True, "TimeZone": "UTC"},
        "TaskGroups": [{"Name": "g", "Count": 1, "Networks": [
            {"Mode": "", "DynamicPorts": [{"Label": "http", "Value": 0, "To": 80, "HostNetwork": "default"}]}],
            "Tasks": [{"Name": "t", "Driver": "docker", "KillTimeout": 5, "Config": {"image": "a:1", "args": ["x"]},
                       "Templates": [{"DestPath": "local/a", "EmbeddedTmpl": "1"},
                                     {"DestPath": "local/b", "EmbeddedTmpl": "2"}]}]}],
    }
    for key, value in changes.items():
        job[key] = value
    return job


def _f(kind: str, name: str, old: str = "", new: str = "") -> dict[str, Any]:
    return {"Type": kind, "Name": name, "Old": old, "New": new, "Annotations": None}


def test_the_double_diffs_a_job_as_diff_go_does():
    old = _job()
    new = _job(Priority=70, Meta={"team": "ml", "owner": "me"}, Datacenters=["dc1", "dc2"], Version=9,
               Status="pending",
               Periodic={**old["Periodic"], "Specs": ["*/5 * * * *"]})
    new["TaskGroups"] = [{**old["TaskGroups"][0], "Networks": [
        {"Mode": "", "DynamicPorts": [{"Label": "http", "Value": 0, "To": 8080, "HostNetwork": "default"}]}],
        "Tasks": [{**old["TaskGroups"][0]["Tasks"][0], "KillTimeout": 9,
                   "Templates": [{"DestPath": "local/b", "EmbeddedTmpl": "2"},
                                 {"DestPath": "local/a", "EmbeddedTmpl": "one"}]}]}]
    diff = nomad_plan.job_diff(old, new)
    # Server-managed fields (Version, Status...) are filtered; Meta is a map, flattened as Meta[key].
    assert diff["Type"] == "Edited" and diff["ID"] == "j"
    assert diff["Fields"] == [_f("Added", "Meta[owner]", new="me"), _f("Edited", "Priority", "50", "70")]
    datacenters, periodic = diff["Objects"]
    assert datacenters == {"Type": "Added", "Name": "Datacenters", "Objects": None,
                           "Fields": [_f("Added", "Datacenters", new="dc2"), _f("None", "Datacenters", "dc1", "dc1")]}
    # Periodic changed only in its Specs set: Edited, with its unchanged fields for context.
    assert periodic["Type"] == "Edited" and {f["Type"] for f in periodic["Fields"]} == {"None"}
    assert periodic["Objects"] == [{"Type": "Edited", "Name": "Specs", "Objects": None, "Fields": [
        _f("Added", "Specs", new="*/5 * * * *"), _f("Deleted", "Specs", old="0 * * * *")]}]
    (group,) = diff["TaskGroups"]
    assert (group["Type"], group["Fields"]) == ("Edited", None)
    # Networks are keyed by content: a changed port is a deleted network and an added one, never Edited.
    assert [(o["Name"], o["Type"]) for o in group["Objects"]] == [("Network", "Added"), ("Network", "Deleted")]
    (added_port,) = group["Objects"][0]["Objects"]
    assert added_port["Name"] == "Dynamic Port" and _f("Added", "To", new="8080") in added_port["Fields"]
    (task,) = group["Tasks"]
    # Templates match by DestPath whatever their order: only local/a changed.
    assert task["Fields"] == [_f("Edited", "KillTimeout", "5", "9")]
    (template,) = task["Objects"]
    assert template["Name"] == "Template" and _f("Edited", "EmbeddedTmpl", "1", "one") in template["Fields"]
    assert _f("None", "DestPath", "local/a", "local/a") in template["Fields"]
    assert plan_changes(diff) == [
        Change("Added", "Meta[owner]", "", "me"), Change("Edited", "Priority", "50", "70"),
        Change("Added", "Datacenters", "", "dc2"),
        Change("Added", "Periodic.Specs", "", "*/5 * * * *"), Change("Deleted", "Periodic.Specs", "0 * * * *", ""),
        Change("Added", "TaskGroups[g].Network.Dynamic Port.HostNetwork", "", "default"),
        Change("Added", "TaskGroups[g].Network.Dynamic Port.Label", "", "http"),
        Change("Added", "TaskGroups[g].Network.Dynamic Port.To", "", "8080"),
        Change("Deleted", "TaskGroups[g].Network.Dynamic Port.HostNetwork", "default", ""),
        Change("Deleted", "TaskGroups[g].Network.Dynamic Port.Label", "http", ""),
        Change("Deleted", "TaskGroups[g].Network.Dynamic Port.To", "80", ""),
        Change("Edited", "TaskGroups[g].Tasks[t].KillTimeout", "5", "9"),
        Change("Edited", "TaskGroups[g].Tasks[t].Template.EmbeddedTmpl", "1", "one"),
    ]
    # KillTimeout alone is an in-place update (annotate.go), a template change is destructive.
    nomad_plan.annotate(diff, nomad_plan.desired_updates(old, new, diff))
    assert task["Annotations"] == ["forces create/destroy update"]
    assert group["Updates"] == {"create/destroy update": 1}


def test_a_new_job_is_added_whole_and_an_identical_one_is_none():
    job = _job()
    added = nomad_plan.job_diff(None, job)
    assert added["Type"] == "Added" and plan_changes(added) == []
    assert {f["Type"] for f in added["Fields"]} == {"Added"}
    assert [(g["Name"], g["Type"]) for g in added["TaskGroups"]] == [("g", "Added")]
    assert [(t["Name"], t["Type"]) for t in added["TaskGroups"][0]["Tasks"]] == [("t", "Added")]
    same = nomad_plan.job_diff(job, {**job, "Version": 4, "JobModifyIndex": 99, "SubmitTime": 2})
    assert same == {"Type": "None", "ID": "j", "Fields": None, "Objects": None, "TaskGroups": [
        {"Type": "None", "Name": "g", "Fields": None, "Objects": None, "Updates": None,
         "Tasks": [{"Type": "None", "Name": "t", "Fields": None, "Objects": None, "Annotations": None}]}]}
    reply = nomad_plan.plan_reply(job, job, with_diff=True)
    assert (reply["JobModifyIndex"], reply["Index"], reply["FailedTGAllocs"], reply["Warnings"]) == (40, 40, None, "")
    assert reply["Annotations"]["DesiredTGUpdates"]["g"]["Ignore"] == 1
    assert reply["Diff"]["TaskGroups"][0]["Updates"] == {"ignore": 1}


def test_go_values_are_printed_as_go_prints_them():
    assert [nomad_plan.go_value(v) for v in (True, 8080, 8080.0, 0.5, 1e21, "x")] == \
        ["true", "8080", "8080", "0.5", "1e+21", "x"]
    assert nomad_plan.flatten_all({"args": ["a", 1], "labels": {"k": "v"}, "none": None}) == \
        {"args[0]": "a", "args[1]": "1", "labels[k]": "v", "none": "nil"}


# -- trigger retrain ------------------------------------------------------------------------------------


def trigger(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["trigger", "retrain", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_trigger_retrain_force_launches_the_periodic_job_and_prints_the_child(double, capsys):
    publish(capsys, "--version", "v1")
    double.inject("retrain-ranker", "fail")  # the child must not run a whole pipeline here
    before = len(double.requests)
    code, out, err = trigger(capsys)
    assert code == 0, err
    child = out.strip()
    assert re.fullmatch(r"retrain-ranker/periodic-\d+", child)
    assert ("POST", "/v1/job/retrain-ranker/periodic/force") in [(m, urlsplit(r).path)
                                                               for m, r in double.requests[before:]]
    assert client(double).job.get_job(child)["ParentID"] == "retrain-ranker"
    assert f"retrains on {last_complete_day()}" in err
    # Yesterday's date is what the periodic run does anyway: the same force launch.
    double.inject("retrain-ranker", "fail")
    code, out, _ = trigger(capsys, "--date", last_complete_day().isoformat())
    assert code == 0 and re.fullmatch(r"retrain-ranker/periodic-\d+", out.strip()) and out.strip() != child


def test_trigger_retrain_reads_through_a_leader_election_and_launches_once(double, capsys):
    publish(capsys, "--version", "v1")
    double.inject("retrain-ranker", "fail")
    before = double.stats["no_leader_answers"]
    double.leader_loss(1.0)
    code, out, err = trigger(capsys)
    assert code == 0, err
    assert double.stats["no_leader_answers"] > before
    forced = [raw for method, raw in double.requests if urlsplit(raw).path.endswith("/periodic/force")]
    assert len(forced) == 1  # sent once, after the reads got through
    assert client(double).job.get_job(out.strip())["ParentID"] == "retrain-ranker"


def test_trigger_retrain_for_another_day_dispatches_the_backfill(double, capsys):
    publish(capsys, "--version", "v1")
    double.inject("retrain-ranker-backfill", "fail")
    day = last_complete_day() - dt.timedelta(days=3)
    code, out, err = trigger(capsys, "--date", day.isoformat())
    assert code == 0, err
    assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", out.strip())
    assert double.dispatch_requests[-1]["job_id"] == "retrain-ranker-backfill"
    assert double.dispatch_requests[-1]["body"]["Meta"] == {"date": day.isoformat()}


def test_trigger_retrain_with_the_schedule_disabled_dispatches_the_backfill_for_yesterday(double, capsys):
    # Nomad refuses to force a disabled periodic job (the double does too); the backfill is the same run.
    publish(capsys, "--version", "v1", "--var", "schedule_enabled=false")
    assert client(double).job.get_job("retrain-ranker")["Periodic"]["Enabled"] is False
    double.inject("retrain-ranker-backfill", "fail")
    before = len(double.requests)
    code, out, err = trigger(capsys)
    assert code == 0, err
    assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", out.strip())
    assert double.dispatch_requests[-1]["body"]["Meta"] == {"date": last_complete_day().isoformat()}
    assert not [r for _, r in double.requests[before:] if urlsplit(r).path.endswith("/periodic/force")]
    assert "schedule disabled" in err and f"date={last_complete_day()}" in err


def test_trigger_retrain_errors_are_clear(double, capsys, tmp_path):
    code, _, err = trigger(capsys)
    assert code == 1 and "job 'retrain-ranker' not found" in err and "caravan publish" in err
    publish(capsys, "--version", "v1", "--var", "schedule_enabled=false")
    code, _, err = trigger(capsys, "--job", "make-numbers")
    assert code == 1 and "'make-numbers' is not periodic" in err
    code, _, err = trigger(capsys, "--date", "2026-13-01")
    assert code == 1 and "not a date" in err
    today = dt.datetime.now(dt.timezone.utc).date()
    before = len(double.requests)
    code, _, err = trigger(capsys, "--date", today.isoformat())
    assert code == 1 and "not a complete day yet" in err
    assert double.requests[before:] == []
    code, _, err = trigger(capsys, "--date", "2020-01-01", "--backfill-job", "retrain-ranker")
    assert code == 1 and "not a parameterized job" in err
    assert [d for d in double.dispatch_requests if d["job_id"].startswith("retrain")] == []


def test_last_complete_day_is_yesterday_in_utc():
    late = dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))  # 04:30 UTC on 2 March
    assert last_complete_day(late) == dt.date(2026, 3, 1)


def test_the_monitor_job_is_published_periodic_every_15_minutes_without_overlap(double, capsys):
    # Issue 13: nomad/monitor-ranker.nomad.hcl is published with the rest, its schedule as the spec says.
    code, out, _ = publish(capsys, "--version", "v1", "--only", "monitor-ranker")
    assert code == 0 and actions(out) == {"monitor-ranker": "created"}, out
    job = client(double).job.get_job("monitor-ranker")
    assert job["Type"] == "batch" and job["ParameterizedJob"] is None
    assert job["Periodic"]["Specs"] == ["*/15 * * * *"] and job["Periodic"]["ProhibitOverlap"] is True
    (task,) = [t for g in job["TaskGroups"] for t in g["Tasks"]]
    assert task["Config"]["args"][:2] == ["monitor", "ranker"] and task["Config"]["image"] == "caravan:v1"
