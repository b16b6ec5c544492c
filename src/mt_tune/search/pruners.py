"""The Optuna pruner a spec names (`pruner: {type: median}`).

Trials report their metric at the training step of each evaluation, so the pruners' resources
and warmups, given in the spec as numbers of evaluations, are converted to steps here.
"""

from __future__ import annotations

import optuna

from mt_tune.search.spec import StudySpec


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    eval_every = spec.run_config().train.eval_every
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials,
                                           n_warmup_steps=p.n_warmup_evals * eval_every)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource_evals * eval_every,
                                                      reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource_evals * eval_every,
                                              max_resource=spec.run_config().train.max_steps,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()
