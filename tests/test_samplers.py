"""Sampler seeds: reproducible for one process, distinct across worker processes."""

import optuna

from mt_tune.search.samplers import worker_seed


def test_a_lone_process_keeps_the_spec_seed():
    assert worker_seed(7, stream="") == 7
    assert worker_seed(None, stream="host/cpu:1") is None


def test_each_worker_stream_gets_its_own_seed_and_its_own_first_trial():
    seeds = {worker_seed(7, stream=f"host-a/cpu:{i}") for i in range(4)} | {worker_seed(7, stream="host-b/cpu:0")}
    assert len(seeds) == 5
    assert worker_seed(7, stream="host-a/cpu:0") == worker_seed(7, stream="host-a/cpu:0")

    def first_lr(seed):
        study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=seed))
        return study.ask().suggest_float("lr", 1e-4, 1e-2, log=True)

    assert len({first_lr(s) for s in seeds}) == 5
