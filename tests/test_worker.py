"""The worker: real trials on the bundled sample; NaN and overfitting end trials, not the worker;
the budget holds across workers; a retried trial resumes from the dead trial's checkpoint."""

from __future__ import annotations

import copy
import warnings

import optuna
import pytest
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from typer.testing import CliRunner

from mt_tune.cli import app
from mt_tune.data import prepare
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
    "search": {"train.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True}},
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
    study = create(lambda r: r["search"]["train.lr"].update(high=1.0e30))
    # AdamW's first step moves every weight by about lr: at 1e30 the next forward pass
    # multiplies such weights together (norm gains by projections), past float32's 3.4e38, on
    # any CPU. (1e4 overflowed on one CPU and stayed finite on another.)
    study.enqueue_trial({"train.lr": 1.0e30})
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


def test_a_repeated_configuration_is_not_trained_again_and_its_neighbour_trains_instead(env):
    url, artifacts, create = env
    study = create(lambda r: r.update(search={"train.warmup_steps": {"type": "int", "low": 10, "high": 20,
                                                                     "step": 10}}))
    study.enqueue_trial({"train.warmup_steps": 10})
    study.enqueue_trial({"train.warmup_steps": 10})  # as TPE does when it exploits its best so far
    result = CliRunner().invoke(app, ["worker", "w", "--storage", url, "--artifacts", str(artifacts)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="w", storage=url)
    first, repeat, neighbour = study.trials
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert repeat.user_attrs["stop_reason"] == "repeat" and repeat.user_attrs["repeat_of"] == 0
    assert "steps" not in repeat.user_attrs and not (artifacts / "w" / "1").exists()  # never trained
    assert neighbour.params == {"train.warmup_steps": 20} and neighbour.user_attrs["steps"] == 20
    assert budget_used(study) == 2  # the budget of 2 trained two configurations
    assert "trial 1 repeats trial 0" in result.output and "worker done: 2 trials" in result.output
    assert "fail 1 (1 of them repeats, untrained)" in result.output


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
    Trainer(spec_cfg, artifacts / "w" / "0", prepare(spec_cfg.data), log=lambda *a: None).fit()
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


# --- failures: contained, recorded, and not repeated for ever ------------------------------


def test_a_systematic_error_stops_the_worker_after_three_failed_trials(env, monkeypatch):
    """Every trial fails the same way (a bug, a bad driver): the worker stops after
    budget.max_consecutive_failures of them with exit 1 and names the error; each FAIL trial
    keeps its traceback in its train.log and the first line in its `error` attr."""
    url, artifacts, create = env
    create(lambda r: r.update(budget={"trials": 6, "max_steps": 10}))

    def broken_driver(self):
        raise RuntimeError("CUDA driver version is insufficient\nsecond line")

    monkeypatch.setattr(Trainer, "fit", broken_driver)
    result = CliRunner().invoke(app, ["worker", "w", "--storage", url, "--artifacts", str(artifacts)])
    assert result.exit_code == 1, result.output
    assert "3 trials in a row failed" in result.output and "CUDA driver version is insufficient" in result.output
    assert "Traceback" not in result.output
    trials = optuna.load_study(study_name="w", storage=url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # 3 of the budget of 6: the rest not spent
    for t in trials:
        assert t.user_attrs["error"] == "RuntimeError: CUDA driver version is insufficient"
        log = (artifacts / "w" / str(t.number) / "train.log").read_text()
        assert "Traceback (most recent call last)" in log and "in broken_driver" in log


def test_the_failure_limit_is_a_flag_and_a_success_resets_the_count(env, monkeypatch):
    url, artifacts, create = env
    create(lambda r: r.update(budget={"trials": 4, "max_steps": 10, "max_consecutive_failures": 1}))
    real_fit, calls = Trainer.fit, []

    def fails_on_odd_calls(self):
        calls.append(1)
        if len(calls) % 2:
            raise RuntimeError("flaky")
        return real_fit(self)

    monkeypatch.setattr(Trainer, "fit", fails_on_odd_calls)
    # The spec allows 1 failure in a row; the flag allows 2: fail, ok, fail, ok runs all 4.
    summary = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None, max_consecutive_failures=2)
    assert summary["trials_run"] == 4 and summary["states"] == {"COMPLETE": 2, "PRUNED": 0, "FAIL": 2}
    with pytest.raises(UserError, match="--max-consecutive-failures: must be >= 1"):
        run_worker("w", url, max_consecutive_failures=0)


def test_a_vocabulary_too_large_for_the_scale_prunes_the_trial_not_the_worker(env):
    url, artifacts, create = env
    study = create(lambda r: r.update(search={"data.vocab_size": {"type": "categorical", "choices": [60000, 2000]}},
                                      budget={"trials": 2, "max_steps": 10}))
    study.enqueue_trial({"data.vocab_size": 60000})
    study.enqueue_trial({"data.vocab_size": 2000})
    summary = run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    too_big, fits = optuna.load_study(study_name="w", storage=url).trials
    assert too_big.state == TrialState.PRUNED and too_big.user_attrs["stop_reason"] == "invalid_config"
    assert "60000" in too_big.user_attrs["error"] or "too high" in too_big.user_attrs["error"].lower()
    assert fits.state == TrialState.COMPLETE
    assert summary["trials_run"] == 2


def test_an_out_of_memory_trial_frees_its_model_before_the_next_trial(env, monkeypatch):
    """The OOM trial ends PRUNED (oom) and nothing keeps its model alive: no exception context,
    no frame. Checked with a weak reference to the model, from inside the next trial."""
    import gc
    import weakref

    url, artifacts, create = env
    create(lambda r: r.update(search={}, budget={"trials": 2, "max_steps": 10}))
    real_update, models, alive_at_next_trial = Trainer._update, [], []

    def update(self):
        if not models:  # the first trial's first update
            models.append(weakref.ref(self.model))
            activations = torch.ones(256, 256, requires_grad=True) * 2  # noqa: F841 - held by the frame
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if len(models) == 1:
            gc.collect()
            alive_at_next_trial.append(models[0]() is not None)
            models.append(weakref.ref(self.model))
        return real_update(self)

    monkeypatch.setattr(Trainer, "_update", update)
    run_worker("w", url, artifacts=str(artifacts), log=lambda line: None)
    oom, fits = optuna.load_study(study_name="w", storage=url).trials
    assert oom.state == TrialState.PRUNED and oom.user_attrs["stop_reason"] == "oom"
    assert oom.user_attrs["error"].startswith("CUDA out of memory at step 0")
    assert fits.state == TrialState.COMPLETE
    assert alive_at_next_trial == [False]


def test_plain_workers_draw_from_their_own_streams_unless_asked_not_to(monkeypatch):
    import os
    import socket

    from mt_tune.search.samplers import STREAM_ENV
    from mt_tune.search.worker import sampler_stream

    monkeypatch.delenv(STREAM_ENV, raising=False)
    assert sampler_stream() == f"{socket.gethostname()}/{os.getpid()}"
    assert sampler_stream(seed_exact=True) is None
    monkeypatch.setenv(STREAM_ENV, "host-a/cuda:1")
    assert sampler_stream() == sampler_stream(seed_exact=True) == "host-a/cuda:1"


def test_two_plain_workers_with_one_seed_sample_different_trials(env, tmp_path):
    """Two `mt-tune worker` processes started by hand on one study (the spec's seed 7, a
    random sampler) draw different parameters; each one alone with --seed-exact repeats."""
    import subprocess
    import sys

    url, artifacts, create = env
    create(lambda r: r.update(sampler={"type": "random", "seed": 7}, budget={"trials": 2, "max_steps": 1}, metric="val_loss",
                              train={**SPEC["train"], "eval_every": 1, "bleu_sentences": 0, "keep_best_by": "val_loss"}))
    args = [sys.executable, "-m", "mt_tune.cli", "worker", "w", "--storage", url, "--artifacts", str(artifacts),
            "--n-trials", "1"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    lrs = [t.params["train.lr"] for t in optuna.load_study(study_name="w", storage=url).trials]
    assert len(lrs) == 2 and lrs[0] != lrs[1]


def test_tpe_keeps_the_constant_liar_on():
    """With several workers, TPE must treat running trials as taken (Optuna 5's default):
    pinned, so an upgrade that changes the default cannot turn it off unnoticed."""
    from mt_tune.search.samplers import build_sampler

    sampler = build_sampler(build_spec(copy.deepcopy(SPEC) | {"sampler": {"type": "tpe", "seed": 1}}))
    assert isinstance(sampler, optuna.samplers.TPESampler)
    assert sampler._constant_liar is True  # no public accessor; a rename fails here, loudly
