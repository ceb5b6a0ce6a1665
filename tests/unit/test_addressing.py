"""Artifact addresses: deterministic, collision-free, always inside the root, one segment per level."""

from __future__ import annotations

import datetime as dt
import posixpath
from urllib.parse import unquote

import luigi
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from caravan import ArtifactTask
from caravan.addressing import MAX_READABLE_BYTES, Address, escape, unescape

names = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
values = st.text(max_size=400)  # any unicode, slashes, "..", NUL, very long strings
param_dicts = st.dictionaries(names, values, max_size=6)
upstreams = st.recursive(
    st.none() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=6,
)
families = st.from_regex(r"[A-Z][A-Za-z0-9_]{0,30}(\.[A-Z][A-Za-z0-9_]{0,10})?", fullmatch=True)


def address(family: str, params: dict[str, str], upstream: object = None, code_version: str = "1",
            partition: bool = False) -> Address:
    partition_key = next(iter(sorted(params)), None) if partition else None
    return Address(family=family, params=params, upstream=upstream, code_version=code_version,
                   partition_key=partition_key)


@given(families, param_dicts, upstreams, st.text(max_size=10), st.booleans())
def test_rendering_is_deterministic(family, params, upstream, code_version, partition):
    first = address(family, params, upstream, code_version, partition)
    second = address(family, dict(reversed(list(params.items()))), upstream, code_version, partition)
    assert first.key == second.key
    assert first.digest == second.digest


@given(families, param_dicts, param_dicts, upstreams, upstreams, st.text(max_size=5), st.text(max_size=5))
def test_different_inputs_never_share_an_address(family, params_a, params_b, up_a, up_b, code_a, code_b):
    assume((params_a, up_a, code_a) != (params_b, up_b, code_b))
    a = address(family, params_a, up_a, code_a)
    b = address(family, params_b, up_b, code_b)
    assert a.key != b.key


@given(families, families, param_dicts)
def test_family_is_part_of_the_identity(family_a, family_b, params):
    assume(family_a != family_b)
    assert address(family_a, params).digest != address(family_b, params).digest


@given(families, param_dicts, st.booleans())
def test_paths_stay_inside_the_root_one_segment_per_level(family, params, partition):
    addr = address(family, params, partition=partition)
    segments = addr.key.split("/")
    assert len(segments) == (3 if partition and params else 2)
    for segment in segments:
        assert segment not in ("", ".", "..")
        assert len(segment.encode("utf-8")) <= 255
        assert all(ch.isascii() and ch.isprintable() and ch not in "\\/ " for ch in segment)
    root = "/data/artifacts"
    joined = posixpath.normpath(posixpath.join(root, addr.key))
    assert joined.startswith(root + "/")
    assert joined == f"{root}/{addr.key}"


@given(st.text(max_size=200), st.text(max_size=200))
def test_escaping_is_injective_and_reversible(a, b):
    assert unescape(escape(a)) == a
    if a != b:
        assert escape(a) != escape(b)


@given(st.text(max_size=200))
def test_escaped_segments_mean_the_same_in_every_uri(value):
    # Only RFC 3986 unreserved characters: nothing a URI decoder (pyarrow, fsspec, urllib) would change.
    escaped = escape(value)
    assert "%" not in escaped
    assert set(escaped) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
    assert unquote(escaped) == escaped


@given(st.text(min_size=MAX_READABLE_BYTES, max_size=2000))
def test_long_values_are_shortened_but_stay_unique(value):
    addr = address("Family", {"p": value})
    other = address("Family", {"p": value + "x"})
    assert len(addr.name) <= MAX_READABLE_BYTES + 2 + 16
    assert "~--" in addr.name
    assert addr.key != other.key


def test_readable_part_shows_the_hyperparameters():
    addr = Address("TrainRanker", {"date": "2026-11-22", "learning_rate": "0.05", "num_leaves": "31"},
                   partition_key="date")
    family, partition, name = addr.key.split("/")
    assert (family, partition) == ("TrainRanker", "date=2026-11-22")
    assert name.startswith("learning_rate=0.05,num_leaves=31--")
    assert len(name.rsplit("--", 1)[1]) == 16


class Upstream(ArtifactTask):
    date = luigi.DateParameter()
    source = luigi.Parameter(default="events")


class Downstream(ArtifactTask):
    date = luigi.DateParameter()
    learning_rate = luigi.FloatParameter(default=0.1)
    grid = luigi.DictParameter(default={})
    workers_hint = luigi.IntParameter(default=1, significant=False)
    source = luigi.Parameter(default="events")

    def requires(self):
        return {"data": Upstream(date=self.date, source=self.source)}


class DownstreamV2(Downstream):
    code_version = "2"


DAY = dt.date(2026, 11, 22)


@settings(max_examples=50)
@given(st.integers(min_value=0, max_value=10**6))
def test_insignificant_parameters_never_change_the_address(hint):
    assert Downstream(date=DAY, workers_hint=hint).output().id == Downstream(date=DAY).output().id


def test_upstream_and_code_version_change_the_address():
    base = Downstream(date=DAY).address()
    assert Downstream(date=DAY, source="other").address().digest != base.digest
    other_code = DownstreamV2(date=DAY).address()
    assert other_code.code_version == "2"
    assert other_code.upstream == base.upstream
    assert other_code.params == base.params
    assert Address(base.family, base.params, base.upstream, "2", "date").digest != base.digest


def test_partition_is_the_date_parameter_and_upstream_ids_are_recorded():
    addr = Downstream(date=DAY, learning_rate=0.05).address()
    assert addr.key.split("/")[1] == "date=2026-11-22"
    assert addr.upstream == {"data": Upstream(date=DAY).output().id}


@settings(max_examples=60)
@given(st.floats(allow_nan=False, allow_infinity=False), st.dictionaries(names, st.integers() | st.text(max_size=20)))
def test_address_survives_a_parameter_round_trip(lr, grid):
    task = Downstream(date=DAY, learning_rate=lr, grid=grid)
    again = Downstream.from_str_params(task.to_str_params())
    assert again.output().id == task.output().id


def test_identity_round_trips_through_json():
    addr = Downstream(date=DAY, learning_rate=0.05).address()
    rebuilt = Address.from_identity(addr.identity(), partition_key="date")
    assert rebuilt.key == addr.key


def test_bad_partition_names_fail_clearly():
    with pytest.raises(ValueError, match="partition parameter 'nope'"):
        Address("F", {"a": "1"}, partition_key="nope")


class Typed(ArtifactTask):
    x = luigi.FloatParameter()
    n = luigi.IntParameter(default=1)
    d = luigi.DictParameter(default={})


@given(st.integers(min_value=-10**9, max_value=10**9))
def test_python_and_command_line_values_give_one_address(value):
    from_python = Typed(x=value).output().id
    from_cli = Typed.from_str_params({"x": str(value)}).output().id
    from_float = Typed(x=float(value)).output().id
    assert from_python == from_cli == from_float
