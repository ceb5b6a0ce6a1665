"""The Nomad double for the Nomad benches, in its own process, and the bench's own sleep task.

Benches do not import test modules: the double (``tests/doubles/nomad``) is test code, so it runs as a child
process and is driven over its stdin/stdout, one JSON object per line (load specs, open a leader-loss window,
collect garbage, read its counters). Its own process also keeps the bench's worker threads from holding up
its answers. It stops when the block ends, however it ends.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import luigi
from common import ROOT

from caravan.tasks import NomadJobTask

_SERVE = r"""
import json, sys
from tests.doubles.nomad import NomadDouble

double = NomadDouble(**json.loads(sys.argv[1]))
print(json.dumps({"address": double.start()}), flush=True)
try:
    for line in sys.stdin:
        command = json.loads(line)
        op = command.pop("op")
        try:
            result = None
            if op == "load_specs":
                double.load_specs(command["path"])
            elif op == "leader_loss":
                double.leader_loss(command["seconds"], drop_connections=command["drop"])
            elif op == "gc":
                result = double.gc(threshold_s=command["threshold_s"])
            elif op == "counters":
                result = {"stats": double.stats, "requests": double.requests}
            else:
                raise ValueError(f"unknown command {op!r}")
            print(json.dumps({"ok": True, "result": result}), flush=True)
        except Exception as exc:
            print(json.dumps({"ok": False, "error": repr(exc)}), flush=True)
finally:
    double.stop()
"""


class NomadDoubleProcess:
    """A running Nomad double in a child process (use :func:`nomad_double`)."""

    def __init__(self, proc: subprocess.Popen[str], address: str) -> None:
        self.proc = proc
        self.address = address
        self._lock = threading.Lock()

    def _ask(self, op: str, **fields: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            self.proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
            self.proc.stdin.flush()
            answer = json.loads(self.proc.stdout.readline() or '{"ok": false, "error": "the double exited"}')
        if not answer["ok"]:
            raise RuntimeError(f"Nomad double: {op}: {answer['error']}")
        return answer["result"]

    def load_specs(self, folder: Path) -> None:
        """Register every ``*.nomad.hcl`` of ``folder``."""
        self._ask("load_specs", path=str(folder))

    def leader_loss(self, seconds: float, drop_connections: bool = False) -> None:
        """Answer 500 ``No cluster leader`` (or drop every other connection) for ``seconds`` from now."""
        self._ask("leader_loss", seconds=seconds, drop=drop_connections)

    def gc(self, threshold_s: float | None = None) -> None:
        """Purge dead children older than ``threshold_s`` (default: the double's ``gc_threshold_s``)."""
        self._ask("gc", threshold_s=threshold_s)

    def counters(self) -> tuple[dict[str, int], list[tuple[str, str]]]:
        """The double's ``stats`` and the (method, path) of every request it received."""
        found = self._ask("counters")
        return dict(found["stats"]), [(method, path) for method, path in found["requests"]]


@contextlib.contextmanager
def nomad_double(**kwargs: Any) -> Iterator[NomadDoubleProcess]:
    """The Nomad double (constructor keywords as JSON) in its own process, for the length of the block."""
    kwargs.setdefault("env", {"PYTHONPATH": str(ROOT)})
    proc = subprocess.Popen([sys.executable, "-c", _SERVE, json.dumps(kwargs)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        if not first.startswith('{"address"'):
            raise SystemExit(f"the Nomad double did not start (it said {first!r})")
        yield NomadDoubleProcess(proc, json.loads(first)["address"])
    finally:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class BenchSleep(NomadJobTask):
    """The test-only ``sleep`` step (``tests/steps/nomad/sleep.nomad.hcl``), as a task of the bench's own."""

    job = "sleep"
    date = luigi.DateParameter(description="Any date: part of the artifact address.")
    seconds = luigi.FloatParameter(description="How long the step sleeps.")
