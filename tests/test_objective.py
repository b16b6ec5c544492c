"""The trial objective: the divergence stop (synthetic curves and a real run), reporting, pruning."""

from __future__ import annotations

import copy

import optuna
import pytest
import torch

from mt_tune.search.objective import DivergenceStop, Objective, TrialHook
from mt_tune.search.spec import build_spec
from mt_tune.search.storage import open_storage
from mt_tune.search.study import create_study
from mt_tune.train import EvalResult, StopTraining

# The shape measured on the bundled sample: validation loss bottoms out at the 5th evaluation
# and rises, while BLEU keeps climbing until the 12th and then stays flat.
LOSS = [5.0, 4.0, 3.5, 3.2, 3.1, 3.15, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9, 4.0, 4.1, 4.2]
BLEU = [0.5, 2.0, 4.0, 6.0, 7.0, 7.5, 8.0, 9.0, 10.0, 11.0, 12.0, 12.5, 12.4, 12.3, 12.5, 12.2, 12.1]


def first_stop(on: str, patience: int = 3, min_delta: float = 0.0) -> int | None:
    """1-based evaluation at which the rule stops the trial, or None."""
    rule = DivergenceStop(patience, min_delta, on)
    for i, (loss, bleu) in enumerate(zip(LOSS, BLEU), start=1):
        if rule.update(loss, bleu):
            return i
    return None


def test_loss_alone_stops_while_bleu_still_climbs():
    assert first_stop("loss") == 5 + 3  # 3 evaluations after the loss minimum
    assert max(BLEU) - BLEU[first_stop("loss") - 1] == 3.5  # it would have thrown away 3.5 BLEU


def test_both_stops_only_when_neither_improves():
    assert first_stop("both") == 12 + 3  # 12.5 at eval 15 only ties the best: not an improvement
    assert first_stop("metric") == 12 + 3
    assert first_stop("none") is None


def test_min_delta_ignores_tiny_improvements():
    rule = DivergenceStop(patience=2, min_delta=0.5, on="metric")
    assert not rule.update(1.0, 10.0)
    assert not rule.update(1.0, 10.3)  # +0.3: stale 1
    assert rule.update(1.0, 10.4)  # +0.4 over the best that counted: stale 2 -> stop
    rule = DivergenceStop(patience=2, min_delta=0.5, on="metric")
    for bleu in (10.0, 10.3, 10.6, 11.2):  # 10.6 is +0.6 over 10.0: counts
        assert not rule.update(1.0, bleu)


def test_the_patience_grows_with_the_run():
    """A long run's plateaus are longer: with patience 3 and a fraction of 0.2, a run that last
    improved at its 15th evaluation stops at its 19th (stale 4 >= ceil(0.2 * 19)), not its 18th;
    early in a run the fixed patience holds."""
    def stop_at(fraction: float, improving: int) -> int:
        rule = DivergenceStop(3, 0.0, "loss", patience_fraction=fraction)
        for n in range(1, 100):
            if rule.update(10.0 - min(n, improving), None):
                return n
        raise AssertionError("never stopped")

    assert stop_at(0.0, 15) == 18
    assert stop_at(0.2, 15) == 19
    assert stop_at(0.2, 5) == stop_at(0.0, 5) == 8  # ceil(0.2 * 8) = 2 < 3
    assert stop_at(0.2, 100 - 60) == 40 + 10  # improved until 40: stale 10 >= ceil(0.2 * 50)


def test_the_default_stops_an_early_overfit_at_once_and_spares_a_late_plateau():
    """The spec's defaults (patience 1, fraction 0.2): early in a run the first evaluation
    without a new best of either loss or metric stops it; 20 evaluations in, 3 stale ones do not."""
    s = build_spec({k: v for k, v in SPEC.items() if k != "stopping"}, check_files=False).stopping
    assert (s.patience, s.patience_fraction, s.divergence_on) == (1, 0.2, "both")

    def rule():
        return DivergenceStop.from_spec(s)

    early = rule()
    assert [early.update(loss, bleu) for loss, bleu in [(5.0, 1.0), (4.0, 2.0), (4.5, 2.0)]] == [False, False, True]
    kept = rule()
    assert not kept.update(5.0, 1.0) and not kept.update(5.5, 1.5)  # the metric alone improving keeps it
    late = rule()
    assert not any(late.update(10.0 - n, None) for n in range(20))
    assert not any(late.update(20.0, None) for _ in range(3))  # ceil(0.2 * 23) = 5 > 3
    assert any(late.update(20.0, None) for _ in range(3))


def test_a_spec_refuses_a_patience_fraction_outside_0_1():
    from mt_tune.errors import ConfigError
    from mt_tune.search.spec import build_spec

    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ConfigError, match="stopping.patience_fraction"):
            build_spec(dict(SPEC, stopping={"patience_fraction": bad}), check_files=False)


def result(step: int, loss: float, bleu: float | None) -> EvalResult:
    return EvalResult(step=step, val_loss=loss, val_loss_per_char=loss / 2, bleu=bleu, chrf=None if bleu is None
                      else bleu * 2, lr=1e-3, train_loss=loss, tokens_per_s=1000.0, elapsed_s=float(step))


SPEC = {
    "name": "obj",
    "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 100},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.0},
    "train": {"eval_every": 10, "bleu_sentences": 20, "max_tokens": 1024, "warmup_steps": 10, "log_every": 10,
              "threads": 1},  # one thread: on a busy 2-core machine two threads are several times slower
    "search": {"train.lr": {"type": "float", "low": 1.0e-3, "high": 5.0e-3, "log": True}},
    "metric": "bleu",
    "pruner": {"type": "none"},
    "stopping": {"patience": 3},
    "budget": {"trials": 3, "max_steps": 100},
}


def make_spec(change=None):
    raw = copy.deepcopy(SPEC)
    if change:
        change(raw)
    return build_spec(raw)


def test_hook_reports_metric_records_history_and_stops_diverged():
    spec = make_spec()
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    hook = TrialHook(trial, spec)
    with pytest.raises(StopTraining) as stop:
        for i, (loss, bleu) in enumerate(zip(LOSS, BLEU), start=1):
            hook(None, result(10 * i, loss, bleu))
    assert stop.value.reason == "diverged"
    assert hook.last_step == 150
    study.tell(trial, hook.best()[0])
    frozen = study.trials[0]
    assert frozen.intermediate_values[120] == 12.5  # the study's metric, reported at the training step
    assert frozen.user_attrs["history"][4] == [50, 3.1, 1.55, 7.0, 14.0]  # loss and BLEU both recorded
    assert hook.best() == (12.5, 120)  # the first step that reached the best value


def test_hook_prunes_a_trial_worse_than_its_peers():
    # Impatient, so that a single evaluation can be judged (the patient default waits for a stall)
    spec = make_spec(lambda r: r.update(pruner={"type": "median", "n_startup_trials": 2, "n_warmup_evals": 0,
                                                "patience": None}))
    from mt_tune.search.pruners import build_pruner

    study = optuna.create_study(direction="maximize", pruner=build_pruner(spec))
    for value in (10.0, 11.0):
        good = study.ask()
        for step in (10, 20, 30):
            good.report(value, step)
        study.tell(good, value)
    trial = study.ask()
    hook = TrialHook(trial, spec)
    with pytest.raises(optuna.TrialPruned):
        hook(None, result(10, 5.0, 1.0))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """One real trial: tiny model, 1k pairs, a step budget far past the point of overfitting."""
    tmp = tmp_path_factory.mktemp("objective")
    spec = make_spec(lambda r: (r["data"].update(cache_dir=str(tmp / "cache")),
                                r["train"].update(lr=3e-3),
                                r.update(search={}, budget={"trials": 1, "max_steps": 5000},
                                         stopping={"patience": 2, "min_delta": 0.05})))
    url = f"sqlite:///{tmp}/s.db"
    study = create_study(spec, storage_url=url)
    objective = Objective(spec, "obj", open_storage(url), artifacts=tmp / "artifacts")
    study.optimize(objective, n_trials=1)
    return study.trials[0], tmp / "artifacts" / "obj" / "0"


def test_real_run_stops_diverged_with_its_best_value_and_checkpoint(real_run):
    trial, out_dir = real_run
    a = trial.user_attrs
    assert trial.state == optuna.trial.TrialState.COMPLETE
    assert a["stop_reason"] == "diverged" and a["steps"] < 5000
    assert trial.value == a["best_value"] == a["bleu"]
    assert a["best_step"] <= a["steps"]
    history = a["history"]
    assert len(history) == a["steps"] // 10 and all(row[1] is not None and row[3] is not None for row in history)
    assert max(row[3] for row in history) == pytest.approx(trial.value, abs=1e-4)
    ckpt = torch.load(out_dir / "best.pt", weights_only=True, map_location="cpu")
    assert int(ckpt["step"]) == a["best_step"]  # best.pt is the checkpoint of the trial's value
    for key in ("scale", "n_params", "tokens_per_s", "peak_memory", "device", "wall_s", "chrf", "val_loss"):
        assert key in a, key
    assert a["scale"] == "1k" and a["device"] == "cpu" and a["n_params"] > 0


def test_a_sampled_combination_that_cannot_run_is_pruned_invalid_config(tmp_path):
    """share_embeddings needs a joint vocabulary: each value is valid alone, the pair is not."""
    spec = make_spec(lambda r: r.update(search={"data.joint_vocab": {"type": "categorical", "choices": [True, False]}}))
    url = f"sqlite:///{tmp_path}/s.db"
    study = create_study(spec, storage_url=url)
    study.enqueue_trial({"data.joint_vocab": False})
    study.optimize(Objective(spec, "obj", open_storage(url), artifacts=tmp_path / "artifacts"), n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.user_attrs["stop_reason"] == "invalid_config"
    assert "model.share_embeddings: needs data.joint_vocab: true" in trial.user_attrs["error"]


def test_predicted_oom_is_judged_against_free_memory_and_says_so():
    from mt_tune.search.objective import USABLE_GPU_FRACTION, oom_reason

    gib = 2**30
    # Fits the card (80 GiB) but not what another process left free (8 GiB): pruned.
    reason = oom_reason(10 * gib, 8 * gib, 80 * gib, "cuda:0")
    assert reason is not None and "8.00 GiB free on cuda:0" in reason and "80.00 GiB total" in reason
    assert oom_reason(int(USABLE_GPU_FRACTION * 8 * gib), 8 * gib, 80 * gib, "cuda:0") is None
