"""Warm start: a spec's search_start entries and `study create --start-from`, validated against the space and queued."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from cli_run import cli as run_cli
from test_spec import BASE, REPO, error_of, spec_with
from test_study import START, spec_file

from mt_tune.config import load_run_config
from mt_tune.errors import ConfigError
from mt_tune.search.spec import StudySpec, build_spec, load_spec, spec_from_study

# Trials made with ask/tell on a storage with heartbeats draw a harmless warning.
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used:UserWarning")


# --- search_start: configurations tried first ---------------------------------------------


@pytest.mark.parametrize("path", sorted(p for p in (REPO / "studies").glob("*.yaml") if p.name != "baseline.yaml"))
def test_shipped_specs_start_from_the_baseline_where_it_lies_in_their_space(path):
    raw = yaml.safe_load(path.read_text())
    spec = build_spec(copy.deepcopy(raw), check_files=False)
    baseline = load_run_config(REPO / "studies" / "baseline.yaml")
    value = {d.path: getattr(getattr(baseline, d.path.split(".")[0]), d.path.split(".")[1]) for d in spec.search}
    first = spec.search_start[0]
    assert first == {p: value[p] for p in first}
    for left_out in set(value) - set(first):  # only where the baseline's value is outside the space
        raw["search_start"] = [{**first, left_out: value[left_out]}]
        with pytest.raises(ConfigError, match=rf"search_start\[0\]\.{re.escape(left_out)}: "):
            build_spec(copy.deepcopy(raw), check_files=False)


def with_start(*entries, change=None) -> dict:
    raw = spec_with(change or (lambda r: None))
    raw["search_start"] = list(entries)
    return raw


@pytest.mark.parametrize("raw, expected", [
    # shape
    (spec_with(lambda r: r.update(search_start={"train.lr": 1e-3})), "search_start: expected a list of configurations"),
    (with_start(1e-3), "search_start[0]: expected a mapping of searched field -> value"),
    (with_start({"train.lr": 1e-3}, {}), "search_start[1]: expected a mapping of searched field -> value"),
    # fields that are not searched
    (with_start({"model.dropout": 0.1}), "search_start[0].model.dropout: not a searched field (its value is fixed in this spec); searched: "
                                         "train.lr, model.d_model, model.n_heads, model.enc_layers"),
    (with_start({"train.lrr": 1e-3}), "search_start[0].train.lrr: not a searched field (did you mean 'train.lr'?)"),
    # values outside their dimension
    (with_start({"train.lr": 1e-3}, {"train.lr": 0.1}), "search_start[1].train.lr: 0.1 is outside [0.0001, 0.002]"),
    (with_start({"train.lr": "fast"}), "search_start[0].train.lr: expected a number, got 'fast'"),
    (with_start({"train.lr": -1.0}), "search_start[0].train.lr: -1 is not > 0, as a log-scale dimension needs"),
    (with_start({"train.lr": float("nan")}), "search_start[0].train.lr: expected a finite number"),
    (with_start({"model.d_model": 96}), "search_start[0].model.d_model: 96 is not one of the choices 64, 128"),
    (with_start({"model.enc_layers": 4}), "search_start[0].model.enc_layers: 4 is outside [1, 3]"),
    (with_start({"model.enc_layers": 2.5}), "search_start[0].model.enc_layers: expected an integer, got 2.5"),
    (with_start({"model.enc_layers": True}), "search_start[0].model.enc_layers: expected an integer, got True"),
    (with_start({"train.warmup_steps": 20}, change=lambda r: r["search"].update(
        {"train.warmup_steps": {"type": "int", "low": 10, "high": 50, "step": 20}})),
     "search_start[0].train.warmup_steps: 20 is not on the grid 10, 30, 50, ... (low 10, step 20)"),
    (with_start({"model.dropout": 0.15}, change=lambda r: r["search"].update(
        {"model.dropout": {"type": "float", "low": 0.0, "high": 0.4, "step": 0.1}})),
     "search_start[0].model.dropout: 0.15 is not on the grid 0, 0.1, 0.2, ... (low 0, step 0.1)"),
    (with_start({"model.norm": "mid"}, change=lambda r: r["search"].update(
        {"model.norm": {"type": "categorical", "choices": ["pre"]}})),
     "search_start[0].model.norm: 'mid' is not one of the choices 'pre'"),
    # conditions: a value the trial would not use is refused, as suggest() would ignore it
    (with_start({"model.d_model": 64, "model.n_heads": 4}),
     "search_start[0].model.n_heads: not sampled when model.d_model is 64 (only when model.d_model is 128)"),
    (with_start({"model.n_heads": 4}), "search_start[0].model.n_heads: sampled only when model.d_model is 128, "
                                       "and model.d_model is left to the sampler here; give model.d_model too"),
    (with_start({"model.ffn_dim": 256}, change=lambda r: r["search"].update(
        {"model.ffn_dim": {"type": "categorical", "choices": [128, 256], "when": {"model.norm": "post"}}})),
     "search_start[0].model.ffn_dim: not sampled when model.norm is 'pre' (only when model.norm is 'post')"),
    # each entry once, and all of them within the budget
    (with_start({"train.lr": 1e-3, "model.d_model": 64}, {"model.d_model": 64, "train.lr": 0.001}),
     "search_start[1]: the same configuration as search_start[0]"),
    (with_start(*({"train.lr": 1e-4 * (i + 1)} for i in range(5))),
     "search_start: 5 start configurations but budget.trials is 4"),
])
def test_bad_search_start_names_the_entry_and_key(raw, expected):
    assert expected in error_of(raw)


def test_search_start_takes_partial_entries_as_the_search_would_sample_them():
    spec = build_spec(with_start(
        {"model.enc_layers": 2.0, "train.lr": "1e-3"},            # YAML 1.1 reads 1e-3 as a string
        {"model.d_model": 128, "model.n_heads": 8},                # the condition holds: n_heads is taken
        {"model.d_model": 128.0},                                  # n_heads left to the sampler
        change=lambda r: r["search"].update({"model.dropout": {"type": "float", "low": 0.0, "high": 0.4}})))
    first, second, third = spec.search_start
    assert first == {"train.lr": 1e-3, "model.enc_layers": 2} and list(first) == ["train.lr", "model.enc_layers"]
    assert type(first["model.enc_layers"]) is int and type(first["train.lr"]) is float
    assert second == {"model.d_model": 128, "model.n_heads": 8}
    assert third == {"model.d_model": 128} and type(third["model.d_model"]) is int
    assert build_spec(with_start({"model.dropout": 0}, change=lambda r: r["search"].update(
        {"model.dropout": {"type": "float", "low": 0.0, "high": 0.4}}))).search_start == [{"model.dropout": 0.0}]


def test_a_start_entry_runs_with_its_values_through_suggest():
    """Enqueued into a real study, each entry's values are what suggest() returns; the rest is sampled."""
    spec = build_spec(with_start({"model.d_model": 128, "model.n_heads": 8, "train.lr": 5e-4}, {"model.d_model": 64}))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in spec.search_start:
        study.enqueue_trial(params, skip_if_exists=True)
    first, second = (spec.suggest(study.ask()) for _ in range(2))
    assert {k: first[k] for k in ("model.d_model", "model.n_heads", "train.lr")} == spec.search_start[0]
    assert second["model.d_model"] == 64 and "model.n_heads" not in second and 1e-4 <= second["train.lr"] <= 2e-3


def test_search_start_round_trips_and_is_left_out_when_empty():
    spec = build_spec(with_start({"train.lr": 1.5e-3, "model.d_model": 128, "model.n_heads": 4}, {"model.enc_layers": 3}))
    d = json.loads(json.dumps(spec.to_dict()))
    assert d["search_start"] == [{"train.lr": 1.5e-3, "model.d_model": 128, "model.n_heads": 4}, {"model.enc_layers": 3}]
    assert StudySpec.from_dict(d).to_dict() == d
    assert "search_start" not in build_spec(copy.deepcopy(BASE)).to_dict()  # specs stored before it compare equal


def test_search_start_can_be_overridden(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(with_start({"model.d_model": 128})))
    assert load_spec(path).search_start == [{"model.d_model": 128}]
    assert load_spec(path, ["search_start=[]"]).search_start == []
    assert load_spec(path, ["search_start=[{train.lr: 1.0e-3}]"]).search_start == [{"train.lr": 1e-3}]
    # narrowing the space below an entry is an error naming it, not a silent change
    with pytest.raises(ConfigError, match=r"s.yaml: search_start\[0\].model.d_model: 128 is not one of the choices 64"):
        load_spec(path, ["search.model.d_model={type: categorical, choices: [64]}", "search.model.n_heads=null"])



# --- --start-from CONFIG.yaml: one more, read from a training config -----------------------


def training_config(tmp_path: Path, **values) -> Path:
    """A training config like studies/baseline.yaml: every section, `section.field` values set."""
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "studies" / "baseline.yaml").read_text())
    for path, value in values.items():
        section, _, field = path.partition(".")
        raw[section][field] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_cli_start_from_a_training_config(tmp_path, capsys):
    spec = spec_file(tmp_path, lambda r: (r.update(search_start=copy.deepcopy(START)),
                                          r["search"].update({"model.n_heads": {"type": "categorical", "choices": [4],
                                                                                "when": {"model.d_model": 64}}})))
    url = f"sqlite:///{tmp_path}/s.db"
    config = training_config(tmp_path, **{"train.lr": 1.0e-3, "model.d_model": 32, "model.n_heads": 4})
    assert run_cli("study", "create", str(spec), "--storage", url, "--start-from", str(config)) == 0
    created = capsys.readouterr()
    assert f"first trials: search_start[2] (from {config}): train.lr=0.001, model.d_model=32" in created.out
    # n_heads is searched only for d_model 64: the config's 4 is dropped, as a sampled trial would
    assert "not sampled for these values, the spec's fixed value is used: model.n_heads" in created.out
    assert "model.n_heads: 4 -> 2" in created.out and "train.max_tokens: 640 -> 4096" in created.out
    study = optuna.load_study(study_name="tiny", storage=url)
    assert [t.system_attrs["fixed_params"] for t in study.trials] == [*START, {"train.lr": 1e-3, "model.d_model": 32}]
    assert spec_from_study(study).search_start[2] == {"train.lr": 1e-3, "model.d_model": 32}

    # the same configuration as an entry of the spec: queued once
    assert run_cli("study", "create", str(spec), "search.model.n_heads=null", "--name", "again", "--storage", url,
                   "--start-from", str(training_config(tmp_path, **{"train.lr": 1.5e-3, "model.d_model": 64}))) == 0
    again = capsys.readouterr()
    assert "the same as search_start[0]; not queued twice" in again.out
    assert len(optuna.load_study(study_name="again", storage=url).trials) == 2


@pytest.mark.parametrize("values, message", [
    ({"train.lr": 0.01}, "train.lr: 0.01 is outside [0.0001, 0.003]"),
    ({"model.d_model": 128}, "model.d_model: 128 is not one of the choices 32, 64"),
])
def test_cli_start_from_values_outside_the_space_exit_2_and_create_nothing(tmp_path, monkeypatch, capsys, values,
                                                                          message):
    monkeypatch.chdir(tmp_path)
    config = training_config(tmp_path, **values)
    assert run_cli("study", "create", str(spec_file(tmp_path)), "--start-from", str(config)) == 2
    assert capsys.readouterr().err == f"error: --start-from {config}: {message}\n"
    assert not (tmp_path / "mt-tune.db").exists()


def test_cli_start_from_refuses_a_config_beyond_the_budget_or_invalid(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path, lambda r: (r.update(search_start=copy.deepcopy(START)), r["budget"].update(trials=2)))
    for values, message in (({"train.lr": 1e-3, "model.d_model": 32}, "3 start configurations but budget.trials is 2"),
                            ({"model.n_heads": 3}, "model.n_heads: 3 does not divide model.d_model (256)")):
        assert run_cli("study", "create", str(spec), "--start-from", str(training_config(tmp_path, **values))) == 2
        assert message in capsys.readouterr().err
    assert run_cli("study", "create", str(spec), "--start-from", str(tmp_path / "none.yaml")) == 2
    assert f"error: --start-from: {tmp_path / 'none.yaml'}: no such file" in capsys.readouterr().err
    assert not (tmp_path / "mt-tune.db").exists()


def test_cli_invalid_search_start_exits_2_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spec = spec_file(tmp_path, lambda r: r.update(search_start=[{"train.lr": 1e-3}, {"train.lr": 0.1}]))
    assert run_cli("study", "create", str(spec)) == 2
    assert capsys.readouterr().err == f"error: {spec}: search_start[1].train.lr: 0.1 is outside [0.0001, 0.003]\n"
    assert not (tmp_path / "mt-tune.db").exists()
