"""MonitorReport: the JSON round trip and the production row merged over arms."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from caravan.monitoring.report import MonitorReport, VersionWindow, merge_arms

_rate = st.one_of(st.none(), st.floats(min_value=0, max_value=1, allow_nan=False))
_names = st.sampled_from(["f_age", "f_price", "f_text"])
_maps = st.dictionaries(_names, st.floats(min_value=0, max_value=5, allow_nan=False), max_size=3)


@st.composite
def _rows(draw: st.DrawFn, artifact_id: str | None = None) -> VersionWindow:
    requests = draw(st.integers(0, 1000))
    labelled = draw(st.integers(0, requests))
    rewards = draw(st.integers(0, labelled))
    return VersionWindow(
        artifact_id=artifact_id or draw(st.sampled_from(["a1", "a2"])),
        arm=draw(st.sampled_from(["", "control", "treatment"])),
        requests=requests,
        labelled=labelled,
        rewards=rewards,
        reward_rate=(rewards / labelled) if labelled else None,
        auc=draw(_rate),
        calibration=draw(st.one_of(st.none(), st.floats(min_value=0, max_value=3, allow_nan=False))),
        missing_rate=draw(_maps),
        invalid_rate=draw(_maps),
        psi=draw(_maps),
    )


@given(
    versions=st.lists(_rows(), max_size=4),
    gate=_rate,
    prod=st.sampled_from([None, "a1", "a2"]),
    days=st.lists(st.dates().map(str), max_size=3),
)
def test_json_round_trip(versions, gate, prod, days) -> None:
    report = MonitorReport("ranker", "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00", prod, gate,
                           tuple(versions), tuple(days))
    assert MonitorReport.from_json(json.loads(json.dumps(report.to_json()))) == report


@given(st.lists(_rows("a1"), min_size=1, max_size=4))
def test_merge_adds_counts_and_recomputes_rates(rows) -> None:
    merged = merge_arms(rows)
    assert merged.requests == sum(r.requests for r in rows)
    assert merged.labelled == sum(r.labelled for r in rows)
    assert merged.rewards == sum(r.rewards for r in rows)
    if len(rows) > 1:
        expected = merged.rewards / merged.labelled if merged.labelled else None
        assert merged.reward_rate == expected
    aucs = [r.auc for r in rows if r.auc is not None]
    if merged.auc is not None:
        assert min(aucs) - 1e-12 <= merged.auc <= max(aucs) + 1e-12


def test_production_merges_only_the_production_artifact() -> None:
    def row(aid: str, arm: str, labelled: int, rewards: int, auc: float) -> VersionWindow:
        return VersionWindow(aid, arm, labelled * 2, labelled, rewards, rewards / labelled, auc, 1.0,
                             {"f_x": 0.1}, {}, {"f_x": 0.3})

    report = MonitorReport("ranker", "s", "e", "a1", 0.7,
                           (row("a1", "control", 100, 10, 0.6), row("a1", "treatment", 300, 60, 0.8),
                            row("a2", "treatment", 50, 5, 0.1)), ())
    prod = report.production()
    assert prod is not None
    assert (prod.requests, prod.labelled, prod.rewards) == (800, 400, 70)
    assert prod.reward_rate == 70 / 400
    assert abs((prod.auc or 0) - 0.75) < 1e-12  # (0.6*100 + 0.8*300) / 400
    assert MonitorReport("ranker", "s", "e", "zz", None, report.versions, ()).production() is None
    assert MonitorReport("ranker", "s", "e", None, None, report.versions, ()).production() is None
