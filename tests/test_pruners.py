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


def test_median_pruner_warmup_is_counted_in_evaluations():
    spec = build_spec(spec_with(lambda r: r.update(pruner={"type": "median", "n_warmup_evals": 3})))
    pruner = build_pruner(spec)
    assert isinstance(pruner, optuna.pruners.MedianPruner)
    assert pruner._n_warmup_steps == 3 * 20  # eval_every 20: the trial reports at training steps
