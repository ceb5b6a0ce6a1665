"""Rows on the gateway/worker wire (``caravan.v1.Row``, see proto/caravan/v1/predict.proto) and back.

:func:`encode_rows` writes the rows a JSON body gave (dicts of None, bool, int, float, str, list, dict) and
:func:`decode_rows` gives back exactly those dicts, so that the worker checks them with the same code, and
the same messages, as ``caravan serve``. Lists and objects travel by their type name only (every model
refuses them; the message names only the type). Rows of floats alone, the common case, travel with no
kinds and are read back with one ``dict(zip(...))``; a row with the same names as the row before leaves them
out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..v1 import predict_pb2
from .model import RequestInvalid

__all__ = ["decode_rows", "encode_rows"]

_EXACT = 2**53  # integers up to this magnitude are exact in a double
# The kind byte of each JSON type (see predict.proto); subclasses (numpy's aside) are looked up by isinstance.
_KIND = {float: ord("f"), int: ord("i"), bool: ord("b"), type(None): ord("n"), str: ord("s"), list: ord("l"),
         dict: ord("d")}
_PLACEHOLDER: dict[int, type] = {ord("l"): list, ord("d"): dict}


def _text(value: str) -> str:
    """A string the wire can carry (protobuf strings are UTF-8: a lone surrogate from JSON is escaped)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "backslashreplace").decode("ascii", "backslashreplace")
    return value


def _encode_row(row: Mapping[str, Any], out: Any, previous: list[Any] | None) -> list[Any]:
    """Write one row into ``out``; its names (the next row leaves them out when they are the same)."""
    names = list(row.keys())
    values = list(row.values())
    if not names or names != previous:
        if not all(type(name) is str for name in names):  # JSON keys are strings; a caller's other keys as text
            names = [str(name) for name in names]
        try:
            out.names.extend(names)
        except ValueError:  # a name with a lone surrogate: escaped (it is no feature's name, so it stays unknown)
            del out.names[:]
            out.names.extend(_text(name) for name in names)
    if set(map(type, values)) <= {float}:
        out.numbers.extend(values)
        return names
    numbers: list[float] = []
    kinds = bytearray()
    texts: list[str] = []
    for value in values:
        kind = _KIND.get(type(value))
        if kind is None:
            if isinstance(value, bool):
                kind = ord("b")
            elif isinstance(value, int):
                kind = ord("i")
            elif isinstance(value, float):
                kind = ord("f")
            elif isinstance(value, str):
                kind = ord("s")
            elif isinstance(value, Mapping):
                kind = ord("d")
            elif isinstance(value, Sequence):
                kind = ord("l")
            else:
                raise TypeError(f"a row value of type {type(value).__name__} is not a JSON value")
        number = 0.0
        if kind in (ord("f"), ord("b")):
            number = float(value)
        elif kind == ord("i"):
            if -_EXACT <= value <= _EXACT:
                number = float(value)
            else:
                kind = ord("I")
                texts.append(str(int(value)))
        elif kind == ord("s"):
            texts.append(_text(value))
        numbers.append(number)
        kinds.append(kind)
    out.numbers.extend(numbers)
    out.kinds = bytes(kinds)
    if texts:
        out.texts.extend(texts)
    return names


def encode_rows(rows: Sequence[Any], request_id: str = "") -> predict_pb2.PredictRequest:
    """A PredictRequest of JSON rows. A row that is not an object is refused here with the message
    ``caravan serve`` gives (a :class:`RequestInvalid` naming the row)."""
    request = predict_pb2.PredictRequest(request_id=request_id)
    add = request.rows.add
    previous: list[Any] | None = None
    for i, row in enumerate(rows):
        if type(row) is not dict and not isinstance(row, Mapping):
            raise RequestInvalid(f"row {i} must be a JSON object of feature values, got {type(row).__name__}", row=i)
        previous = _encode_row(row, add(), previous)
    return request


def _decode_row(row: Any, i: int, names: list[str]) -> dict[str, Any]:
    numbers, kinds = row.numbers, row.kinds
    if len(numbers) != len(names) or (kinds and len(kinds) != len(names)):
        raise RequestInvalid(f"row {i} is malformed: {len(names)} names, {len(numbers)} numbers, "
                             f"{len(kinds)} kinds", row=i)
    if not kinds:
        return dict(zip(names, numbers, strict=False))  # lengths checked above; strict=True costs a third more
    texts = iter(row.texts)
    values: list[Any] = []
    for number, kind in zip(numbers, kinds, strict=True):
        if kind == 102:  # 'f'
            values.append(number)
        elif kind == 105:  # 'i'
            values.append(int(number))
        elif kind == 98:  # 'b'
            values.append(number != 0)
        elif kind == 110:  # 'n'
            values.append(None)
        elif kind in (115, 73):  # 's', 'I'
            text = next(texts, None)
            if text is None:
                raise RequestInvalid(f"row {i} is malformed: fewer texts than its kinds name", row=i)
            if kind == 73:
                try:
                    values.append(int(text))
                except ValueError:
                    raise RequestInvalid(f"row {i} is malformed: {text[:40]!r} is not an integer", row=i) from None
            else:
                values.append(text)
        elif kind in _PLACEHOLDER:
            values.append(_PLACEHOLDER[kind]())  # an empty list or dict: only its type is ever named
        else:
            raise RequestInvalid(f"row {i} is malformed: unknown kind {chr(kind)!r}", row=i)
    return dict(zip(names, values, strict=False))  # lengths checked above


def decode_rows(request: predict_pb2.PredictRequest) -> list[dict[str, Any]]:
    """The rows of a PredictRequest as the dicts JSON decoding gives; RequestInvalid for a malformed row."""
    decoded = []
    names: list[str] = []
    for i, row in enumerate(request.rows):
        if row.names or not row.numbers:  # no names but values: the names of the row before
            names = list(row.names)
        decoded.append(_decode_row(row, i, names))
    return decoded
