"""caravan's errors on the ``luigi`` command line: one line each, and a failed run's last line says why.

luigi prints tracebacks for everything: a bad ``--date`` is "Uncaught exception in luigi" and ~20 lines
(luigi/retcodes.py ``run_with_retcodes`` logs it with ``logger.exception`` before exiting 40), a task whose
``requires()`` raises is "Will not run … due to error in deps() method" with the traceback as text
(worker.py ``_log_dependency_error``), and a failed ``run()`` is "[pid] Worker … failed" with its traceback
(worker.py ``_handle_run_exception``). A filter on luigi's ``luigi-interface`` logger turns those records
into one line when the cause is caravan's own error (or a command-line value luigi could not parse);
other exceptions (bugs) keep their traceback. When a run under the luigi command line had failures, the
process's last line on stderr names the first one and its reason (an ``atexit`` hook: luigi exits with
``sys.exit`` right after its execution summary, and caravan's summary, so nothing is printed after it).

``CARAVAN_DEBUG=1`` keeps luigi's tracebacks as they were.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import tempfile
import threading
import types
import uuid
from typing import Any

import luigi
import luigi.cmdline_parser

from .errors import CaravanError

#: Set to keep luigi's tracebacks (the ``caravan --debug`` of the luigi command line).
DEBUG_ENV = "CARAVAN_DEBUG"
_INTERFACE = "luigi-interface"
_UNCAUGHT = "Uncaught exception in luigi"
_TRACEBACK = "Traceback (most recent call last):"
#: A step's own last line on failure (caravan.step.execute_step).
_STEP_LINE = re.compile(r"caravan step \S+ failed for \S+: (.+)")


def one_line(text: str) -> str:
    """``text`` on one line: its non-blank lines joined by ``; ``."""
    return "; ".join(line.strip() for line in str(text).splitlines() if line.strip())


def reason_of(exc: BaseException) -> str:
    """An exception's one-line reason: its headline (first line); a failed step's own last stderr line is added
    (it says more than its exit code, and the rest of its message is the step's traceback)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    if not isinstance(exc, CaravanError):
        text = f"{type(exc).__name__}: {text}"
    tail = [line.strip() for line in str(getattr(exc, "stderr_tail", "") or "").splitlines() if line.strip()]
    if not tail or tail[-1] in text:
        return text
    # The step's last line repeats which step and artifact ("caravan step S failed for <id>: <reason>").
    own = _STEP_LINE.match(tail[-1])
    return f"{text}: {own.group(1) if own else tail[-1]}"


def parameter_error(tb: types.TracebackType | None, exc: BaseException) -> str | None:
    """The command-line value luigi failed to parse, from the frame of luigi's ``CmdlineParser._get_task_kwargs``
    (luigi/cmdline_parser.py: ``param_obj.parse(attr)`` for each ``param_name``), or None."""
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == "_get_task_kwargs" and "param_name" in frame.f_locals:
            name, value = str(frame.f_locals["param_name"]), frame.f_locals.get("attr")
            family = ""
            try:
                family = frame.f_locals["self"]._get_task_cls().get_task_family() + " "
            except Exception:  # the name is a nicety; the value and the reason are the message
                family = ""
            return f"{family}--{name.replace('_', '-')} {value!r}: {one_line(str(exc)) or type(exc).__name__}"
        tb = tb.tb_next
    return None


#: luigi's scheduling-failure messages (worker.py _log_complete_error, _log_dependency_error): the task's repr
#: between these, then ":" and the traceback as text.
_WILL_NOT_RUN = ("Will not run ", " or any dependencies due to error in ")


def _text_traceback(message: str) -> tuple[str, str, bool] | None:
    """A luigi message with a traceback as text: its first line, the exception's line without the module
    (``ValueError: …``, or only the message for caravan's errors) and whether the error is caravan's."""
    if _TRACEBACK not in message:
        return None
    lines = [line for line in message.splitlines() if line.strip()]
    last = lines[-1].strip() if lines else ""
    kind, _, text = last.partition(": ")
    ours = kind.startswith("caravan.")
    reason = (text or last) if ours else f"{kind.rsplit('.', 1)[-1]}: {text}" if text else last
    return lines[0].rstrip(":").strip(), reason, ours


def _replace(record: logging.LogRecord, message: str) -> None:
    record.msg, record.args = message, ()
    record.exc_info, record.exc_text = None, None


class OneLineErrors(logging.Filter):
    """Shortens luigi's records of caravan's errors to one line (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if os.environ.get(DEBUG_ENV):
            return True
        try:
            exc_info = record.exc_info
            exc = exc_info[1] if exc_info else None
            if exc is not None and exc_info is not None:
                if record.msg == _UNCAUGHT:
                    reason = parameter_error(exc_info[2], exc)
                    if reason is None and isinstance(exc, CaravanError):
                        reason = reason_of(exc)
                    if reason is not None:
                        _replace(record, f"caravan: {reason}")
                elif isinstance(exc, CaravanError):
                    _replace(record, f"{record.getMessage()}: {reason_of(exc)}")
            elif isinstance(record.msg, str):
                parsed = _text_traceback(record.getMessage())
                if parsed is not None:
                    head, reason, ours = parsed
                    if head.startswith(_WILL_NOT_RUN[0]) and _WILL_NOT_RUN[1] in head:
                        task = head[len(_WILL_NOT_RUN[0]):head.index(_WILL_NOT_RUN[1])]
                        _failures.add_text(task.split("(", 1)[0], task, reason)
                    if ours:
                        _replace(record, f"{head}: {reason}")
        except Exception:  # a record must never be lost to its shortening
            return True
        return True


class _Failures:
    """The failures of the luigi command line's run, in order.

    With ``--workers N`` luigi runs each task in a forked process (worker.py ``TaskProcess``), where the
    FAILURE event fires; such a process appends its line to a file the main process named before forking
    and reads at exit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.items: dict[str, str] = {}
        self.main_pid = os.getpid()
        self.spool = os.path.join(tempfile.gettempdir(), f"caravan-luigi-failures-{os.getpid()}-{uuid.uuid4().hex}")

    def add(self, task: luigi.Task, exc: BaseException) -> None:
        self.add_text(task.get_task_family(), task.task_id, reason_of(exc))

    def add_text(self, family: str, key: str, reason: str) -> None:
        if luigi.cmdline_parser.CmdlineParser.get_instance() is None:  # luigi.build() from Python: not ours to tell
            return
        line = f"{family} failed: {reason}"
        if os.getpid() != self.main_pid:  # a task process: tell the main process through the spool file
            try:
                with open(self.spool, "a", encoding="utf-8") as spool:
                    spool.write(json.dumps([key, line]) + "\n")
            except OSError:  # the reason is also in luigi's own lines above
                pass
            return
        with self._lock:
            self.items.setdefault(key, line)

    def succeeded(self, task: luigi.Task) -> None:
        with self._lock:
            self.items.pop(task.task_id, None)

    def _read_spool(self) -> None:
        try:
            with open(self.spool, encoding="utf-8") as spool:
                lines = spool.read().splitlines()
            os.unlink(self.spool)
        except OSError:  # no task process failed
            return
        with self._lock:
            for raw in lines:
                try:
                    key, line = json.loads(raw)
                except ValueError:
                    continue
                self.items.setdefault(str(key), str(line))

    def last_line(self) -> str | None:
        self._read_spool()
        with self._lock:
            reasons = list(self.items.values())
        if not reasons:
            return None
        more = f" (and {len(reasons) - 1} more failure{'s' if len(reasons) > 2 else ''} above)" if len(reasons) > 1 \
            else ""
        return f"caravan: {reasons[0]}{more}"


_failures = _Failures()


def _print_last_line() -> None:
    if os.getpid() != _failures.main_pid:  # a forked process that exits normally: the main process tells
        return
    line = _failures.last_line()
    if line:
        try:
            sys.stderr.flush()
            print(line, file=sys.stderr, flush=True)
        except (OSError, ValueError):  # stderr closed: nobody to tell
            pass


def install() -> None:
    """Install the filter and the last-line hook once per process."""
    interface = logging.getLogger(_INTERFACE)
    if any(isinstance(f, OneLineErrors) for f in interface.filters):
        return
    interface.addFilter(OneLineErrors())
    atexit.register(_print_last_line)


@luigi.Task.event_handler(luigi.Event.FAILURE)
def _on_failure(task: luigi.Task, exc: BaseException) -> None:
    _failures.add(task, exc)


@luigi.Task.event_handler(luigi.Event.BROKEN_TASK)
def _on_broken(task: luigi.Task, exc: BaseException) -> None:
    _failures.add(task, exc)


@luigi.Task.event_handler(luigi.Event.SUCCESS)
def _on_success(task: luigi.Task, *_: Any) -> None:
    _failures.succeeded(task)
