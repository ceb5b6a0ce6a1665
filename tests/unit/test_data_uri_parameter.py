"""A data input given as a plain path is made absolute when the task is created; URIs are left as they are."""

from __future__ import annotations

import os

from hypothesis import assume, example, given
from hypothesis import strategies as st

from caravan.dataio import DataURIParameter

SEGMENT = st.text(st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1,
                  max_size=12).filter(lambda s: s not in (".", ".."))


@given(st.lists(SEGMENT, min_size=1, max_size=4), st.booleans())
@example(["table.parquet"], False)
@example(["data", "table"], True)
def test_a_relative_path_becomes_absolute_and_keeps_its_trailing_slash(parts, folder):
    assume(not parts[0].startswith("~"))  # a home directory, not a relative path: the test below
    value = "/".join(parts) + ("/" if folder else "")
    normalized = DataURIParameter().normalize(value)
    assert os.path.isabs(normalized)
    assert normalized.rstrip("/") == os.path.join(os.getcwd(), *parts)
    assert normalized.endswith("/") == folder
    assert DataURIParameter().normalize(normalized) == normalized, "normalizing twice changes nothing"


@given(st.lists(SEGMENT, max_size=3), st.booleans())
@example([], False)
def test_a_path_under_the_home_directory_is_expanded_as_a_shell_would(parts, folder):
    value = "/".join(["~", *parts]) + ("/" if folder and parts else "")
    normalized = DataURIParameter().normalize(value)
    assert normalized.rstrip("/") == os.path.join(os.path.expanduser("~"), *parts).rstrip("/")
    assert normalized.endswith("/") == (folder and bool(parts))


@given(st.sampled_from(["s3://bucket/", "hdfs://nn:9870/", "file:///tmp/"]), st.lists(SEGMENT, max_size=3))
def test_uris_are_left_as_they_are(scheme_root, parts):
    uri = scheme_root + "/".join(parts)
    assert DataURIParameter().normalize(uri) == uri
