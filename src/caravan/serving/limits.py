"""Bounded requests: how many bytes and rows a request may carry, reading a body within its limit, decoding it
into a clear error for anything that is not JSON, and quoting client input in errors only short and escaped.

Nothing here trusts the client: the byte limit holds while the body arrives (a 50 MB body is never in
memory), and every failure to decode is a ``RequestInvalid`` (4xx), never an exception that reaches the
server's 500 handler.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from .model import RequestInvalid, excerpt

MAX_ROWS = 10_000
# JSON of one value, at most: a double in full (-1.2345678901234567e-308, 24 chars) with its colon, comma
# and indentation (4 spaces a level). A row's budget is this per feature plus its name as JSON (quotes, escapes).
_BYTES_PER_VALUE = 48
_BYTES_PER_ROW = 32
_BODY_SLACK = 4096  # the {"rows": [...]} around the rows, and whitespace
# A refused body is read to its end (and thrown away) so that the client, still sending, reads the 413
# instead of a reset; past this much the connection is closed on it instead.
DRAIN_LIMIT = 256 * 1024 * 1024
REQUEST_ID_MAX = 128


class BodyTooLarge(Exception):
    """A request body over the byte limit."""

    def __init__(self, limit: int, size: int | None) -> None:
        self.limit, self.size = limit, size
        super().__init__(f"body over {limit} bytes")


class ClientGone(Exception):
    """The client disconnected before its request was read."""


def max_body_bytes(feature_names: Iterable[str], max_rows: int = MAX_ROWS) -> int:
    """Room for ``max_rows`` rows of these features written the long way: the default byte limit."""
    per_row = _BYTES_PER_ROW + sum(len(json.dumps(name)) + _BYTES_PER_VALUE for name in feature_names)
    return max_rows * per_row + _BODY_SLACK


def too_large_message(error: BodyTooLarge, max_rows: int) -> str:
    size = f"{error.size} bytes" if error.size is not None else "more bytes"
    return (f"request body too large: {size}, the limit is {error.limit} bytes "
            f"(at most {max_rows} rows per request)")


async def read_body(receive: Callable[[], Awaitable[dict[str, Any]]], limit: int, declared: int | None) -> bytes:
    """The request body, read chunk by chunk; :class:`BodyTooLarge` as soon as it is over ``limit`` bytes
    (before reading anything when Content-Length says so), :class:`ClientGone` if the client leaves."""
    if declared is not None and declared > limit:
        await _drain(receive, declared)
        raise BodyTooLarge(limit, declared)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            await _drain(receive, size)
            raise BodyTooLarge(limit, None)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _drain(receive: Callable[[], Awaitable[dict[str, Any]]], seen: int) -> None:
    """Read and drop the rest of a refused body (up to :data:`DRAIN_LIMIT`), keeping none of it."""
    read = 0
    while read < DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        read += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def content_length(value: bytes) -> int | None:
    """A Content-Length header's value, or None when it is not a plain number (the server then counts)."""
    return int(value) if value.isdigit() and len(value) <= 18 else None


def decode(body: bytes) -> Any:
    """The JSON value of a body; any body that is not JSON is a :class:`RequestInvalid` naming why."""
    try:
        return json.loads(body)
    except RecursionError:
        raise RequestInvalid("body nests arrays or objects too deeply (rows are flat JSON objects)") from None
    except UnicodeDecodeError as exc:
        raise RequestInvalid(f"body is not UTF-8 JSON: {exc.reason} at byte {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise RequestInvalid(f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # what else json.loads refuses: an integer of thousands of digits
        if "digits" in str(exc):
            raise RequestInvalid("body holds a number with too many digits") from None
        raise RequestInvalid(f"body is not JSON: {excerpt(str(exc), 200)}") from None


def request_id(value: bytes) -> str | None:
    """A client's x-request-id if it is short printable ASCII (it goes into logs and a header), else None."""
    if 0 < len(value) <= REQUEST_ID_MAX and value.isascii():
        text = value.decode("ascii")
        if text.isprintable():
            return text
    return None
