"""The gate scores candidate, current and floor models on the same holdout batches: same verdict at any batch size."""

from __future__ import annotations

import pytest

from caravan.registry.gate import judge

from ..tiny_models import holdout_auc, make_dataset, make_model


def test_the_verdict_and_its_numbers_do_not_depend_on_the_batch_size(local_root):
    data = make_dataset(local_root, "d", {"s1": 1.0, "s2": 0.35, "s3": 0.35}, rows=3000)
    best = make_model(local_root, data, ["s1", "s2", "s3"], name="a")
    worse = make_model(local_root, data, ["s1", "s2"], name="b")
    worst = make_model(local_root, data, ["s1"], name="c")
    exact = {m.id: holdout_auc(m, data) for m in (best, worse, worst)}
    verdicts = [judge(worse, best, tolerance=0.5, floor=[worst.id, best.id, worst.id], batch_rows=rows)
                for rows in (50, 1_000_000)]
    for verdict in verdicts:
        assert verdict["decision"] == "promote", verdict
        # Exact streaming AUC: the very floats of the whole-holdout computation, however the rows were batched.
        assert verdict["candidate_score"] == exact[worse.id]
        assert verdict["current_score"] == exact[best.id]
        assert verdict["floor"]["scores"] == {best.id: exact[best.id], worst.id: exact[worst.id]}
        assert verdict["holdout"] == {"dataset": data.id, "rows": 1000}
    assert verdicts[0]["score_std"] == pytest.approx(verdicts[1]["score_std"], rel=1e-12)
    assert verdicts[0]["reasons"] == verdicts[1]["reasons"]


def test_a_current_model_missing_a_feature_is_caught_while_the_candidate_still_scores(local_root):
    narrow = make_dataset(local_root, "narrow", {"s1": 1.0, "s2": 0.5}, seed=2)
    wide = make_dataset(local_root, "wide", {"s1": 1.0, "s2": 0.5, "s3": 0.5})
    current = make_model(local_root, wide, ["s1", "s2", "s3"], name="current")
    candidate = make_model(local_root, narrow, ["s1", "s2"], name="candidate")
    verdict = judge(candidate, current, tolerance=1.0, batch_rows=50)
    assert verdict["decision"] == "reject"
    assert "cannot score the candidate's holdout" in verdict["reasons"][0] and "s3" in verdict["reasons"][0]
    assert verdict["candidate_score"] == holdout_auc(candidate, narrow), "the candidate scored every batch"
