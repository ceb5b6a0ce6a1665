"""Shared fixtures: real servers for the session, a clean artifact root for every test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# A developer's own cluster settings must never leak into the tests (python-nomad, py-consul
# and hvac all read these); the tests point each client at the server they started.
for _name in list(os.environ):
    if _name.startswith(("NOMAD_", "CONSUL_", "VAULT_", "BAO_", "CARAVAN_", "AWS_")) or _name == "HADOOP_USER_NAME":
        del os.environ[_name]

from caravan import config  # noqa: E402
from caravan.artifacts import completion_index  # noqa: E402
from caravan.storage import clear_store_cache  # noqa: E402

from .servers import moto_s3  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = ["local", "s3", "hdfs"]


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
    for reset in (clear_store_cache, completion_index.forget, config.reload):
        reset()
    yield
    for reset in (clear_store_cache, completion_index.forget, config.reload):
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
    return root


@pytest.fixture
def local_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An empty local artifact root, made the configured root."""
    root = str(tmp_path / "artifacts")
    monkeypatch.setenv("CARAVAN_ARTIFACT_ROOT", root)
    return root
