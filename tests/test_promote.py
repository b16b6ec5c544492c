"""Promotion across data scales: lineage, enqueued params, reuse, errors, ending with promoted
trials trained on the full sample and the transfer they show."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from scipy import stats

from mt_tune.errors import UserError
from mt_tune.search.notes import read_note
from mt_tune.search.promote import promote
from mt_tune.search.spec import build_spec, spec_from_study
from mt_tune.search.study import create_study, load_study
from mt_tune.search.transfer import transfer_report
from mt_tune.search.worker import run_worker
from cli_run import cli

DISTS = {"train.lr": FloatDistribution(1e-3, 1e-2, log=True), "model.ffn_dim": CategoricalDistribution([32, 64])}
# (lr, ffn_dim, chrF at 1k): ranks by value are trials 3, 0, 5, 1, 4, 2
SOURCE_TRIALS = [(2e-3, 32, 20.0), (3e-3, 64, 15.0), (1.5e-3, 32, 5.0), (6e-3, 64, 30.0), (8e-3, 32, 10.0),
                 (4e-3, 64, 18.0)]


def spec_dict(cache_dir) -> dict:
    return {
        "name": "small",
        "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 100, "cache_dir": str(cache_dir)},
        "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.0},
        "train": {"eval_every": 4, "bleu_sentences": 6, "warmup_steps": 2, "max_tokens": 1024, "log_every": 4,
                  "device": "cpu"},
        "search": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                   "model.ffn_dim": {"type": "categorical", "choices": [32, 64]}},
        "metric": "chrf",
        "pruner": {"type": "none"},
        "budget": {"trials": 6, "max_steps": 4, "max_minutes": 2},
    }


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")  # the sample's vocabulary and shards, built once


@pytest.fixture
def source(tmp_path, cache_dir):
    """A 1k-scale study made by mt-tune, with completed and pruned trials as the objective leaves them."""
    url = f"sqlite:///{tmp_path}/promote.db"
    study = create_study(build_spec(spec_dict(cache_dir)), storage_url=url)
    for lr, ffn, value in SOURCE_TRIALS:
        study.add_trial(optuna.trial.create_trial(value=value, params={"train.lr": lr, "model.ffn_dim": ffn},
                                                  distributions=DISTS, user_attrs={"stop_reason": "diverged"}))
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, params={"train.lr": 9e-3, "model.ffn_dim": 32},
                                              distributions=DISTS, intermediate_values={4: 50.0}))
    return url


def test_promote_enqueues_the_top_k_with_lineage(source):
    result = promote("small", "big", source, top_k=4, scale="full", steps_factor=2.5, log=lambda _: None)
    assert result.created and result.scale == "full"
    assert [e["source_trial"] for e in result.enqueued] == [3, 0, 5, 1]

    big = load_study("big", source)
    spec = spec_from_study(big)
    assert spec.scale is None and spec.data["scale"] == "full"
    assert spec.budget.max_steps == 10 and spec.budget.max_minutes == 5 and spec.budget.trials == 4
    assert spec.metric == "chrf" and [d.path for d in spec.search] == ["train.lr", "model.ffn_dim"]
    assert big.user_attrs["parent"] == {"study": "small", "scale": "1k", "metric": "chrf", "top_k": 4}

    waiting = big.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 4
    for rank, (trial, src) in enumerate(zip(waiting, (3, 0, 5, 1)), start=1):
        lr, ffn, value = SOURCE_TRIALS[src]
        assert trial.system_attrs["fixed_params"] == {"train.lr": lr, "model.ffn_dim": ffn}  # enqueued params
        assert trial.user_attrs["promoted_from"] == {"study": "small", "trial": src}
        assert trial.user_attrs["source_rank"] == rank and trial.user_attrs["source_value"] == value
    assert read_note(big).startswith("# big\n\nPromoted from **small** (scale 1k)")


def test_promote_again_reuses_the_study_and_skips_what_is_there(source):
    promote("small", "big", source, top_k=2, log=lambda _: None)
    again = promote("small", "big", source, top_k=3, scale="10k", steps_factor=4, log=lambda _: None)
    assert not again.created and again.scale == "full"  # the existing study keeps its scale
    assert again.already_there == [3, 0] and [e["source_trial"] for e in again.enqueued] == [5]
    big = load_study("big", source)
    assert len(big.get_trials()) == 3
    assert spec_from_study(big).budget.trials == 3  # the budget grew to cover every promoted trial


def test_promote_refuses_what_it_cannot_do(source, tmp_path, cache_dir):
    with pytest.raises(UserError, match="the destination must differ"):
        promote("small", "small", source, log=lambda _: None)
    with pytest.raises(UserError, match="no study named 'nope'"):
        promote("nope", "big", source, log=lambda _: None)
    with pytest.raises(UserError, match="--top-k: must be at least 1"):
        promote("small", "big", source, top_k=0, log=lambda _: None)
    with pytest.raises(UserError, match="--scale: expected a number of pairs"):
        promote("small", "big", source, scale="huge", log=lambda _: None)
    other = spec_dict(cache_dir)
    other["model"]["d_model"] = 64
    create_study(build_spec(dict(other, name="other")), storage_url=source)
    with pytest.raises(UserError, match=r"study 'other' exists with a spec that differs from 'small' in model\.d_model"):
        promote("small", "other", source, log=lambda _: None)
    empty = dict(spec_dict(cache_dir), name="empty")
    create_study(build_spec(empty), storage_url=source)
    with pytest.raises(UserError, match="'empty' has no completed trials to promote"):
        promote("empty", "big", source, log=lambda _: None)
    assert "big" not in [s.study_name for s in optuna.get_all_study_summaries(source)]


# --- on the sample: promoted trials trained at the full scale --------------------------------


def test_promoted_trials_train_on_the_full_sample_and_show_the_transfer(source, tmp_path, capsys):
    assert cli("study", "promote", "small", "--to", "full", "--top-k", "4", "--storage", source) == 0
    printed = capsys.readouterr().out
    assert "created study 'full' at scale full" in printed and "enqueued trial 3 of small (rank 1)" in printed
    summary = run_worker("full", source, device="cpu", artifacts=str(tmp_path / "artifacts"), log=lambda _: None)
    assert summary["trials_run"] == 4

    study = load_study("full", source)
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # each promoted trial trained its source's params on the full sample
        src = t.user_attrs["promoted_from"]["trial"]
        assert t.params == {"train.lr": SOURCE_TRIALS[src][0], "model.ffn_dim": SOURCE_TRIALS[src][1]}
        assert t.user_attrs["steps"] == 4 and t.user_attrs["scale"] in (None, "full")
        assert read_note(study, t).startswith(f"## Trial {t.number} · complete · chrf")  # written by the worker
    transfer = transfer_report(study)
    assert "## Scale transfer" in read_note(study) and transfer.reading in read_note(study)
    assert transfer.finished == 4 and sorted(r.rank for r in transfer.rows) == [1, 2, 3, 4]
    if transfer.spearman is not None:  # None only if all four trials tied
        ranks = [r.rank for r in transfer.rows]
        assert transfer.spearman == pytest.approx(stats.spearmanr([1, 2, 3, 4], ranks).statistic)

    capsys.readouterr()
    assert cli("study", "show", "full", "--storage", source) == 0
    shown = capsys.readouterr().out
    assert "scale transfer from small (1k → full)" in shown
    assert transfer.reading.split(" (")[0] in shown
