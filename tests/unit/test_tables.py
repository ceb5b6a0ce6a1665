"""The tables of `caravan runs` and `caravan models history`: ids keep what tells them apart on a terminal."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from caravan.tables import ELLIPSIS, common_prefix, fit, metric_cells, render, shorten_artifact_ids, shorten_ids

# Ids as caravan makes them: a family, a partition, readable parameters and a digest.
_ALPHABET = st.characters(codec="utf-8", categories=["L", "N"], include_characters="=,_.-/~%")
_PARAM = st.text(_ALPHABET, min_size=0, max_size=40)


@st.composite
def ids_with_common_prefix(draw: st.DrawFn) -> list[str]:
    prefix = draw(st.sampled_from(["TrainRanker/date=2026-11-22/learning_rate=0.0",
                                   "EvaluateTabular/dataset=~2Fdata~2Ftable.parquet,label=target,num_leaves=",
                                   "", "x"]))
    tails = draw(st.lists(_PARAM, min_size=1, max_size=8))
    return [prefix + tail for tail in tails]


@settings(max_examples=300, deadline=None)
@given(ids_with_common_prefix(), st.integers(min_value=1, max_value=120))
def test_shortened_ids_stay_distinct_and_fit_when_they_can(values, width):
    forms = shorten_ids(values, width)
    assert len(forms) == len(values)
    # Different ids never print the same; equal ids print the same.
    for (a, fa) in zip(values, forms, strict=True):
        for (b, fb) in zip(values, forms, strict=True):
            assert (a == b) == (fa == fb), (values, forms)
    for value, form in zip(values, forms, strict=True):
        if len(value) <= width:
            assert form == value, "a value that fits is never shortened"
        else:
            assert len(form) <= len(value)


@settings(max_examples=200, deadline=None)
@given(ids_with_common_prefix(), st.integers(min_value=24, max_value=80))
def test_the_common_prefix_goes_first_and_the_distinguishing_end_stays(values, width):
    forms = shorten_ids(values, width)
    prefix_len = len(common_prefix(values))
    for value, form in zip(values, forms, strict=True):
        rest = value[prefix_len:]
        if len(value) > width and 0 < len(rest) <= width - 1 and len(set(values)) == len(values):
            # Cutting (part of) the prefix was enough: what follows it is shown whole, at the end.
            assert form.startswith(ELLIPSIS) and form.endswith(rest), (value, form)


_FAMILY = st.sampled_from(["TrainRanker", "EvaluateRanker", "PrepareDataset", "GridSearchRanker"])


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_FAMILY, ids_with_common_prefix().map(lambda ids: ids[0])), min_size=1, max_size=10),
       st.integers(min_value=1, max_value=120))
def test_artifact_ids_keep_their_family_and_stay_distinct(pairs, width):
    values = [f"{family}/{rest}" for family, rest in pairs]
    forms = shorten_artifact_ids(values, width)
    for (a, fa) in zip(values, forms, strict=True):
        assert fa.startswith(a.split("/", 1)[0] + "/"), "the family is never cut"
        for (b, fb) in zip(values, forms, strict=True):
            assert (a == b) == (fa == fb), (values, forms)


def test_two_models_that_differ_in_one_hyperparameter_look_different():
    a = "TrainRanker/date=2026-11-22/feature_fraction=0.9,learning_rate=0.05,num_leaves=15--0a1b2c3d4e5f6a7b"
    b = "TrainRanker/date=2026-11-22/feature_fraction=0.9,learning_rate=0.05,num_leaves=63--9f8e7d6c5b4a3f2e"
    fa, fb = shorten_ids([a, b], 40)
    assert fa != fb and len(fa) <= 40 and len(fb) <= 40
    assert "15" in fa and "63" in fb and fa.endswith("0a1b2c3d4e5f6a7b")
    fa, fb = shorten_artifact_ids([a, b], 40)
    assert fa.startswith("TrainRanker/…") and fb.startswith("TrainRanker/…"), (fa, fb)
    assert "15--0a1b2c3d4e5f6a7b" in fa and "63--9f8e7d6c5b4a3f2e" in fb, "the prefix goes, the difference stays"


def test_nothing_is_cut_when_stdout_is_not_a_terminal():
    rows = [["2026", "A" * 300, "m=" + "9" * 200]]
    assert fit(rows, ["when", "artifact", "metrics"], width=None, id_columns=[1], free_columns=[2]) == rows
    assert "A" * 300 in render(rows, ["when", "artifact", "metrics"])


def test_on_a_terminal_free_text_gives_way_before_ids():
    ids = [f"TrainRanker/date=2026-11-22/num_leaves={n}--{n:016x}" for n in (15, 63)]
    rows = [[i, "why " * 30] for i in ids]
    fitted = fit(rows, ["artifact", "why"], width=100, id_columns=[0], free_columns=[1])
    assert [r[0] for r in fitted] == ids, "the ids fit once the free text is cut"
    assert all(len(r[1]) < len(rows[0][1]) and r[1].endswith(ELLIPSIS) for r in fitted)
    lines = render(fitted, ["artifact", "why"]).splitlines()
    assert max(len(line) for line in lines) <= 100


def test_key_metrics_are_columns_and_the_rest_is_text():
    keys, rest = metric_cells({"valid_auc": 0.76401, "test_ndcg@10": 0.7290, "best_iteration": 300, "x": 0.123456})
    assert keys == ["0.7640", "", "0.7290"]
    assert rest == "best_iteration=300, x=0.1235"
    assert metric_cells(None) == (["", "", ""], "")
