"""HTTP pieces the Nomad and Consul doubles share: Go-style JSON, index headers, blocking queries, dropped
connections.

Both servers are Go programs built on the same conventions (Consul ``agent/http.go``/``agent/structs``, Nomad
``command/agent/http.go``/``nomad/structs``): ``encoding/json`` output, ``X-<Product>-Index``/``KnownLeader``/
``LastContact`` headers, and blocking queries that wait while the result's index is at most ``?index=``, for
``?wait=`` plus up to ``wait/16`` of jitter (``structs.JitterFraction``).
"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

JITTER_FRACTION = 16


def go_json(obj: Any, pretty: bool = False, html_escape: bool = True) -> bytes:
    """JSON as Go writes it: compact, UTF-8, with U+2028 and U+2029 escaped and, as encoding/json does (Consul),
    <, > and & too (``html_escape``; Nomad's codec handles set ``HTMLCharsAsIs``, ``nomad/structs/handlers.go``).
    ``pretty`` (``?pretty``): indented by 4, with a final newline."""
    text = json.dumps(obj, ensure_ascii=False, indent=4 if pretty else None,
                      separators=(",", ": ") if pretty else (",", ":"))
    escapes = [("\u2028", "\\u2028"), ("\u2029", "\\u2029")]
    if html_escape:
        escapes += [("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")]
    for char, escape in escapes:
        text = text.replace(char, escape)
    return (text + "\n" if pretty else text).encode()


def index_headers(product: str, index: int) -> dict[str, str]:
    """``X-<product>-Index`` (never below 1), ``KnownLeader`` and ``LastContact``, as a read answers."""
    return {f"X-{product}-Index": str(max(1, index)), f"X-{product}-KnownLeader": "true",
            f"X-{product}-LastContact": "0"}


def blocking_deadline(wait_s: float) -> float:
    """When a blocking query given ``wait_s`` returns at the latest (monotonic clock), jitter included."""
    return time.monotonic() + wait_s + random.uniform(0, wait_s / JITTER_FRACTION)


def blocking_query(cond: threading.Condition, read: Callable[[], tuple[Any, int, Any]], min_index: int,
                   wait_s: float, interrupted: Callable[[], bool] = lambda: False) -> tuple[Any, int]:
    """Run ``read`` (result, index, watch) under ``cond`` until the index passes ``min_index``.

    The query wakes on every notify but only takes a new result when ``watch`` (what it depends on) has
    changed, as a memdb watch set does; ``min_index`` 0 never blocks; at the deadline the last result is
    returned unchanged. ``interrupted`` ends the wait early (it may raise to abort the request instead)."""
    with cond:
        result, index, watch = read()
        if min_index == 0 or max(index, 1) > min_index:
            return result, index
        deadline = blocking_deadline(wait_s)
        while not interrupted():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            cond.wait(remaining)
            new_result, new_index, new_watch = read()
            if new_watch != watch:
                result, index, watch = new_result, new_index, new_watch
                if max(index, 1) > min_index:
                    break
    return result, index


def shutdown(conn: socket.socket) -> None:
    """Close a client's connection without an answer (an agent going away mid-request)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
