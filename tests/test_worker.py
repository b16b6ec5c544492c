"""The worker: real trials on the bundled sample; NaN and overfitting end trials, not the worker;
the budget holds across workers; a retried trial resumes from the dead trial's checkpoint."""

from __future__ import annotations

import copy
import warnings

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from typer.testing import CliRunner

from mt_tune.cli import app
from mt_tune.errors import UserError
from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from mt_tune.search.worker import budget_used, counts_toward_budget, run_worker
from mt_tune.train import Trainer

SPEC = {
    "name": "w",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.0},
    # one thread: on a busy 2-core machine two threads are several times slower
    "train": {"eval_every": 10, "bleu_sentences": 20, "max_tokens": 1024, "warmup_steps": 10, "log_every": 10,
              "threads": 1},
    "search": {"train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e4, "log": True}},
    "metric": "bleu",
    "pruner": {"type": "none"},
    "budget": {"trials": 2, "max_steps": 20},
}

# Trials made with ask/tell on a storage with heartbeats draw a harmless warning.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")


@pytest.fixture
def env(tmp_path):
    """(url, artifacts dir, a function that creates the study from SPEC with changes)."""
    url = f"sqlite:///{tmp_path}/w.db"
    cache = str(tmp_path.parent / "data-cache")  # shared by the tests of this module: one vocabulary

    def create(change=None, name="w"):
        raw = copy.deepcopy(SPEC)
        raw["data"]["cache_dir"] = cache
        if change:
            change(raw)
        return create_study(build_spec(raw), name=name, storage_url=url)

    return url, tmp_path / "artifacts", create


def test_nan_loss_is_pruned_and_the_worker_goes_on(env):
    url, artifacts, create = env
    study = create()
    # AdamW's steps are bounded by lr, so on this tiny fp32 model lr = 10 only makes the loss
    # huge (~2,000, finite); 1e4 overflows to NaN within ten updates.
    study.enqueue_trial({"train.lr": 1.0e4})
    study.enqueue_trial({"train.lr": 3.0e-3})
    result = CliRunner().invoke(app, ["worker", "w", "--storage", url, "--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    nan, good = optuna.load_study(study_name="w", storage=url).trials
    assert nan.state == TrialState.PRUNED and nan.user_attrs["stop_reason"] == "nan_loss"
    assert "lower train.lr" in nan.user_attrs["error"]
    assert not (artifacts / "w" / "0").exists()  # a pruned trial's checkpoints are removed
    assert good.state == TrialState.COMPLETE and good.user_attrs["stop_reason"] == "max_steps"
    assert (artifacts / "w" / "1" / "best.pt").is_file()
    lines = [line for line in result.output.splitlines() if line.startswith("trial")]
    assert "pruned" in lines[0] and "nan_loss" in lines[0]
    assert "complete" in lines[1] and "max_steps" in lines[1] and "20 steps" in lines[1]
    assert "worker done: 2 trials" in result.output


@pytest.mark.slow
def test_all_overfit_study_still_has_a_best_trial(env):
    """1k pairs, a step budget far past overfitting: every trial stops diverged, the study has
    an answer, and each trial's value is its best BLEU (at best_step, kept in best.pt)."""
    url, artifacts, create = env
    create(lambda r: r.update(search={"train.lr": {"type": "float", "low": 2.0e-3, "high": 6.0e-3, "log": True}},
                              budget={"trials": 3, "max_steps": 5000},
                              stopping={"patience": 2, "min_delta": 0.05}))
    summary = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    assert summary["trials_run"] == 3 and summary["states"]["COMPLETE"] == 3
    study = optuna.load_study(study_name="w", storage=url)
    for t in study.trials:
        assert t.user_attrs["stop_reason"] == "diverged" and t.user_attrs["steps"] < 5000
        assert t.value == pytest.approx(max(row[3] for row in t.user_attrs["history"]), abs=1e-4)
        assert (artifacts / "w" / str(t.number) / "best.pt").is_file()
    assert study.best_trial.value == summary["best_value"]


def test_budget_is_shared_by_workers(env):
    url, artifacts, create = env
    create(lambda r: r.update(search={"train.lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-3}},
                              budget={"trials": 2, "max_steps": 10}))
    first = run_worker("w", url, n_trials=1, artifacts=str(artifacts), log=lambda line: None)
    second = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    third = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    assert (first["trials_run"], second["trials_run"], third["trials_run"]) == (1, 1, 0)
    assert len(optuna.load_study(study_name="w", storage=url).trials) == 2


def test_budget_counts_running_trials_but_not_retried_or_surplus_ones(env):
    url, _artifacts, create = env
    study = create(lambda r: r.update(search={}))
    running = study.ask()  # another worker's trial in progress
    failed = study.ask()
    study.tell(failed, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[failed.number])  # queued again
    surplus = study.ask()
    surplus.set_user_attr("stop_reason", "over_budget")
    study.tell(surplus, state=TrialState.FAIL)
    counted = [t.number for t in counts_toward_budget(study.get_trials())]
    assert counted == [running.number]
    assert budget_used(study) == 1


def test_retried_trial_resumes_from_the_dead_trials_checkpoint(env):
    url, artifacts, create = env
    study = create(lambda r: r.update(search={}, budget={"trials": 2, "max_steps": 30}))
    # Trial 0's worker got to step 20 (last.pt written there) and died.
    dead = study.ask()
    spec_cfg = build_spec({**copy.deepcopy(SPEC), "search": {}, "data": study.user_attrs["spec"]["data"],
                           "budget": {"trials": 2, "max_steps": 20}}).run_config()
    Trainer(spec_cfg, artifacts / "w" / "0", log=lambda *a: None).fit()
    study.tell(dead, state=TrialState.FAIL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, study.trials[0])

    summary = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    assert summary["trials_run"] == 2  # the retry, then one new trial: the FAIL is not counted
    retry = optuna.load_study(study_name="w", storage=url).trials[1]
    assert retry.state == TrialState.COMPLETE
    assert retry.user_attrs["resumed_from_step"] == 20 and retry.user_attrs["steps"] == 30
    assert retry.user_attrs["artifacts"].endswith("w/0")  # it continued in the dead trial's directory
    assert [row[0] for row in retry.user_attrs["history"]] == [10, 20, 30]  # earlier evaluations replayed
    assert sorted(retry.intermediate_values) == [10, 20, 30]


def test_worker_errors_are_user_errors(env):
    url, artifacts, create = env
    create()
    with pytest.raises(UserError, match="no study named 'nope' .*studies there: w"):
        run_worker("nope", url, artifacts=str(artifacts))
    with pytest.raises(UserError, match="--device: expected auto, cpu, cuda or cuda:N"):
        run_worker("w", url, device="tpu")
    with pytest.raises(UserError, match="--n-trials: must be >= 1"):
        run_worker("w", url, n_trials=0)


def test_a_trial_that_finds_the_budget_taken_ends_without_training(env, monkeypatch):
    """Two workers both saw one trial left; the later one's trial ends at once, FAIL over_budget."""
    import mt_tune.search.worker as worker

    url, artifacts, create = env
    study = create(lambda r: r.update(budget={"trials": 1, "max_steps": 10}))
    study.ask()  # the other worker's trial, running
    # This worker's check ran just before the other worker asked: it saw a free slot.
    real_budget_used = worker.budget_used
    monkeypatch.setattr(worker, "budget_used", lambda s: 0 if len(s.trials) < 2 else real_budget_used(s))
    summary = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    surplus = optuna.load_study(study_name="w", storage=url).trials[1]
    assert surplus.state == TrialState.FAIL and surplus.user_attrs["stop_reason"] == "over_budget"
    assert "history" not in surplus.user_attrs and not (artifacts / "w" / "1").exists()
    assert summary["trials_run"] == 0
    assert budget_used(study) == 1  # the surplus trial does not count
