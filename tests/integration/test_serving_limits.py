"""Oversize bodies against a real ``caravan serve``: refused with 413 while they arrive, the server's memory stays
bounded, and ``/health`` keeps answering quickly meanwhile."""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import requests

from ..badmodels import ROW, publish_model
from .test_serving import point, serving_process, wait_for

BIG = 50 * 1024 * 1024
CHUNK = 256 * 1024


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def big_key_chunks(size: int) -> Iterator[bytes]:
    """A 50 MB JSON object with one huge unknown key, sent chunk by chunk (no Content-Length)."""
    yield b'{"'
    sent = 2
    while sent < size:
        yield b"k" * CHUNK
        sent += CHUNK
    yield b'": 1}'


def test_50_mb_bodies_are_refused_with_bounded_memory_and_a_fast_health(model_name, local_root):
    model = publish_model(local_root, 1)
    point(model_name, model)
    with serving_process(model_name, "file") as (url, pid):
        wait_for(url, lambda s: s.get("model") == model.id, "the model never served")
        before = peak_rss_mb(pid)
        outcomes: list[int | str] = []
        done = threading.Event()

        def send_big() -> None:
            with requests.Session() as session:
                for body in (b'{"' + b"k" * BIG + b'": 1}', None, b'{"' + b"k" * BIG + b'": 1}'):
                    try:
                        response = session.post(f"{url}/predict", timeout=60,
                                                data=body if body is not None else big_key_chunks(BIG))
                        outcomes.append(response.status_code)
                        outcomes.append(len(response.content))
                    except Exception as exc:  # recorded, judged below
                        outcomes.append(type(exc).__name__)
            done.set()

        sender = threading.Thread(target=send_big, daemon=True)
        sender.start()
        health_ms: list[float] = []
        prober = requests.Session()  # one keep-alive connection: the time is the server's, not a TCP handshake's
        while not done.is_set():
            started = time.perf_counter()
            answer = prober.get(f"{url}/health", timeout=5)
            health_ms.append((time.perf_counter() - started) * 1000)
            assert answer.status_code == 200
            done.wait(0.02)  # pace the probes: /health is measured, not hammered
        sender.join(timeout=60)
        after = peak_rss_mb(pid)
        still = requests.post(f"{url}/predict", json=ROW, timeout=5)
    assert outcomes[0::2] == [413, 413, 413], outcomes
    assert all(size < 1000 for size in outcomes[1::2]), f"a refusal echoed the body: {outcomes}"
    assert after - before < 100, f"peak RSS went from {before:.0f} MB to {after:.0f} MB"
    assert len(health_ms) >= 3, "the refusals were too quick to measure /health during them"
    assert max(health_ms) < 100, f"/health took {sorted(health_ms)} ms while refusing (median " \
                                 f"{statistics.median(health_ms):.1f} ms)"
    assert still.status_code == 200

