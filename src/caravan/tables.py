"""Tables the ``caravan`` command prints: full values when read by a program, fitted to a terminal otherwise.

On a terminal the widest columns give way; ids lose their common prefix first (two models that differ
in one hyperparameter share everything up to it), never the part that tells them apart.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from typing import Any

ELLIPSIS = "…"
#: Metrics shown as their own columns (header, metric names in the order they are looked up).
KEY_METRIC_COLUMNS = (("valid_auc", ("valid_auc",)), ("test_auc", ("test_auc",)),
                      ("ndcg@10", ("test_ndcg@10", "ndcg@10", "valid_ndcg@10")))
_KEY_METRIC_NAMES = {name for _, names in KEY_METRIC_COLUMNS for name in names}
#: An id column is never squeezed below this (a terminal that narrow wraps instead).
MIN_ID_WIDTH = 24


def common_prefix(values: Sequence[str]) -> str:
    """The longest prefix every value starts with."""
    # Characters, not path components: ids share "TrainRanker/date=…/learning_rate=0.0" up to a digit.
    return os.path.commonprefix(list(values)) if values else ""  # noqa: RUF071


def _shorten_one(value: str, width: int, prefix_len: int) -> str:
    if len(value) <= width:
        return value
    # Drop as much of the common prefix as the width needs, behind one ellipsis.
    cut = min(prefix_len, len(value) - (width - 1))
    rest = value[cut:] if cut > 0 else value
    shown = (ELLIPSIS + rest) if cut > 0 else rest
    if len(shown) <= width:
        return shown
    # Still too long: keep the start of what differs and the end (the digest), elide the middle.
    lead = ELLIPSIS if cut > 0 else ""
    room = max(width - len(lead) - 1, 2)
    head, tail = room - room // 2, room // 2
    return lead + rest[:head] + ELLIPSIS + rest[len(rest) - tail:]


def shorten_ids(values: Sequence[str], width: int) -> list[str]:
    """``values`` fitted to ``width`` characters by cutting their common prefix (then their middle), so that
    values that differ stay different: where ``width`` cannot keep them apart, the forms get wider."""
    prefix_len = len(common_prefix(values))
    distinct = len(set(values))
    longest = max((len(v) for v in values), default=0)
    for w in range(max(width, 3), longest + 1):
        forms = [_shorten_one(v, w, prefix_len) for v in values]
        if len(set(forms)) == distinct:
            return forms
    return list(values)


def shorten_artifact_ids(values: Sequence[str], width: int) -> list[str]:
    """Artifact ids (``Family/…``) fitted to ``width``: the family stays whole and each family's ids lose their
    common prefix after it (``TrainRanker/…15,objective=binary--52ece235``), so ids of different families and
    different ids of one family stay apart."""
    heads = [v.split("/", 1)[0] + "/" if "/" in v else "" for v in values]
    forms = list(values)
    for head in set(heads):
        members = [i for i, h in enumerate(heads) if h == head]
        tails = shorten_ids([values[i][len(head):] for i in members], max(width - len(head), 3))
        for i, tail in zip(members, tails, strict=True):
            forms[i] = head + tail
    return forms


def cell(value: Any) -> str:
    """A value as table text: strings as they are, the rest as compact JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def metric_cells(metrics: Mapping[str, Any] | None) -> tuple[list[str], str]:
    """The key metrics (4 decimals, blank when absent) and the other metrics as ``name=value`` text."""
    metrics = metrics or {}
    keys = []
    for _, names in KEY_METRIC_COLUMNS:
        found = next((metrics[n] for n in names if n in metrics), None)
        keys.append(f"{found:.4f}" if isinstance(found, float) else cell(found))
    rest = ", ".join(f"{k}={cell(v) if not isinstance(v, float) else f'{v:.4g}'}"
                     for k, v in sorted(metrics.items()) if k not in _KEY_METRIC_NAMES)
    return keys, rest


def key_metric_headers() -> list[str]:
    """The headers of the key-metric columns."""
    return [header for header, _ in KEY_METRIC_COLUMNS]


def terminal_width() -> int | None:
    """The terminal's width when stdout is a terminal, else None (read by a program: print everything)."""
    try:
        if not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size((120, 24)).columns


def _truncate_end(value: str, width: int) -> str:
    return value if len(value) <= width else value[: max(width - 1, 0)] + ELLIPSIS


def fit(rows: list[list[str]], headers: list[str], *, width: int | None, id_columns: Sequence[int] = (),
        free_columns: Sequence[int] = ()) -> list[list[str]]:
    """Rows fitted to ``width`` (None: unchanged). Free-text columns are cut at their end first, then id
    columns lose their common prefix (see ``shorten_artifact_ids``); other columns are never cut."""
    if width is None or not rows:
        return rows
    rows = [list(r) for r in rows]

    def total() -> int:
        return sum(max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)) + 2 * (len(headers) - 1)

    for i in free_columns:
        over = total() - width
        if over <= 0:
            return rows
        current = max(len(headers[i]), *(len(r[i]) for r in rows))
        keep = max(len(headers[i]), 12, current - over)
        for r in rows:
            r[i] = _truncate_end(r[i], keep)
    for i in id_columns:
        over = total() - width
        if over <= 0:
            return rows
        current = max(len(r[i]) for r in rows)
        forms = shorten_artifact_ids([r[i] for r in rows], max(MIN_ID_WIDTH, len(headers[i]), current - over))
        for r, form in zip(rows, forms, strict=True):
            r[i] = form
    return rows


def render(rows: list[list[str]], headers: list[str]) -> str:
    """Left-aligned columns two spaces apart under a header and a rule; trailing blanks stripped."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)
    return "\n".join(lines)
