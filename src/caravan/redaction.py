"""Secret values kept out of logs and error messages, from the moment a record is created.

Every secret value a process reads is :func:`remember`-ed; :func:`redact` replaces each one in
a text with ``[redacted]``. Logging goes through a record factory (``logging.setLogRecordFactory``)
installed by the first :func:`remember`: each record is cleaned as it is made, before any logger
filter or handler sees it, so a handler added later (uvicorn's, ``basicConfig(force=True)``, a test's)
cannot print a secret. This module imports nothing from caravan: ``errors`` and ``secrets`` both use it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

REDACTED = "[redacted]"
# Shorter values are not redacted: hiding every "1" or "ab" in the logs would hide nothing useful
# and mangle everything else. Real credentials are far longer.
MIN_REDACTED_LENGTH = 6

_lock = threading.Lock()
_known: set[str] = set()
_ordered: tuple[str, ...] = ()  # longest first: a value may contain another


def remember(value: str) -> None:
    """Hide ``value`` from every log record and every :func:`redact` call from now on."""
    global _ordered
    if len(value) < MIN_REDACTED_LENGTH:
        return
    with _lock:
        if value not in _known:
            _known.add(value)
            _ordered = tuple(sorted(_known, key=len, reverse=True))
    install()


def redact(text: str) -> str:
    """``text`` with every secret value this process has read replaced by ``[redacted]``."""
    for value in _ordered:  # a tuple swapped whole under the lock: safe to read without it
        if value in text:
            text = text.replace(value, REDACTED)
    return text


def _clean_arg(arg: Any) -> Any:
    text = arg if isinstance(arg, str) else None
    if text is None:
        try:
            text = str(arg)
        except Exception:  # an object whose __str__ fails is left to logging's own error report
            return arg
    cleaned = redact(text)
    return arg if cleaned == text else cleaned


def clean_record(record: logging.LogRecord) -> logging.LogRecord:
    """Remove every known secret from ``record``: message, arguments, exception and stack text."""
    if not _ordered:
        return record
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    elif record.msg is not None and redact(str(record.msg)) != str(record.msg):
        record.msg = redact(str(record.msg))
    # Arguments are cleaned one by one so their shape survives (uvicorn's access formatter unpacks
    # record.args); only an argument that contains a secret becomes its cleaned text.
    if isinstance(record.args, Mapping):
        record.args = {k: _clean_arg(v) for k, v in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_clean_arg(a) for a in record.args)
    try:
        message = record.getMessage()
    except Exception:  # a cleaned argument broke a %d: keep the message, formatted and cleaned, instead
        message = None
    if message is None or redact(message) != message:  # a secret made of message and argument together
        record.msg, record.args = redact(_original_message(record)), None
    if record.exc_info and record.exc_info[1] is not None:
        text = logging.Formatter().formatException(record.exc_info)
        if redact(text) != text:
            # The traceback as cleaned text; the exception object (which holds the secret) is dropped.
            record.exc_info, record.exc_text = None, redact(text)
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


def _original_message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        return f"{record.msg} {record.args!r}"


class _RedactingFactory:
    """Wraps the record factory that was installed before it and cleans what that one makes."""

    def __init__(self, inner: Callable[..., logging.LogRecord]) -> None:
        self.inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
        return clean_record(self.inner(*args, **kwargs))


def install() -> None:
    """Make every log record go through :func:`clean_record` (idempotent; :func:`remember` calls it).

    Checked again on each call: if someone replaced the factory since, ours wraps theirs.
    """
    with _lock:
        current = logging.getLogRecordFactory()
        if not isinstance(current, _RedactingFactory):
            logging.setLogRecordFactory(_RedactingFactory(current))


__all__ = ["MIN_REDACTED_LENGTH", "REDACTED", "clean_record", "install", "redact", "remember"]
