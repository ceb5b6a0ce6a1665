"""Start and stop the real servers the tests use (moto's S3 server, luigid, OpenBao)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import requests


def succeeded(result: Any) -> bool:
    """Whether a ``luigi.build(..., detailed_summary=True)`` run did everything it was asked.

    Plain ``luigi.build()`` returns True when scheduling worked, even if tasks failed.
    """
    import luigi.execution_summary

    return bool(result.status in (luigi.execution_summary.LuigiStatusCode.SUCCESS,
                                  luigi.execution_summary.LuigiStatusCode.SUCCESS_WITH_RETRY))


def build(tasks: Any, scheduler_url: str | None = None, workers: int = 2) -> bool:
    """Run ``tasks`` with luigi (its local scheduler, or the central one at ``scheduler_url``); did all succeed?"""
    import luigi

    where: dict[str, Any] = {"local_scheduler": True}
    if scheduler_url is not None:
        url = urlparse(scheduler_url)
        where = {"scheduler_host": url.hostname, "scheduler_port": url.port}
    return succeeded(luigi.build(list(tasks), workers=workers, log_level="WARNING", detailed_summary=True, **where))


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def poll_until(condition: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> float:
    """Call ``condition()`` until it is true; the seconds that took. Fails naming ``what`` after ``timeout_s``.

    Tests wait with this instead of sleeping a guessed time: it returns as soon as the thing happened
    and the deadline can be generous without slowing a passing run.
    """
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:g} s")
        time.sleep(interval_s)
    return time.monotonic() - start


def wait_for_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    """Poll ``url`` until it answers; fail with the server's output if it exits or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = log.read_text(errors="replace")
            raise RuntimeError(f"server for {url} exited with {proc.returncode}:\n{out[-3000:]}")
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"server for {url} did not answer within {timeout_s} s")


@contextlib.contextmanager
def process(args: list[str], url: str, *, env: dict[str, str] | None = None,
            cwd: Path | None = None, timeout_s: float = 30.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process for the duration of the block.

    Its output goes to a file, not a pipe: a chatty server blocks once a pipe nobody reads is full.
    """
    log_fd, log_name = tempfile.mkstemp(prefix="caravan-server-", suffix=".log")
    proc = subprocess.Popen(args, stdout=log_fd, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, cwd=cwd)
    os.close(log_fd)
    try:
        wait_for_http(url, proc, Path(log_name), timeout_s)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.unlink(log_name)


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """moto's standalone S3 server on a loopback port; yields its endpoint URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with process([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], f"{url}/moto-api/"):
        yield url


@contextlib.contextmanager
def luigid(workdir: Path) -> Iterator[str]:
    """The real luigi central scheduler on a loopback port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    luigid_bin = Path(sys.executable).parent / "luigid"
    args = [str(luigid_bin), "--address", "127.0.0.1", "--port", str(port),
            "--state-path", str(workdir / "luigi-state.pickle"), "--logdir", str(workdir)]
    with process(args, f"{url}/api/task_list", cwd=workdir):
        yield url


@contextlib.contextmanager
def openbao(root_token: str) -> Iterator[str]:
    """A real OpenBao dev server (in memory, unsealed, KV v2 at ``secret/``); yields its address.

    ``-dev-no-store-token`` and a throwaway HOME: the dev server must not leave a root token in
    ``~/.vault-token``, where hvac would pick it up for every later client.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bao = Path(sys.executable).parent / "bao"
    with tempfile.TemporaryDirectory(prefix="caravan-bao-") as home:
        args = [str(bao), "server", "-dev", "-dev-no-store-token", f"-dev-root-token-id={root_token}",
                f"-dev-listen-address=127.0.0.1:{port}"]
        with process(args, f"{url}/v1/sys/health", env={"HOME": home}) as proc:
            yield url
        if (Path(home) / ".vault-token").exists():
            raise AssertionError(f"the OpenBao dev server (pid {proc.pid}) left a token file behind")
