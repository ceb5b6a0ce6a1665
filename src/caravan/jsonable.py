"""Values as plain JSON data: what luigi parameters, job variables and manifests hold."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Any


def plain(value: Any) -> Any:
    """``value`` as plain JSON data: mappings (luigi's frozen dicts) as dicts, tuples as lists, dates as ISO text.

    A non-finite float is refused (JSON has no NaN); any other object becomes its ``str``.
    """
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} cannot travel as JSON")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


__all__ = ["plain"]
