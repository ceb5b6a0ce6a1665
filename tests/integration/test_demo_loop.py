"""``python -m pipelines.demo_loop --quick``: the whole loop at the reduced size, as a user runs it. The timeline
holds the loop's key events in order, the figure is written, and no server the demo started outlives it, also
when it is interrupted with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..servers import poll_until

ROOT = Path(__file__).resolve().parent.parent.parent
DEMO = [sys.executable, "-m", "pipelines.demo_loop", "--quick"]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process that is one of the demo's servers (a reused pid is someone else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and any(name in cmdline for name in (b"pipelines.loop_servers", b"caravan.cli"))


def started_pids(root: Path) -> list[int]:
    record = root / "servers.json"
    return list(json.loads(record.read_text())["pids"]) if record.exists() else []


def first(entries: list[dict[str, Any]], after: int, what: str, test: Any) -> int:
    """Index of the first entry after ``after`` that passes ``test``; fails naming ``what`` and the kinds seen."""
    for i in range(after + 1, len(entries)):
        if test(entries[i]):
            return i
    raise AssertionError(f"no {what} after entry {after}: {[e['kind'] for e in entries]}")


def test_the_loop_runs_end_to_end_at_the_reduced_size(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    started = time.monotonic()
    done = subprocess.run([*DEMO, "--root", str(root)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    entries = json.loads((root / "timeline.json").read_text())
    production = first(entries, -1, "production model", lambda e: e["kind"] == "production")
    new_data = first(entries, production, "new-data trigger",
                     lambda e: e["kind"] == "trigger:new_data" and e["data"]["outcome"] == "dispatched")
    retrain = first(entries, new_data, "retrain", lambda e: e["kind"] == "retrain")
    gate = first(entries, retrain, "gate decision", lambda e: e["kind"] == "gate")
    assert entries[gate]["data"]["decision"] == "promote", entries[gate]  # the logged day's model beats the first
    concluded = first(entries, gate, "experiment concluded", lambda e: e["kind"] == "concluded")
    assert entries[concluded]["data"]["winner"] in ("control", "challenger")
    drift = first(entries, concluded, "the world drifting", lambda e: e["kind"] == "drift")
    # Recorded with the feature named: dispatched, or waiting for a closed day newer than production's data.
    caught = first(entries, drift, "drift detected", lambda e: "drift" in e["kind"].split(":")[-1].split("+")
                   and e["data"]["outcome"] != "failed")
    assert entries[caught]["data"]["features"][0] == "item_price", entries[caught]  # the feature the world shifted

    # The printed timeline: one line per event, the same events, then the figure's path.
    for entry in entries:
        assert entry["event"] in done.stdout
    png = next(line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("figure: "))
    assert Path(png) == root / "loop.png" and Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    pids = started_pids(root)
    assert len(pids) == 4  # caravan serve, two workers, the gateway
    assert [pid for pid in pids if alive(pid)] == []
    print(f"demo loop --quick: {elapsed:.1f} s")


def test_ctrl_c_stops_every_server(tmp_path: Path) -> None:
    root = tmp_path / "loop"
    # Its own process group, as a shell gives a foreground job: Ctrl-C reaches the demo and the steps it runs.
    demo = subprocess.Popen([*DEMO, "--root", str(root)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        poll_until(lambda: any(alive(pid) for pid in started_pids(root)) or demo.poll() is not None, 60,
                   "the demo starts caravan serve")
        pids = started_pids(root)
        os.killpg(demo.pid, signal.SIGINT)
        _, err = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            os.killpg(demo.pid, signal.SIGKILL)
            demo.wait()
    # 130 is the demo's own exit code for an interrupt. Rarely, under load, the interpreter still ends by
    # re-raising SIGINT on itself after main() returned 130 (no traceback, the cleanup below already done;
    # cause not found): a shell reports both the same way, as an interrupted command.
    assert demo.returncode in (130, -signal.SIGINT), err[-2000:]
    assert "interrupted; every server is stopped" in err
    assert pids and [pid for pid in pids if alive(pid)] == []
