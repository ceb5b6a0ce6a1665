"""The process of a retraining run: luigi, with a stop that stops the steps it started.

``python -m caravan.entrypoint [--deadline 6h] [--grace 25] luigi --module pipelines.ranker RetrainRanker ...``

Nomad stops a task with SIGTERM, then SIGKILL after its ``kill_timeout``. Plain ``luigi`` installs no SIGTERM
handler, so the default action kills the main process at once; luigi's task processes (forked children when
``--workers`` > 1) die with the container, and the step jobs that caravan's Nomad executor dispatched keep
running, orphaned. Here SIGTERM becomes an exception that luigi lets through (a ``KeyboardInterrupt``; luigi's
``TaskProcess.run`` re-raises those instead of recording a failure and carrying on), in every process:

* in a process that is running a step (the main one with one worker, a forked task process otherwise) it
  interrupts caravan's wait, and ``NomadExecutor.run`` stops the step's child job before it re-raises;
* in the main process it leaves luigi's worker, whose ``__exit__`` sends SIGTERM to every running task process
  (which then does the above); this process then waits for them, up to ``--grace`` seconds, before it exits.

A second signal during that clean-up is ignored (tini ``-g``, the process group or our own terminate may
deliver one more): interrupting the stop would orphan the step after all.

``--deadline`` is the run's time limit (what ``timeout`` around luigi would be): when it passes, the run shuts
down the same way and exits with 124, as ``timeout`` does. SIGTERM exits with 143 (128 + 15); otherwise the
exit status is luigi's own (``[retcode]`` in luigi.cfg).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

#: Exit status after SIGTERM (the shell's 128 + signal number) and after the deadline (coreutils timeout's).
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_DEADLINE = 124
#: Default wait for the task processes' clean-up: under Nomad's default max_kill_timeout (30 s) with room to exit.
DEFAULT_GRACE_S = 25.0
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Shutdown(KeyboardInterrupt):
    """The run was told to stop (SIGTERM, or its deadline passed). A KeyboardInterrupt so luigi re-raises it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_DEADLINE if self.signum == signal.SIGALRM else EXIT_TERMINATED


_stopping = False  # per process: a forked task process starts with its parent's value, False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    global _stopping
    if _stopping:
        return  # already stopping: a second signal must not interrupt the clean-up of the first
    _stopping = True
    raise Shutdown(signum)  # no print here: a handler may run in the middle of a write to stderr


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``6h``, ``1d`` as seconds (> 0)."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 15m, 6h or 1d")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m caravan.entrypoint",
        description="Run luigi so that SIGTERM (or --deadline) stops the run and the Nomad step jobs it started.")
    parser.add_argument("--deadline", type=parse_duration, default=None,
                        help="Time limit of the run (90s, 15m, 6h, 1d); then it stops as on SIGTERM and exits 124.")
    parser.add_argument("--grace", type=parse_duration, default=DEFAULT_GRACE_S,
                        help=f"How long to wait for the task processes to stop their steps (default "
                        f"{DEFAULT_GRACE_S:g} s; keep it under the job's kill_timeout).")
    parser.add_argument("luigi", nargs=argparse.REMAINDER, help="luigi and its arguments (the word luigi optional)")
    return parser


def _wait_for_task_processes(grace_s: float) -> None:
    """Wait for luigi's task processes (already sent SIGTERM by luigi's worker) to stop their steps and exit."""
    deadline = time.monotonic() + grace_s
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            print(f"caravan: task process {child.pid} still running after {grace_s:g} s; leaving it",
                  file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run luigi with ``argv`` (after the entrypoint's own options); return the exit status."""
    options = _parser().parse_args(argv)
    luigi_argv = list(options.luigi)
    if luigi_argv[:1] == ["--"]:
        luigi_argv = luigi_argv[1:]
    if luigi_argv[:1] == ["luigi"]:
        luigi_argv = luigi_argv[1:]
    if not luigi_argv:
        _parser().error("no luigi arguments (e.g. luigi --module pipelines.ranker RetrainRanker --date ...)")
    signal.signal(signal.SIGTERM, _on_signal)
    if options.deadline:
        # A timer, not inherited by forked task processes: only this process acts on the deadline.
        signal.signal(signal.SIGALRM, _on_signal)
        signal.setitimer(signal.ITIMER_REAL, options.deadline)
    from luigi.retcodes import run_with_retcodes

    try:
        try:
            run_with_retcodes(luigi_argv)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Shutdown as exc:
        why = "the run's deadline passed" if exc.signum == signal.SIGALRM else f"got {exc}"
        print(f"caravan: {why}; stopping the steps this run started", file=sys.stderr, flush=True)
        _wait_for_task_processes(options.grace)
        print(f"caravan: run stopped ({exc}); exit {exc.exit_code}", file=sys.stderr, flush=True)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # os._exit: luigi's queues' feeder threads must not hold up an exit Nomad is waiting for.
    os._exit(code)
