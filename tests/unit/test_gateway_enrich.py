"""The example enricher (caravan.gateway.enrich_parquet) and the --enrich hook loader."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from caravan.errors import ConfigurationError
from caravan.gateway.app import load_enricher
from caravan.gateway.enrich_parquet import ParquetFeatures


def test_rows_get_the_users_features_and_their_own_values_win(tmp_path: Path) -> None:
    path = tmp_path / "users.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u2", None], "age": [31.0, 40.0, 1.0], "visits": [3, 7, 0]}), path)
    features = ParquetFeatures(str(path))
    assert features("u1", [{"x": 1.0}, {"x": 2.0, "age": 99.0}]) == [
        {"age": 31.0, "visits": 3, "x": 1.0}, {"age": 99.0, "visits": 3, "x": 2.0}]
    assert features("nobody", [{"x": 1.0}]) == [{"age": None, "visits": None, "x": 1.0}]
    assert features(None, [{"x": 1.0}]) == [{"age": None, "visits": None, "x": 1.0}]
    with pytest.raises(ConfigurationError, match="no key column 'uid'"):
        ParquetFeatures(str(path), key="uid")


def test_the_hook_loader_names_what_is_missing() -> None:
    assert load_enricher("caravan.gateway.enrich_parquet:enrich").__name__ == "enrich"
    for spec, message in (("nocolon", "expected module:function"), ("no.such.module:f", "cannot import"),
                          ("caravan.gateway.enrich_parquet:nothing", "has no function 'nothing'")):
        with pytest.raises(ConfigurationError, match=message):
            load_enricher(spec)
