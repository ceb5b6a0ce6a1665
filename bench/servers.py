"""Servers the serving benches start: a free port, a process that answers HTTP for the length of a block, the
Consul double in its own process, and small LightGBM model artifacts (good, or damaged so that loading aborts).

Benches do not import test modules; the Consul double is test code, so it runs as a child process.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import ROOT

ROW = {"price": 12.5, "position": 3, "popular": True}
FEATURES = [{"name": "price", "type": "double"}, {"name": "position", "type": "int32"},
            {"name": "popular", "type": "bool"}]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def process(args: list[str], url: str, *, env: dict[str, str] | None = None,
            timeout_s: float = 60.0) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server process until the block ends; wait until ``url`` answers. Its output goes to a file (a
    pipe nobody reads would block it) and is shown if it exits early."""
    import requests

    log_fd, log_name = tempfile.mkstemp(prefix="caravan-bench-", suffix=".log")
    proc = subprocess.Popen(args, stdout=log_fd, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                            cwd=ROOT)
    os.close(log_fd)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{args[:4]} exited with {proc.returncode}:\n"
                                 f"{Path(log_name).read_text(errors='replace')[-3000:]}")
            try:
                requests.get(url, timeout=1)
                break
            except requests.RequestException:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} did not answer within {timeout_s:g} s") from None
                time.sleep(0.05)
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
def consul_double() -> Iterator[str]:
    """The Consul KV double (tests/doubles/consul.py) in its own process; yields its address.

    Its own process, so the bench's load threads do not hold up its answers; it stops when its stdin closes.
    """
    code = ("import sys\nfrom tests.doubles.consul import ConsulDouble\n"
            "double = ConsulDouble(lock_delay_s=0)\nprint(double.start(), flush=True)\nsys.stdin.read()\n"
            "double.stop()\n")
    double = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, cwd=ROOT)
    try:
        assert double.stdout is not None
        address = double.stdout.readline().strip()
        if not address.startswith("http://127.0.0.1:"):
            raise SystemExit(f"the Consul double did not start (it said {address!r})")
        yield address
    finally:
        if double.stdin is not None:
            double.stdin.close()
        try:
            double.wait(timeout=10)
        except subprocess.TimeoutExpired:
            double.kill()
            double.wait()


def model_text(seed: int) -> str:
    """A small real LightGBM model over :data:`FEATURES`, as ``model.txt`` text."""
    import lightgbm as lgb
    import numpy as np

    rng = np.random.default_rng(seed)
    x = np.column_stack([rng.uniform(1, 50, 2000), rng.integers(1, 20, 2000), rng.integers(0, 2, 2000)])
    y = (x[:, 0] / 50 + (x[:, 2] * 0.3) + rng.normal(0, 0.3, 2000) > 0.8).astype(float)
    booster = lgb.train({"objective": "binary", "verbosity": -1, "num_threads": 1, "seed": seed},
                        lgb.Dataset(x, y, feature_name=[f["name"] for f in FEATURES]),
                        num_boost_round=5 + seed % 10)
    return str(booster.model_to_string())


def crashing(text: str) -> str:
    """The model with its first tree's left_child out of range: LightGBM's parser aborts the process
    (``terminate called``, SIGABRT). tests/badmodels.py has more such variants."""
    damaged = re.sub(r"left_child=-?\d+", "left_child=99999", text, count=1)
    if damaged == text:
        raise ValueError("the model has no tree to damage")
    return damaged


def publish(root: str, seed: int, *, crash: bool = False, **params: str) -> Any:
    """A model artifact (``features.json``, ``sample.json``, ``model.txt``) under ``root``."""
    from caravan import Address, Artifact, open_store

    text = model_text(seed)
    artifact = Artifact(open_store(root), Address("BenchModel", {"seed": str(seed), "crash": str(crash), **params}))
    with artifact.writer() as writer:
        writer.write_text("model.txt", crashing(text) if crash else text)
        writer.write_json("features.json", {"label": "y", "features": FEATURES})
        writer.write_json("sample.json", [{**ROW, "price": 1.0 + i, "position": i} for i in range(16)])
    return artifact
