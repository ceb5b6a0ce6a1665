"""The promotion gate on tiny real LightGBM models: same rows, compatible schemas, a floor, fail closed."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from caravan.artifacts import Artifact
from caravan.errors import BackendUnavailable
from caravan.registry.gate import UnsoundModel, breaking_changes, check_sound, judge
from caravan.storage import open_store

from ..tiny_models import holdout_auc, make_dataset, make_evaluation, make_model

RANKER = {"position": -0.8, "item_price": -0.5, "user_clicks": 0.9}
TABULAR = {"mean_radius": 1.2, "mean_texture": 0.6}


def test_a_candidate_with_another_schema_is_rejected_naming_the_breaking_fields(local_root):
    ranker_data = make_dataset(local_root, "ranker", RANKER, integer=("position",))
    tabular_data = make_dataset(local_root, "tabular", TABULAR)
    ranker = make_model(local_root, ranker_data, list(RANKER), name="ranker")
    tabular = make_model(local_root, tabular_data, list(TABULAR), name="tabular")

    verdict = judge(tabular, ranker)
    assert verdict["decision"] == "reject"
    [reason] = verdict["reasons"]
    assert "breaking serving-schema change" in reason
    assert "mean_radius" in reason and "mean_texture" in reason
    assert "candidate_score" in verdict and "current_score" not in verdict, "no numbers from different data"

    allowed = judge(tabular, ranker, allow_schema_change=True)
    assert allowed["decision"] == "promote", allowed
    assert {c.split()[0] for c in allowed["schema_change"]} == {"mean_radius", "mean_texture"}
    assert "current_score" not in allowed, "the ranker cannot score the tabular holdout: nothing compared"


def test_a_current_model_that_cannot_score_the_holdout_rejects_the_candidate(local_root):
    wide = make_dataset(local_root, "wide", {"s1": 1.0, "s2": 0.5, "s3": 0.5})
    narrow = make_dataset(local_root, "narrow", {"s1": 1.0, "s2": 0.5}, seed=2)
    current = make_model(local_root, wide, ["s1", "s2", "s3"], name="current")
    candidate = make_model(local_root, narrow, ["s1", "s2"], name="candidate")  # compatible: a subset

    verdict = judge(candidate, current, tolerance=1.0)
    assert verdict["decision"] == "reject"
    assert "cannot score the candidate's holdout" in verdict["reasons"][0]
    assert "s3" in verdict["reasons"][0]


def test_a_slow_decline_is_stopped_by_the_floor(local_root):
    data = make_dataset(local_root, "d", {"s1": 1.0, "s2": 0.35, "s3": 0.35}, rows=6000)
    best = make_model(local_root, data, ["s1", "s2", "s3"], name="a")
    worse = make_model(local_root, data, ["s1", "s2"], name="b")
    worst = make_model(local_root, data, ["s1"], name="c")
    a, b, c = (holdout_auc(m, data) for m in (best, worse, worst))
    assert a > b > c, (a, b, c)
    # Each step is within the tolerance of the one before; the whole slide is not.
    tolerance = (max(a - b, b - c) + (a - c)) / 2

    assert judge(worse, best, tolerance=tolerance)["decision"] == "promote"
    assert judge(worst, worse, tolerance=tolerance)["decision"] == "promote", "without the floor it slides"
    verdict = judge(worst, worse, tolerance=tolerance, floor=[worse.id, best.id])
    assert verdict["decision"] == "reject"
    assert "slow decline" in verdict["reasons"][0] and best.id in verdict["reasons"][0]
    assert verdict["floor"]["best"] == best.id
    assert verdict["floor"]["best_score"] == pytest.approx(a)


def test_a_worse_candidate_is_rejected_on_the_same_rows(local_root):
    data = make_dataset(local_root, "d", {"s1": 1.0, "s2": 1.0})
    good = make_model(local_root, data, ["s1", "s2"], name="good")
    weak = make_model(local_root, data, ["s2"], name="weak")
    verdict = judge(weak, good, tolerance=0.01)
    assert verdict["decision"] == "reject"
    assert f"same {verdict['holdout']['rows']} rows" in verdict["reasons"][0]
    assert verdict["current_score"] == pytest.approx(holdout_auc(good, data))


def test_a_non_model_artifact_is_not_sound(local_root):
    data = make_dataset(local_root, "d", {"s1": 1.0})
    model = make_model(local_root, data, ["s1"], name="m")
    evaluation = make_evaluation(local_root, model)
    with pytest.raises(UnsoundModel, match="is not a model: a EvaluateRanker artifact"):
        check_sound(evaluation)
    assert judge(evaluation, model)["decision"] == "reject"
    assert check_sound(model)["label"] == "clicked"


def test_a_missing_current_model_counts_as_none_but_an_outage_fails_closed(local_root):
    data = make_dataset(local_root, "d", {"s1": 1.0})
    candidate = make_model(local_root, data, ["s1"], name="m")
    gone = Artifact(open_store(local_root), "TrainRanker/name=gone--0123456789abcdef")
    verdict = judge(candidate, gone)
    assert verdict["decision"] == "promote" and verdict["current"] is None
    assert "counts as absent" in verdict["notes"][0]

    class Unreachable:
        """A store that is down: every read is an outage, never "not found"."""

        root_uri = "s3://down"

        def uri(self, key: str) -> str:
            return f"s3://down/{key}"

        def read(self, key: str) -> bytes:
            raise BackendUnavailable("connection reset", backend="s3://down")

    with pytest.raises(BackendUnavailable):
        judge(candidate, Artifact(Unreachable(), "TrainRanker/name=x--0123456789abcdef"))  # type: ignore[arg-type]


_names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
_types = st.sampled_from(["double", "float", "int64", "int32", "bool"])
_schemas = st.dictionaries(_names, _types, min_size=1, max_size=8).map(
    lambda d: {"label": "y", "features": [{"name": n, "type": t} for n, t in d.items()]})


@given(current=_schemas, data=st.data())
def test_breaking_changes_are_exactly_the_missing_or_retyped_features(current, data):
    features = current["features"]
    kept = data.draw(st.lists(st.sampled_from(features), unique_by=lambda f: f["name"]))
    assert breaking_changes({"label": "y", "features": kept}, current) == []
    renamed = data.draw(st.sampled_from(features))
    retyped = {**renamed, "type": "string"}
    new = {"name": renamed["name"] + "_new", "type": "double"}
    changes = breaking_changes({"label": "y", "features": [*kept, retyped, new]}, current)
    expected = [f"{retyped['name']} ({renamed['type']} -> string)", f"{new['name']} (not in the current schema)"]
    assert changes == expected or new["name"] in {f["name"] for f in features}
