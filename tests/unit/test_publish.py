"""`caravan publish` and `caravan trigger retrain`, driven in-process against the Nomad double through python-nomad."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hcl2
import pytest
from hcl2.utils import process_escape_sequences
from hypothesis import given
from hypothesis import strategies as st

import nomad
from caravan import ConfigurationError
from caravan.cli import main
from caravan.publish import (
    Publisher,
    PublishError,
    coerce,
    common_variables,
    diff_jobs,
    find_specs,
    image_for,
    read_spec,
    render_var_file,
    variables_for,
)
from caravan.trigger import last_complete_day

from ..doubles.nomad import NomadDouble

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
        job_write = path.startswith("/v1/job/") and not path.endswith(("/dispatch", "/periodic/force"))
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
    assert "13 created, 0 changed, 0 unchanged" in out
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
    before = len(double.requests)
    code, out, _ = publish(capsys, "--version", "v1")
    assert code == 0
    assert actions(out) == dict.fromkeys(JOB_IDS, "unchanged")
    assert registrations(double, before) == []
    assert all(client(double).job.get_job(j)["Version"] == 0 for j in JOB_IDS)


def test_a_new_tag_changes_every_job_by_one_version_with_a_diff_naming_the_image(double, capsys):
    publish(capsys, "--version", "v1")
    code, out, _ = publish(capsys, "--version", "v2")
    assert code == 0
    assert actions(out) == dict.fromkeys(JOB_IDS, "changed")
    assert re.search(r"^changed +make-numbers +v0 → v1 ", out, re.M)
    assert 'TaskGroups[step].Tasks[step].Config.image: "caravan:v1" → "caravan:v2"' in out
    assert all(client(double).job.get_job(j)["Version"] == 1 for j in JOB_IDS)


def test_diff_prints_every_change_in_full(double, capsys):
    publish(capsys, "--version", "v1")
    long_root = "s3://bucket/" + "x" * 200
    code, out, _ = publish(capsys, "--version", "v1", "--var", f"artifact_root={long_root}", "--diff", "--dry-run")
    assert code == 0
    assert f'Env.CARAVAN_ARTIFACT_ROOT: "" → "{long_root}"' in out
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
    assert 'Periodic.Specs[0]: "0 */3 * * *" → "*/30 * * * *"' in out
    job = client(double).job.get_job("retrain-ranker")
    assert job["Periodic"]["Specs"] == ["*/30 * * * *"]
    assert job["TaskGroups"][0]["Tasks"][0]["Env"]["CARAVAN_ARTIFACT_ROOT"] == "s3://models/caravan"
    # Only the specs that declare a variable get it.
    assert actions(out)["make-numbers"] == "unchanged"


def test_a_concurrent_change_makes_the_registration_fail_loudly(double, capsys):
    publish(capsys, "--version", "v1")
    publisher = Publisher()
    specs = find_specs(SPECS, ())
    planned = publisher.plan(specs, common_variables("v2", None), {})
    # Someone else registers make-numbers between our read and our write.
    n = client(double)
    job = n.job.get_job("make-numbers")
    job["TaskGroups"][0]["Tasks"][0]["Env"]["SOMEONE"] = "else"
    n.jobs.register_job({"Job": job})
    with pytest.raises(PublishError, match=r"registering 'make-numbers' .*make-numbers.nomad.hcl.* changed in Nomad "
                                           r"after it was read") as info:
        publisher.apply(planned)
    assert "registered before it: evaluate, gate-model" in str(info.value)
    assert n.job.get_job("make-numbers")["TaskGroups"][0]["Tasks"][0]["Env"]["SOMEONE"] == "else"
    assert n.job.get_job("serving")["Version"] == 0  # nothing after the refusal


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


def test_auto_promote_reaches_only_the_serving_spec_as_a_bool(double, capsys):
    specs = {spec.path.name: spec for spec in find_specs(SPECS, ())}
    assert variables_for(specs["serving.nomad.hcl"], {}, {"auto_promote": "true"}) == {"auto_promote": True}
    assert "auto_promote = true" in render_var_file({"auto_promote": True})
    assert [name for name, spec in specs.items() if "auto_promote" in spec.variables] == ["serving.nomad.hcl"]
    code, out, _ = publish(capsys, "--version", "v1", "--var", "auto_promote=true", "--dry-run")
    assert code == 0 and actions(out)["serving"] == "created"
    code, _, err = publish(capsys, "--version", "v1", "--var", "auto_promote=yes")
    assert code == 1 and "auto_promote='yes': not a bool" in err


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
    assert "vault_role" not in luigid.variables and step.variables["vault_role"] == "string"
    common = {"image": "caravan:v1", "namespace": "caravan", "vault_role": "other", "schedule": "@daily"}
    flags = {"datacenters": "dc1, dc2", "cpu": "250", "host_volume": "luigi"}
    assert variables_for(luigid, common, flags) == {"image": "caravan:v1", "namespace": "caravan",
                                                    "datacenters": ["dc1", "dc2"], "cpu": 250,
                                                    "host_volume": "luigi"}
    assert variables_for(step, common, flags) == {"image": "caravan:v1", "namespace": "caravan",
                                                  "vault_role": "other", "datacenters": ["dc1", "dc2"], "cpu": 250}


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
            "artifact_root": "s3://acme/caravan", "luigi_workers": 8, "release": "v2"}
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


# -- comparing ------------------------------------------------------------------------------------------


def test_the_diff_ignores_what_the_server_manages_and_fills_in():
    parsed = {"ID": "j", "Type": "batch", "Meta": None, "Stop": False, "Update": {"MaxParallel": 1, "Canary": 2},
              "TaskGroups": [{"Name": "g", "Constraints": None, "Tasks": [{"Name": "t", "Config": {"image": "a:1"},
                                                                             "Env": {}}]}]}
    registered = {**parsed, "Status": "running", "Version": 4, "JobModifyIndex": 99, "SubmitTime": 1,
                  "Update": {"MaxParallel": 1, "Canary": 0}, "Meta": {"added": "by server"},
                  "TaskGroups": [{"Name": "g", "Constraints": [{"LTarget": "${attr.vault.version}"}],
                                  "Tasks": [{"Name": "t", "Config": {"image": "a:1"}, "Env": None,
                                             "Identities": [{"Name": "vault_default"}]}]}]}
    assert diff_jobs(registered, parsed) == []
    changed = {**parsed, "Stop": False, "TaskGroups": [{"Name": "g", "Tasks": [
        {"Name": "t", "Config": {"image": "a:2"}}, {"Name": "sidecar", "Config": {}}]}]}
    registered["Stop"] = True
    paths = {c.path: (c.old, c.new) for c in diff_jobs(registered, changed)}
    assert paths == {"Stop": (True, False), "TaskGroups[g].Tasks[t].Config.image": ("a:1", "a:2"),
                     "TaskGroups[g].Tasks[sidecar]": (None, {"Name": "sidecar", "Config": {}})}


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


def test_trigger_retrain_for_another_day_dispatches_the_backfill(double, capsys):
    publish(capsys, "--version", "v1")
    double.inject("retrain-ranker-backfill", "fail")
    day = last_complete_day() - dt.timedelta(days=3)
    code, out, err = trigger(capsys, "--date", day.isoformat())
    assert code == 0, err
    assert re.fullmatch(r"retrain-ranker-backfill/dispatch-\d+-[0-9a-f]{8}", out.strip())
    assert double.dispatch_requests[-1]["job_id"] == "retrain-ranker-backfill"
    assert double.dispatch_requests[-1]["body"]["Meta"] == {"date": day.isoformat()}


def test_trigger_retrain_errors_are_clear(double, capsys, tmp_path):
    code, _, err = trigger(capsys)
    assert code == 1 and "job 'retrain-ranker' not found" in err and "caravan publish" in err
    publish(capsys, "--version", "v1", "--var", "schedule_enabled=false")
    code, _, err = trigger(capsys, "--job", "make-numbers")
    assert code == 1 and "'make-numbers' is not periodic" in err
    code, _, err = trigger(capsys)
    assert code == 1 and "periodic launches disabled" in err
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
