"""The scale-transfer report on known values: rank correlations, its reading, and which trials count."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from scipy import stats

from mt_tune.search.transfer import transfer_report


def promoted_study(values: list[float | None], states: list[TrialState] | None = None) -> optuna.Study:
    """A destination study whose promoted trial of source rank i+1 scored values[i]."""
    study = optuna.create_study(direction="maximize")
    study.set_user_attr("parent", {"study": "src", "scale": "1k", "metric": "bleu", "top_k": len(values)})
    study.set_user_attr("spec", {"data": {"scale": "full"}, "metric": "bleu"})
    for rank, value in enumerate(values, start=1):
        state = (states or [TrialState.COMPLETE] * len(values))[rank - 1]
        study.add_trial(optuna.trial.create_trial(
            state=state, value=value if state == TrialState.COMPLETE else None, params={},
            distributions={}, user_attrs={"promoted_from": {"study": "src", "trial": 10 + rank},
                                          "source_rank": rank, "source_value": 20.0 - rank}))
    return study


def test_transfer_when_the_ranking_holds():
    t = transfer_report(promoted_study([30.0, 25.0, 20.0, 10.0]))
    assert t.finished == 4 and [r.rank for r in t.rows] == [1, 2, 3, 4]
    assert t.spearman == pytest.approx(1.0) and t.kendall == pytest.approx(1.0)
    assert t.reading.startswith("ranking held at full (Spearman ρ=1.00, Kendall τ=1.00)")
    assert "the 1k winner (trial 11) is rank 1 of 4 at full" in t.reading


def test_transfer_when_the_ranking_does_not_hold():
    values = [10.0, 30.0, 20.0, 25.0, 28.0]
    t = transfer_report(promoted_study(values))
    new_ranks = [r.rank for r in t.rows]
    assert new_ranks == [5, 1, 4, 3, 2]
    assert t.spearman == pytest.approx(stats.spearmanr([1, 2, 3, 4, 5], new_ranks).statistic)
    assert t.kendall == pytest.approx(stats.kendalltau([1, 2, 3, 4, 5], new_ranks).statistic)
    assert t.spearman < 0.3 and t.reading.startswith("ranking did not hold at full")


def test_transfer_waits_for_three_finished_trials_and_prefers_a_retry_that_finished():
    t = transfer_report(promoted_study([30.0, 20.0, None, None],
                                       [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING]))
    assert t.spearman is None and t.kendall is None and t.finished == 2
    assert t.reading == "2 of 4 promoted trials finished; the rank correlation needs at least 3"
    assert [r.state for r in t.rows] == ["COMPLETE", "COMPLETE", "PRUNED", "RUNNING"]
    # a dead worker's trial (FAIL) that was retried to completion counts once, as the retry
    study = promoted_study([30.0, 20.0, 10.0], [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL])
    study.add_trial(optuna.trial.create_trial(value=25.0, params={}, distributions={}, user_attrs={
        "promoted_from": {"study": "src", "trial": 13}, "source_rank": 3, "source_value": 17.0}))
    t = transfer_report(study)
    assert len(t.rows) == 3 and t.rows[2].trial == 3 and t.rows[2].rank == 2
    assert transfer_report(optuna.create_study()) is None
