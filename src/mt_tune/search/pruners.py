"""The Optuna pruner a spec names (`pruner: {type: median}`).

Trials report their metric at the training step of each evaluation, so the pruners' resources
and warmups, given in the spec as numbers of evaluations, are converted to steps here. The
median pruner is patient by default: it prunes a trial below the median only once that trial
has stopped improving.
"""

from __future__ import annotations

import statistics
import warnings

import optuna
from optuna.trial import FrozenTrial, TrialState

from mt_tune.search.spec import StudySpec


class GrowingWarmupPruner(optuna.pruners.BasePruner):
    """Optuna's median pruner, whose warm-up also grows with the study's runs: a trial is not
    pruned before it has run `fraction` of the steps of the median complete trial (0: a fixed
    warm-up, Optuna's median pruner as it is).

    A fixed warm-up of a few evaluations fits one run length only. Real NMT runs last from a
    dozen checkpoints to hundreds (Zhang & Duh's tables: medians 17-231), and the configurations
    that end best are often the slow starters; two checkpoints into a 200-checkpoint run the
    median prunes nearly every trial, good ones among them."""

    def __init__(self, n_startup_trials: int, n_warmup_steps: int, fraction: float):
        self.median = optuna.pruners.MedianPruner(n_startup_trials=n_startup_trials, n_warmup_steps=n_warmup_steps)
        self.fraction = fraction

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        if self.fraction > 0:
            ends = [t.last_step for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                    if t.last_step is not None]
            if ends and step < self.fraction * statistics.median(ends):
                return False
        return self.median.prune(study, trial)


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    p = spec.pruner
    eval_every = spec.run_config().train.eval_every
    if p.type == "median":
        median = GrowingWarmupPruner(p.n_startup_trials, p.n_warmup_evals * eval_every, p.warmup_fraction)
        # Patience: a trial below the median that still sets new bests is a slow starter, not a
        # bad one. On Zhang & Duh's tables (benchmarks/nmt_tables.py) the best sw-en configurations
        # start slowly, and the impatient median pruned them in 46 of 50 studies.
        if p.patience is None:
            return median
        with warnings.catch_warnings():  # marked experimental since Optuna 2.8; nothing actionable
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(median, patience=p.patience)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource_evals * eval_every,
                                                      reduction_factor=p.reduction_factor)
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource_evals * eval_every,
                                              max_resource=spec.run_config().train.max_steps,
                                              reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()
