"""An example ``--enrich`` hook: a user's features from a Parquet table held in memory.

    CARAVAN_ENRICH_PARQUET=users.parquet caravan gateway --model ranker --enrich caravan.gateway.enrich_parquet:enrich

The table has one row per unit, keyed by the column ``CARAVAN_ENRICH_KEY`` (default ``user_id``); every other
column is a feature. Each request row gets the unit's features added; a value the request gives itself wins
(a client may override a stale feature). An unknown unit, or a request without a unit, gets nulls, which the
model scores as missing values. The table is read once (``caravan gateway`` calls every enricher once with
``(None, [])`` at start, so a missing table stops it there) and kept as columns plus an index.

Any function ``(unit, rows) -> rows`` can be a hook; this one shows the shape: I/O at start, a dictionary
lookup per request.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from ..errors import ConfigurationError


class ParquetFeatures:
    """Features per unit from one Parquet table, as an enricher ``(unit, rows) -> rows``."""

    def __init__(self, path: str, key: str = "user_id") -> None:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if key not in table.column_names:
            raise ConfigurationError(f"enrich table {path}: no key column {key!r} (columns: "
                                     f"{', '.join(table.column_names[:10])})")
        self.names = [name for name in table.column_names if name != key]
        self.columns = [table.column(name).to_pylist() for name in self.names]
        self.index = {str(unit): i for i, unit in enumerate(table.column(key).to_pylist()) if unit is not None}
        self.missing = dict.fromkeys(self.names)

    def features(self, unit: str | None) -> dict[str, Any]:
        """The unit's features (nulls for a unit the table does not have)."""
        i = self.index.get(unit) if unit is not None else None
        if i is None:
            return dict(self.missing)
        return {name: column[i] for name, column in zip(self.names, self.columns, strict=True)}

    def __call__(self, unit: str | None, rows: list[Any]) -> list[Any]:
        features = self.features(unit)
        return [{**features, **row} if isinstance(row, dict) else row for row in rows]


_lock = threading.Lock()
_loaded: ParquetFeatures | None = None


def enrich(unit: str | None, rows: list[Any]) -> list[Any]:
    """The hook: the table named by ``CARAVAN_ENRICH_PARQUET`` (read once), keyed by ``CARAVAN_ENRICH_KEY``."""
    global _loaded
    if _loaded is None:
        with _lock:
            if _loaded is None:
                path = os.environ.get("CARAVAN_ENRICH_PARQUET")
                if not path:
                    raise ConfigurationError("caravan.gateway.enrich_parquet needs CARAVAN_ENRICH_PARQUET (a Parquet "
                                             "file of user features)")
                _loaded = ParquetFeatures(path, os.environ.get("CARAVAN_ENRICH_KEY") or "user_id")
    return _loaded(unit, rows)
