"""One timestamp format, one id format, one way to make parameter values plain JSON."""

from __future__ import annotations

import datetime as dt
import json
import math
import re

import luigi
import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan.jsonable import plain
from caravan.stamps import new_id, utc_now

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)


def test_utc_now_is_iso_8601_utc_with_microseconds() -> None:
    stamp = utc_now()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", stamp), stamp
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.timezone.utc) - parsed).total_seconds()) < 60


def test_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"\d{8}T\d{12}Z-[0-9a-f]{12}", i) for i in ids), ids[0]
    stamps = [i.split("-")[0] for i in ids]
    assert stamps == sorted(stamps), "made one after another, they sort in that order"


@given(json_values)
def test_plain_json_comes_back_unchanged_and_survives_json(value: object) -> None:
    assert plain(value) == value
    assert json.loads(json.dumps(plain(value))) == value


@given(json_values)
def test_luigi_frozen_values_become_plain_lists_and_dicts(value: object) -> None:
    frozen = luigi.DictParameter().normalize({"v": value})  # what a DictParameter holds: FrozenOrderedDict, tuples
    assert plain(frozen) == {"v": value}


def test_dates_become_iso_text_and_non_finite_floats_are_refused() -> None:
    assert plain({"d": dt.date(2026, 11, 22), "t": (dt.datetime(2026, 11, 22, 8, 0),)}) == \
        {"d": "2026-11-22", "t": ["2026-11-22T08:00:00"]}
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="JSON"):
            plain([1.0, bad])
