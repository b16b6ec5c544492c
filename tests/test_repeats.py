"""A suggestion that repeats a configuration the study has ends untrained and its nearest untried
neighbour is queued: the nearest-neighbour rule, and real Optuna studies in a real storage."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from test_launcher import data_cache, start_worker, tiny_spec  # noqa: F401 (data_cache: a fixture)

from mt_tune.search.repeats import (NEIGHBOUR_OF_ATTR, Repeat, end_if_repeat, nearest_untried, params_key,
                                    taken_keys)
from mt_tune.search.space import parse_space
from mt_tune.search.spec import build_spec
from mt_tune.search.storage import close_storages
from mt_tune.search.study import create_study

SPACE = parse_space({
    "model.d_model": {"type": "categorical", "choices": [512, 128, 256]},  # numbers: ordered by value
    "data.vocab_type": {"type": "categorical", "choices": ["unigram", "bpe"]},  # unordered
    "model.enc_layers": {"type": "int", "low": 1, "high": 5},
    "model.dropout": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.1},
    "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},  # continuous: kept
})
AT = {"model.d_model": 256, "data.vocab_type": "unigram", "model.enc_layers": 3, "model.dropout": 0.2,
      "train.lr": 3e-4}


def changed(config: dict) -> dict:
    return {k: v for k, v in config.items() if AT[k] != v}


def distance(config: dict) -> float:
    share = {"model.d_model": 1 / 2, "data.vocab_type": 1.0, "model.enc_layers": 1 / 4, "model.dropout": 1 / 4}
    steps = {"model.d_model": lambda a, b: abs([128, 256, 512].index(a) - [128, 256, 512].index(b)),
             "data.vocab_type": lambda a, b: int(a != b), "model.enc_layers": lambda a, b: abs(a - b),
             "model.dropout": lambda a, b: round(abs(a - b) / 0.1)}
    return sum(share[k] * steps[k](AT[k], v) for k, v in changed(config).items())


def test_the_nearest_untried_configuration_moves_one_step_of_the_shortest_share_of_a_span():
    # One step of enc_layers (1/4 of its span) or dropout (1/4) is nearer than one of d_model
    # (1/2 of 128..512) or another vocab_type (a whole span, unordered).
    first = nearest_untried(SPACE, AT, lambda p: False, seed=0)
    assert len(changed(first)) == 1 and (changed(first).keys() <= {"model.enc_layers", "model.dropout"})
    assert changed(first) in ({"model.enc_layers": 2}, {"model.enc_layers": 4}, {"model.dropout": 0.1},
                              {"model.dropout": 0.3})

    one_step = [{**AT, k: v} for k, v in (("model.enc_layers", 2), ("model.enc_layers", 4),
                                         ("model.dropout", 0.1), ("model.dropout", 0.3))]
    taken = {params_key(p) for p in one_step}
    second = nearest_untried(SPACE, AT, lambda p: params_key(p) in taken)
    assert distance(second) == pytest.approx(0.5)  # two quarter steps, or d_model's next value
    assert changed(second).get("data.vocab_type") is None  # another vocab_type is a whole span away
    assert second["train.lr"] == AT["train.lr"]  # a continuous value is never moved


def test_ties_are_broken_by_the_seed_not_by_the_order_of_dimensions():
    picks = {tuple(changed(nearest_untried(SPACE, AT, lambda p: False, seed=s)).items()) for s in range(40)}
    assert len(picks) == 4


def test_nothing_untried_means_none_and_a_condition_or_a_continuous_value_is_never_moved():
    space = parse_space({
        "model.d_model": {"type": "categorical", "choices": [128, 256]},
        "model.n_heads": {"type": "categorical", "choices": [2, 4], "when": {"model.d_model": [256]}},
    })
    at = {"model.d_model": 256, "model.n_heads": 4}
    assert nearest_untried(space, at, lambda p: False) == {"model.d_model": 256, "model.n_heads": 2}
    assert nearest_untried(space, at, lambda p: p["model.n_heads"] == 2) is None  # d_model decides n_heads
    assert nearest_untried(parse_space({"train.lr": {"type": "float", "low": 0.1, "high": 1.0}}),
                           {"train.lr": 0.5}, lambda p: False) is None
    huge = parse_space({"train.max_tokens": {"type": "int", "low": 1, "high": 10**9}})  # not listed value by value
    assert nearest_untried(huge, {"train.max_tokens": 4096}, lambda p: False) is None


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'r.db'}", study_name="r")


def suggest(trial: optuna.Trial) -> dict:
    return {d.path: d.suggest(trial) for d in SPACE}


def test_a_repeat_ends_untrained_and_its_queued_neighbour_is_the_next_trial(study):
    study.enqueue_trial(AT)
    study.enqueue_trial(AT)
    first = study.ask()
    end_if_repeat(first, SPACE, suggest(first))  # nothing to repeat: returns, the trial trains
    study.tell(first, 1.0)

    second = study.ask()
    params = suggest(second)
    with pytest.raises(Repeat, match=f"repeats trial {first.number}"):
        end_if_repeat(second, SPACE, params)
    study.tell(second, state=TrialState.FAIL)
    repeat = study.trials[second.number]
    assert repeat.user_attrs["stop_reason"] == "repeat" and repeat.user_attrs["repeat_of"] == first.number

    third = study.ask()
    assert third.user_attrs[NEIGHBOUR_OF_ATTR] == second.number
    neighbour = suggest(third)
    assert neighbour == repeat.user_attrs["queued"] and len(changed(neighbour)) == 1
    end_if_repeat(third, SPACE, neighbour)  # the neighbour is new: it trains


def test_a_queued_neighbour_counts_as_taken_before_it_runs(study):
    study.enqueue_trial(AT)
    trial = study.ask()
    suggest(trial)
    study.tell(trial, 1.0)
    repeat = study.ask()
    with pytest.raises(Repeat):
        end_if_repeat(repeat, SPACE, {**AT})
    study.tell(repeat, state=TrialState.FAIL)
    taken = taken_keys(study, but=-1)
    assert params_key(AT) in taken and params_key(study.trials[repeat.number].user_attrs["queued"]) in taken
    assert len(taken) == 2  # the FAIL repeat itself is not a configuration the study has


def test_two_workers_on_a_small_grid_train_every_configuration_once(tmp_path, data_cache):
    """Two real `mt-tune worker` processes, TPE on a grid of 6 configurations and a budget of
    6 trials: every configuration trains exactly once, whatever the sampler repeats."""
    url = f"sqlite:///{tmp_path}/grid.db"
    raw = tiny_spec(data_cache, trials=6, max_steps=4)
    raw["search"] = {"train.lr": {"type": "categorical", "choices": [1.0e-3, 2.0e-3, 3.0e-3]},
                     "train.warmup_steps": {"type": "int", "low": 2, "high": 4, "step": 2}}
    raw["sampler"] = {"type": "tpe", "seed": 1, "n_startup_trials": 2}
    create_study(build_spec(raw), storage_url=url)
    close_storages()
    workers = [start_worker(tmp_path, "--storage", url, "--artifacts", str(tmp_path / "artifacts")) for _ in range(2)]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    every = optuna.load_study(study_name="tiny", storage=url).get_trials()
    trained = [t for t in every if t.state == TrialState.COMPLETE]
    assert sorted(params_key(t.params) for t in trained) == sorted(
        params_key({"train.lr": lr, "train.warmup_steps": w}) for lr in (1.0e-3, 2.0e-3, 3.0e-3) for w in (2, 4))
    others = [t for t in every if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs.get("stop_reason") in ("repeat", "over_budget") or t.state == TrialState.WAITING
               for t in others), [(t.state, t.user_attrs) for t in others]
