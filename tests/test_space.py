"""The search space: each dimension checked on its own and against the fixed values, sampled
under its conditions, edited by `search.*` overrides."""

from __future__ import annotations

import copy

import optuna
import pytest

from mt_tune.config import SECTIONS
from mt_tune.errors import ConfigError
from mt_tune.search.space import check_space, parse_space, possible_values, sample, split_search_overrides

SECTIONS_FIXED = {"data": {"format": "sample"}, "model": {"d_model": 64, "n_heads": 2, "ffn_dim": 128},
                  "train": {"max_steps": 100}}
SEARCH = {
    "train.lr": {"type": "float", "low": 1.0e-4, "high": 2.0e-3, "log": True},
    "model.d_model": {"type": "categorical", "choices": [64, 128]},
    "model.n_heads": {"type": "categorical", "choices": [4, 8], "when": {"model.d_model": 128}},
    "model.enc_layers": {"type": "int", "low": 1, "high": 3},
}


def fixed(path: str):
    section, _, name = path.partition(".")
    return SECTIONS_FIXED[section].get(name, getattr(SECTIONS[section](), name))


def checked_space(search: dict):
    space = parse_space(search)
    check_space(space, SECTIONS_FIXED, fixed)
    return space


def search_with(change) -> dict:
    raw = copy.deepcopy(SEARCH)
    change(raw)
    return raw


@pytest.mark.parametrize("change, expected", [
    (lambda r: r["train.lr"].update(hgih=1), "search.train.lr.hgih: unknown key (did you mean 'high'?)"),
    # wrong types
    (lambda r: r["train.lr"].update(low="tiny"), "search.train.lr.low: expected a number"),
    (lambda r: r["train.lr"].update(type="flaot"), "search.train.lr.type: 'flaot' is not one of float, int, "
                                                   "categorical (did you mean 'float'?)"),
    (lambda r: r.update({"model.enc_layers": {"type": "float", "low": 1, "high": 3}}),
     "search.model.enc_layers.type: model.enc_layers takes int values"),
    (lambda r: r.update({"model.enc_layers": {"type": "int", "low": 1.5, "high": 3}}),
     "search.model.enc_layers.low: an int dimension needs integers"),
    (lambda r: r.update({"model.norm": {"type": "categorical", "choices": ["pre", "middle"]}}),
     "search.model.norm.choices[1]: 'middle' is not one of pre, post"),
    # ranges
    (lambda r: r["train.lr"].update(low=3e-3), "search.train.lr: low (0.003) must be below high (0.002)"),
    (lambda r: r["train.lr"].update(low=0.0), "search.train.lr.low: log: true needs low > 0"),
    (lambda r: r.update({"model.dropout": {"type": "float", "low": 0.1, "high": 1.5}}),
     "search.model.dropout: value 1.5 is not valid: model.dropout: must be in [0, 1)"),
    (lambda r: r.update({"model.d_model": {"type": "categorical", "choices": []}}),
     "search.model.d_model.choices: empty"),
    # paths that name no field, or fields the study itself sets
    (lambda r: r.update({"model.d_modle": {"type": "int", "low": 1, "high": 2}}),
     "search.model.d_modle: 'model.d_modle' names no config field (did you mean 'd_model'?)"),
    (lambda r: r.update({"optim.lr": {"type": "int", "low": 1, "high": 2}}),
     "search.optim.lr: 'optim.lr' names no config field"),
    (lambda r: r.update({"data.scale": {"type": "categorical", "choices": ["1k", "10k"]}}),
     "search.data.scale: cannot be searched"),
    # conditions
    (lambda r: r["model.n_heads"].update(when={"model.d_modl": 128}),
     "search.model.n_heads.when.model.d_modl: 'model.d_modl' names no config field"),
    (lambda r: r["train.lr"].update(when={"model.enc_layers": 2}),
     "search.train.lr.when.model.enc_layers: model.enc_layers is searched below train.lr"),
    # heads that do not divide the width, for some combination
    (lambda r: r["model.n_heads"].update(choices=[4, 6]), "model.n_heads 6 does not divide model.d_model 128"),
    (lambda r: (r["model.n_heads"].pop("when"), r["model.d_model"].update(choices=[64, 100])),
     "model.n_heads 8 does not divide model.d_model 100"),
])
def test_bad_dimension_names_the_key(change, expected):
    with pytest.raises(ConfigError) as info:
        checked_space(search_with(change))
    assert expected in str(info.value)


def test_search_must_be_a_mapping():
    with pytest.raises(ConfigError, match="search: expected a mapping of field path -> distribution"):
        parse_space([1, 2])
    assert parse_space(None) == []


def test_conditional_dimension_is_sampled_only_when_its_condition_holds():
    space = checked_space(copy.deepcopy(SEARCH))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    widths = set()
    for _ in range(30):
        params = sample(space, study.ask(), fixed)
        widths.add(params["model.d_model"])
        assert ("model.n_heads" in params) == (params["model.d_model"] == 128)
    assert widths == {64, 128}


def test_possible_values_include_the_fixed_one_only_where_a_condition_can_fail():
    space = checked_space(copy.deepcopy(SEARCH))
    assert possible_values(space, "model.d_model", fixed) == [64, 128]  # always sampled
    assert possible_values(space, "model.n_heads", fixed) == [4, 8, 2]  # 2: fixed, where d_model is 64
    assert possible_values(space, "model.enc_layers", fixed) == [1, 2, 3]
    assert possible_values(space, "train.warmup_steps", fixed) == [400]  # not searched: the default


def test_search_overrides_edit_the_space_and_leave_the_rest():
    raw = {"search": copy.deepcopy(SEARCH)}
    rest = split_search_overrides(raw, ["budget.trials=7", "search.train.lr.high=1.0e-2",
                                        "search.model.enc_layers=null",
                                        "search.model.dropout={type: float, low: 0.0, high: 0.3}",
                                        "search.model.n_heads.when.model.d_model=[128]"])
    assert rest == ["budget.trials=7"]
    search = raw["search"]
    assert search["train.lr"]["high"] == 1e-2 and "model.enc_layers" not in search
    assert search["model.dropout"] == {"type": "float", "low": 0.0, "high": 0.3}
    assert search["model.n_heads"]["when"] == {"model.d_model": [128]}
    with pytest.raises(ConfigError, match="expected search.section.field.key=value"):
        split_search_overrides(raw, ["search.train.lr.low.x=1"])
