"""The server processes of ``python -m pipelines.demo_loop``: started, waited for, and always stopped.

``python -m pipelines.loop_servers serve|gateway --clock FILE ...`` runs ``caravan serve`` or ``caravan gateway``
through their Python entries (:func:`caravan.serving.app.serve`, :func:`caravan.gateway.app.serve`) with one
difference from the CLI: the event log's clock is the demo's simulated clock
(:class:`pipelines.world.SimClock`, passed as ``EventLog(clock=...)``), so predictions and feedback land in the
simulated day's ``date=/hour=`` folders and days close when simulated time passes them. Workers need no clock
(they log nothing) and run as plain ``caravan worker``.

:class:`Servers` starts each process in its own session (a Ctrl-C in the terminal reaches the demo only, which
then stops them in order), waits for its ``/health``, and on exit sends SIGTERM (the event log drains), then
SIGKILL to whatever is still running after ``stop_s``; the servers stopped together are signalled together.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: Event log settings of the demo's servers: small files, flushed often, so a simulated hour ships in a blink.
LOG_OPTIONS: dict[str, Any] = {"flush_rows": 5_000, "flush_s": 0.2, "retry_s": 0.2, "drain_s": 20.0}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerFailed(RuntimeError):
    """A server process exited or never became healthy; the message holds the tail of its log."""


class Servers:
    """Processes started by the demo, stopped (SIGTERM, then SIGKILL) when the context exits, whatever happened."""

    def __init__(self, log_dir: str | os.PathLike[str], stop_s: float = 30.0,
                 record: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.stop_s = stop_s
        self.record = Path(record) if record is not None else None  # JSON of every pid started, kept up to date
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.started: list[int] = []  # every pid ever started, for whoever checks that none is left

    def __enter__(self) -> Servers:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, args: list[str], health_url: str, *, env: dict[str, str] | None = None,
              timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
        """Start ``args`` as server ``name`` (:meth:`launch`) and return once it is healthy (:meth:`wait`)."""
        proc = self.launch(name, args, env=env)
        self.wait(name, health_url, timeout_s)
        return proc

    def launch(self, name: str, args: list[str], *, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``args`` as server ``name``, in its own session, logging to ``<log_dir>/<name>.log``."""
        with open(self.log_dir / f"{name}.log", "ab") as log_file:
            proc = subprocess.Popen(args, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, start_new_session=True)
        self.running[name] = proc
        self.started.append(proc.pid)
        if self.record is not None:
            temp = self.record.with_name(f".{self.record.name}.tmp")
            temp.write_text(json.dumps({"pids": self.started}))
            os.replace(temp, self.record)
        return proc

    def wait(self, name: str, health_url: str, timeout_s: float = 60.0) -> None:
        """Return once ``health_url`` answers 200; ServerFailed (with the log's tail) if server ``name`` exits or
        ``timeout_s`` passes first."""
        proc, log_path = self.running[name], self.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout_s
        while not _healthy(health_url):
            if proc.poll() is not None:
                raise ServerFailed(f"{name} exited with code {proc.returncode}: {_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ServerFailed(f"{name} not healthy at {health_url} after {timeout_s:g} s: {_tail(log_path)}")
            time.sleep(0.1)

    def stop(self, *names: str) -> None:
        """SIGTERM the named servers at once, then wait for each (SIGKILL to its group after ``stop_s``)."""
        stopping = [(name, self.running.pop(name)) for name in names if name in self.running]
        for _, proc in stopping:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_s
        for _, proc in stopping:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # its own session: the group is the server and its children
                proc.wait()

    def stop_all(self) -> None:
        """Stop every running server."""
        self.stop(*self.running)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - our own http://127.0.0.1 URL
            return int(answer.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def health(url: str) -> dict[str, Any]:
    """The JSON of a server's ``/health``."""
    with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our own http://127.0.0.1 URL
        return dict(json.loads(answer.read()))


def _event_log(args: argparse.Namespace) -> dict[str, Any]:
    from .world import SimClock

    return {**LOG_OPTIONS, "root": args.log_root, "spool_dir": args.spool_dir, "clock": SimClock(args.clock)}


def main(argv: list[str] | None = None) -> int:
    """``serve`` or ``gateway`` with the simulated clock (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.loop_servers")
    sub = parser.add_subparsers(dest="what", required=True)
    for name in ("serve", "gateway"):
        one = sub.add_parser(name)
        one.add_argument("--model", required=True)
        one.add_argument("--port", type=int, required=True)
        one.add_argument("--clock", required=True, help="file of the simulated clock (epoch seconds)")
        one.add_argument("--spool-dir", required=True)
        one.add_argument("--log-root", help="store of the event log (default: the artifact root)")
        if name == "gateway":
            one.add_argument("--worker", action="append", default=[], metavar="ARM=HOST:PORT")
            one.add_argument("--update-s", type=float, default=0.3)
    args = parser.parse_args(argv)
    if args.what == "serve":
        from caravan.serving.app import serve

        # The demo's own freshly trained models: loaded in this process (no probe process per reload).
        serve(args.model, host="127.0.0.1", port=args.port, isolate=False, event_log=_event_log(args))
    else:
        from caravan.gateway.app import serve as serve_gateway

        serve_gateway(args.model, host="127.0.0.1", port=args.port, workers=args.worker, update_s=args.update_s,
                      event_log=_event_log(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
