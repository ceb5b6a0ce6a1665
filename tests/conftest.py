"""Shared fixtures: real servers for the session, a clean artifact root for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# A developer's own cluster settings must never leak into the tests (python-nomad, py-consul
# and hvac all read these); the tests point each client at the server they started. CARAVAN_TEST_* are
# kept: they are the tests' own settings, naming a real server to test instead of a double (CI sets them).
for _name in list(os.environ):
    if _name.startswith("CARAVAN_TEST_"):
        continue
    if _name.startswith(("NOMAD_", "CONSUL_", "VAULT_", "BAO_", "CARAVAN_", "AWS_")) or _name == "HADOOP_USER_NAME":
        del os.environ[_name]
# Real agents with ACLs on (CI's integration job, .ci/acl_bootstrap.py): every client of the run, caravan's and
# the tests' own, holds the production token caravan holds (python-nomad and py-consul read these variables).
for _test_name, _name in (("CARAVAN_TEST_NOMAD_TOKEN", "NOMAD_TOKEN"),
                          ("CARAVAN_TEST_CONSUL_TOKEN", "CONSUL_HTTP_TOKEN")):
    if os.environ.get(_test_name):
        os.environ[_name] = os.environ[_test_name]

from caravan import config, secrets  # noqa: E402
from caravan.artifacts import completion_index  # noqa: E402
from caravan.executors.base import reset_executors  # noqa: E402
from caravan.storage import clear_store_cache  # noqa: E402

from .servers import luigid, moto_s3, openbao  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["local", "s3", "hdfs"]
# Steps run in child processes (the local executor's, the Nomad double's): they import tests.steps.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server, with the AWS settings a client needs to reach it."""
    import boto3

    with moto_s3() as url:
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL_S3=url)
        boto3.client("s3").create_bucket(Bucket="caravan-test")
        yield url
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3"):
            os.environ.pop(name, None)


@pytest.fixture(scope="session")
def webhdfs_url() -> Iterator[str]:
    """The WebHDFS double (no HDFS installs here), as host:port for hdfs:// roots."""
    from .doubles.webhdfs import WebHDFSDouble

    double = WebHDFSDouble()
    url = double.start()
    os.environ["HADOOP_USER_NAME"] = "caravan"
    yield url
    double.stop()
    os.environ.pop("HADOOP_USER_NAME", None)


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    for reset in (clear_store_cache, completion_index.forget, config.reload, reset_executors, secrets.reset):
        reset()
    yield
    for reset in (clear_store_cache, completion_index.forget, config.reload, reset_executors, secrets.reset):
        reset()


def root_for(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty artifact root URI on ``backend``."""
    unique = uuid.uuid4().hex[:10]
    if backend == "local":
        return str(tmp_path / "artifacts")
    if backend == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://caravan-test/{unique}"
    if backend == "hdfs":
        url = request.getfixturevalue("webhdfs_url")
        return f"hdfs://{url.split('://', 1)[1]}/caravan/{unique}"
    raise ValueError(backend)


@pytest.fixture(params=BACKENDS)
def store_root(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty artifact root on each backend in turn, made the configured root."""
    root = root_for(request.param, request, tmp_path)
    monkeypatch.setenv("CARAVAN_ARTIFACT_ROOT", root)
    monkeypatch.setenv("CARAVAN_POINTER_ROOT", str(tmp_path / "pointers"))
    return root


@pytest.fixture
def local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty local artifact root, made the configured root."""
    root = str(tmp_path / "artifacts")
    monkeypatch.setenv("CARAVAN_ARTIFACT_ROOT", root)
    monkeypatch.setenv("CARAVAN_POINTER_ROOT", str(tmp_path / "pointers"))
    return root


@pytest.fixture(scope="session")
def jobspecs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder with the project's step specs and the test-only ones."""
    folder = tmp_path_factory.mktemp("jobspecs")
    for spec in [*(ROOT / "nomad").glob("*.nomad.hcl"), *(ROOT / "tests" / "steps" / "nomad").glob("*.nomad.hcl")]:
        (folder / spec.name).symlink_to(spec)
    return folder


@pytest.fixture
def test_specs(jobspecs: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make the project's and the test-only step specs the configured ones."""
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(jobspecs))
    return jobspecs


class NomadHandle:
    """The Nomad the tests talk to: the double, or a real agent from CARAVAN_TEST_NOMAD_ADDR."""

    def __init__(self, address: str, double: object | None) -> None:
        self.address = address
        self.double = double

    def client(self, timeout: float = 10):
        import nomad

        return nomad.Nomad(address=self.address, timeout=timeout)


def register_for_real_agent(address: str, folder: Path) -> None:
    """Register the step specs on a real `nomad agent -dev`, run with raw_exec by this interpreter."""
    import sys

    import nomad

    client = nomad.Nomad(address=address, timeout=30)
    for spec in sorted(folder.glob("*.nomad.hcl")):
        text = spec.read_text()
        if "caravan_output" not in text:  # not a step: retrain-ranker(-backfill), serving, luigid
            continue
        text = text.replace('driver = "docker"', 'driver = "raw_exec"')
        text = text.replace('command = "python"', f'command = "{sys.executable}"')
        text = text.replace("image   = var.image", "")
        job = client.jobs.parse(text, canonicalize=True)
        for group in job["TaskGroups"]:
            for task in group["Tasks"]:
                task.setdefault("Env", {})
                task["Env"] = {**(task["Env"] or {}), "PYTHONPATH": str(ROOT)}
                # A dev agent has no Vault (a job with a vault block is refused) and these steps read no secrets.
                task["Vault"] = None
                task["Templates"] = None
        client.jobs.register_job({"Job": job})


@pytest.fixture(scope="session")
def nomad_server(jobspecs: Path) -> Iterator[NomadHandle]:
    """Nomad for the executor contract: a real agent when CARAVAN_TEST_NOMAD_ADDR is set, else the double."""
    real = os.environ.get("CARAVAN_TEST_NOMAD_ADDR")
    if real:
        register_for_real_agent(real, jobspecs)
        yield NomadHandle(real, None)
        return
    from .doubles.nomad import NomadDouble

    double = NomadDouble(env={"PYTHONPATH": os.environ["PYTHONPATH"]})
    address = double.start()
    double.load_specs(jobspecs)
    yield NomadHandle(address, double)
    double.stop()


@pytest.fixture(params=["local", "nomad"])
def executor(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, jobspecs: Path,
             local_root: str) -> str:
    """Each executor in turn, configured through the environment as a user would."""
    monkeypatch.setenv("CARAVAN_JOBSPEC_DIR", str(jobspecs))
    monkeypatch.setenv("CARAVAN_EXECUTOR", request.param)
    if request.param == "nomad":
        monkeypatch.setenv("NOMAD_ADDR", request.getfixturevalue("nomad_server").address)
    return str(request.param)


@pytest.fixture(scope="session")
def scheduler_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real luigi central scheduler."""
    with luigid(tmp_path_factory.mktemp("luigid")) as url:
        yield url


@pytest.fixture(scope="session")
def consul_address() -> Iterator[str]:
    """Consul for the pointer contract: a real agent when CARAVAN_TEST_CONSUL_ADDR is set, else the KV double."""
    real = os.environ.get("CARAVAN_TEST_CONSUL_ADDR")
    if real:
        yield real
        return
    from .doubles.consul import ConsulDouble

    double = ConsulDouble(lock_delay_s=0.0)
    yield double.start()
    double.stop()


@pytest.fixture(scope="session")
def vault_server() -> Iterator[tuple[str, str]]:
    """A real OpenBao dev server: (address, root token). The root token is for test set-up only."""
    root_token = f"root-{uuid.uuid4().hex}"
    with openbao(root_token) as address:
        yield address, root_token


@pytest.fixture(params=["file", "consul"])
def pointer_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Each model pointer backend in turn, configured through the environment; a fresh model name each test."""
    monkeypatch.setenv("CARAVAN_POINTER", request.param)
    monkeypatch.setenv("CARAVAN_POINTER_ROOT", str(tmp_path / "pointers"))
    if request.param == "consul":
        monkeypatch.setenv("CONSUL_HTTP_ADDR", request.getfixturevalue("consul_address"))
    return str(request.param)


@pytest.fixture
def model_name() -> str:
    return f"m-{uuid.uuid4().hex[:8]}"
