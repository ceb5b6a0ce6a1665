"""The gateway's request bodies: ``POST /predict`` (``caravan serve``'s bodies plus the unit field) and
``POST /feedback``. Every body that is not what these accept is a :class:`RequestInvalid` (a 4xx), never a 500.

``POST /predict`` accepts what ``caravan serve`` accepts, with the unit (``user_id`` unless ``--unit`` says
otherwise) beside the features:

* one row: ``{"user_id": "u1", "f1": 0.5, ...}`` (the unit is taken out of the row);
* ``{"user_id": "u1", "rows": [{...}, ...]}`` (the unit beside the rows);
* a list of rows ``[{"user_id": "u1", ...}, ...]``, every row naming the same unit (or none).

A unit is a non-empty string or an integer (ids often are); ``null`` or no unit at all is a request without
a unit (a random arm, flagged in the answer). The rows themselves are checked by the worker, which answers
with ``caravan serve``'s messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..serving.limits import decode
from ..serving.model import RequestInvalid, excerpt

MAX_UNIT_CHARS = 256
MAX_REQUEST_ID_CHARS = 256


@dataclass(frozen=True)
class PredictBody:
    """A decoded ``/predict`` body: the rows (unit removed), whether it was a single row, and its unit."""

    rows: list[Any]
    single: bool
    unit: str | None


@dataclass(frozen=True)
class Feedback:
    """A decoded ``/feedback`` body."""

    request_id: str
    reward: int


def _unit_value(value: Any, unit: str, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RequestInvalid(f"{where}{unit!r} must be a string or an integer, got {type(value).__name__}",
                             field_name=unit)
    text = value if isinstance(value, str) else str(value)
    if not text or len(text) > MAX_UNIT_CHARS:
        raise RequestInvalid(f"{where}{unit!r} must be 1-{MAX_UNIT_CHARS} characters", field_name=unit)
    return text


def _rows_with_units(value: list[Any], unit: str) -> PredictBody:
    """A list of rows, each naming the same unit or none: the unit taken out of each."""
    if not value:
        raise RequestInvalid("no rows to predict")
    units: set[str | None] = set()
    rows = []
    for i, row in enumerate(value):
        if isinstance(row, dict) and unit in row:
            row = dict(row)
            units.add(_unit_value(row.pop(unit), unit, f"row {i}: "))
        else:
            units.add(None)
        rows.append(row)
    if len(units) > 1:
        named = sorted(excerpt(u) for u in units if u is not None)[:3]
        raise RequestInvalid(f"the rows name different {unit!r} values ({', '.join(named)}"
                             f"{' and none' if None in units else ''}): send one request per unit",
                             field_name=unit)
    return PredictBody(rows, False, units.pop())


def predict_body(body: bytes, unit: str) -> PredictBody:
    """The rows and unit of a ``/predict`` body."""
    value = decode(body)
    if isinstance(value, dict) and "rows" in value and set(value) <= {"rows", unit}:
        rows = value["rows"]
        if not isinstance(rows, list):
            raise RequestInvalid("'rows' must be a list of JSON objects", field_name="rows")
        if unit not in value:
            return _rows_with_units(rows, unit)
        if not rows:
            raise RequestInvalid("no rows to predict")
        for i, row in enumerate(rows):
            if isinstance(row, dict) and unit in row:
                raise RequestInvalid(f"row {i}: give {unit!r} once, beside 'rows' or in the rows, not both",
                                     field_name=unit, row=i)
        return PredictBody(rows, False, _unit_value(value[unit], unit, ""))
    if isinstance(value, dict):
        row = dict(value)
        return PredictBody([row], True, _unit_value(row.pop(unit, None), unit, ""))
    if isinstance(value, list):
        return _rows_with_units(value, unit)
    raise RequestInvalid(f"the body must be a JSON object or a list of objects, got {type(value).__name__}")


def feedback_body(body: bytes) -> Feedback:
    """The request id and reward of a ``/feedback`` body: ``{"request_id": "...", "reward": 0 or 1}``."""
    value = decode(body)
    if not isinstance(value, dict):
        raise RequestInvalid(f"the body must be a JSON object {{\"request_id\", \"reward\"}}, got "
                             f"{type(value).__name__}")
    extra = sorted(str(k) for k in value if k not in ("request_id", "reward"))
    if extra:
        raise RequestInvalid(f"unknown fields {', '.join(repr(excerpt(k)) for k in extra[:5])} (expected "
                             "'request_id' and 'reward')", field_name=excerpt(extra[0]))
    request_id, reward = value.get("request_id"), value.get("reward")
    if not isinstance(request_id, str) or not request_id:
        raise RequestInvalid("'request_id' must be the request_id string a /predict answer gave",
                             field_name="request_id")
    if len(request_id) > MAX_REQUEST_ID_CHARS:
        raise RequestInvalid("'request_id' is too long to be one this gateway issued", field_name="request_id")
    # 0 or 1 only: true/false and 0.5 are refused (type(True) is bool, a subclass of int).
    if type(reward) is not int or reward not in (0, 1):
        raise RequestInvalid(f"'reward' must be 0 or 1, got {excerpt(repr(reward), 40)}", field_name="reward")
    return Feedback(request_id, reward)
