"""The Optuna sampler a spec names (`sampler: {type: tpe, seed: 1}`)."""

from __future__ import annotations

import os
import warnings
import zlib

import optuna

from mt_tune.search.spec import StudySpec


def startup_trials(spec: StudySpec) -> int:
    """Random trials before a model-based sampler: the spec's value, else a third of the budget
    (at least 2, at most 10) so that small studies still get some model-based trials."""
    if spec.sampler.n_startup_trials is not None:
        return spec.sampler.n_startup_trials
    return max(2, min(10, spec.budget.trials // 3))


STREAM_ENV = "MT_TUNE_SAMPLER_STREAM"


def worker_seed(seed: int | None, stream: str | None = None) -> int | None:
    """The spec's seed, made distinct per worker process.

    Workers that share a study and a seed would draw the same start-up trials; the launcher
    names each process's stream (host and slot) in $MT_TUNE_SAMPLER_STREAM, and the seed is
    mixed with it. A process run on its own (no stream) keeps the spec's seed exactly."""
    stream = stream if stream is not None else os.environ.get(STREAM_ENV)
    if seed is None or not stream:
        return seed
    return zlib.crc32(f"{seed}/{stream}".encode()) & 0x7FFFFFFF


def build_sampler(spec: StudySpec, stream: str | None = None) -> optuna.samplers.BaseSampler:
    seed, kind = worker_seed(spec.sampler.seed, stream), spec.sampler.type
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        # `group` and the GP sampler are marked experimental; the warning says nothing actionable.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "tpe":
            # group=True lets multivariate TPE model conditional spaces instead of falling back to
            # independent sampling for every dimension that is not always present.
            return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup_trials(spec),
                                              group=spec.has_conditions)
        if kind == "gp":
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup_trials(spec))
        # CMA-ES handles numbers only; categorical dimensions are sampled at random.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=startup_trials(spec),
                                            independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                                            warn_independent_sampling=False)
