"""Pruners: every pruner a spec names builds and runs, its warm-up counted in evaluations."""

from __future__ import annotations

import optuna
import pytest

from test_spec import spec_with

from mt_tune.search.pruners import build_pruner
from mt_tune.search.samplers import build_sampler
from mt_tune.search.spec import build_spec


@pytest.mark.parametrize("sampler", ["tpe", "random", "gp", "cmaes"])
@pytest.mark.parametrize("pruner", ["median", "successive_halving", "hyperband", "none"])
def test_every_sampler_and_pruner_builds_and_runs(sampler, pruner):
    spec = build_spec(spec_with(lambda r: r.update(sampler={"type": sampler, "seed": 3}, pruner={"type": pruner})))
    study = optuna.create_study(direction=spec.direction, sampler=build_sampler(spec), pruner=build_pruner(spec))

    def objective(trial):
        params = spec.suggest(trial)
        for step in (20, 40, 60):
            trial.report(params["train.lr"] * step, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return params["train.lr"]

    study.optimize(objective, n_trials=4)
    assert len(study.trials) == 4


def median_spec(**pruner):
    """A median pruner after one complete trial; impatient unless `patience` is given, so that
    the warm-up tests can report flat losses (a flat loss never stops improving in Optuna's
    sense: its recent values are not worse than its best)."""
    pruner = {"type": "median", "n_startup_trials": 1, "patience": None, **pruner}
    return build_spec(spec_with(lambda r: r.update(metric="val_loss", pruner=pruner)))


def evaluations_before_pruned(study: optuna.Study, losses: list[float], eval_every: int = 20) -> int | None:
    """Run one trial reporting `losses` at the training steps of its evaluations (as the trainer
    does); the evaluation at which it was pruned, or None if it ran to its end."""
    trial = study.ask()
    for n, loss in enumerate(losses, 1):
        trial.report(loss, n * eval_every)
        if trial.should_prune():
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return n
    study.tell(trial, losses[-1])
    return None


def study_of(spec) -> optuna.Study:
    return optuna.create_study(direction=spec.direction, sampler=optuna.samplers.RandomSampler(0),
                               pruner=build_pruner(spec))


def test_median_pruner_warmup_is_counted_in_evaluations():
    spec = median_spec(n_warmup_evals=3, warmup_fraction=0.0)
    assert spec.run_config().train.eval_every == 20  # the trial reports at steps 20, 40, ...
    study = study_of(spec)
    assert evaluations_before_pruned(study, [1.0] * 10) is None
    assert evaluations_before_pruned(study, [5.0] * 10) == 3


def test_the_warmup_grows_with_the_study_s_runs():
    """warmup_fraction 0.5: a worse trial runs half as many evaluations as the median complete
    trial before it can be pruned, however long the runs are; n_warmup_evals stays the floor."""
    spec = median_spec(n_warmup_evals=2, warmup_fraction=0.5)
    short, long = study_of(spec), study_of(spec)
    for length in (4, 10, 30):  # complete trials; the median runs 10 evaluations
        assert evaluations_before_pruned(short, [1.0] * length) is None
    for length in (40, 100, 300):  # the median runs 100
        assert evaluations_before_pruned(long, [1.0] * length) is None
    assert evaluations_before_pruned(short, [5.0] * 200) == 5
    assert evaluations_before_pruned(long, [5.0] * 200) == 50
    tiny = study_of(spec)
    assert evaluations_before_pruned(tiny, [1.0] * 2) is None
    assert evaluations_before_pruned(tiny, [5.0] * 20) == 2  # half of 2 is below the floor


def test_a_better_trial_past_the_warmup_goes_on():
    study = study_of(median_spec(n_warmup_evals=2, warmup_fraction=0.5))
    assert evaluations_before_pruned(study, [1.0] * 10) is None
    assert evaluations_before_pruned(study, [0.5] * 10) is None


def test_a_trial_below_the_median_is_pruned_once_it_stops_improving():
    """patience 1: below the median, a trial that sets a new best at every evaluation goes on
    (a slow starter); one that has set none in its last 2 evaluations is pruned."""
    study = study_of(median_spec(n_warmup_evals=0, warmup_fraction=0.0, patience=1))
    assert evaluations_before_pruned(study, [1.0 - 0.01 * n for n in range(10)]) is None  # the median trial
    slow = [5.0 - 0.3 * n for n in range(10)]  # worse than the median at every evaluation, still improving
    assert evaluations_before_pruned(study, slow) is None
    stalled = [5.0, 4.0, 4.5, 4.6, 4.7, 4.8]  # its best at evaluation 2; nothing new at 3 and 4
    assert evaluations_before_pruned(study, stalled) == 4


def test_without_patience_the_median_prunes_at_once():
    study = study_of(median_spec(n_warmup_evals=0, warmup_fraction=0.0, patience=None))
    assert evaluations_before_pruned(study, [1.0 - 0.01 * n for n in range(10)]) is None
    assert evaluations_before_pruned(study, [5.0 - 0.3 * n for n in range(10)]) == 1


def test_the_default_median_pruner_is_patient():
    spec = build_spec(spec_with(lambda r: r.update(metric="val_loss", pruner={"type": "median"})))
    assert spec.pruner.patience == 1
    assert isinstance(build_pruner(spec), optuna.pruners.PatientPruner)
