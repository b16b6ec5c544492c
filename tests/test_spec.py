"""Study specs: every class of bad spec is a ConfigError naming the key; good specs round-trip."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import optuna
import pytest
import yaml

from mt_tune.config import load_run_config
from mt_tune.errors import ConfigError
from mt_tune.search.pruners import build_pruner
from mt_tune.search.samplers import build_sampler
from mt_tune.search.spec import StudySpec, build_spec, load_spec

REPO = Path(__file__).resolve().parents[1]

BASE = {
    "name": "t",
    "data": {"format": "sample", "scale": "1k"},
    "model": {"d_model": 64, "n_heads": 2, "ffn_dim": 128},
    "train": {"max_steps": 100, "eval_every": 20},
    "search": {
        "train.lr": {"type": "float", "low": 1.0e-4, "high": 2.0e-3, "log": True},
        "model.d_model": {"type": "categorical", "choices": [64, 128]},
        "model.n_heads": {"type": "categorical", "choices": [4, 8], "when": {"model.d_model": 128}},
        "model.enc_layers": {"type": "int", "low": 1, "high": 3},
    },
    "metric": "bleu",
    "budget": {"trials": 4, "max_steps": 60},
}


def spec_with(change) -> dict:
    raw = copy.deepcopy(BASE)
    change(raw)
    return raw


def error_of(raw: dict) -> str:
    with pytest.raises(ConfigError) as info:
        build_spec(raw)
    return str(info.value)


@pytest.mark.parametrize("change, expected", [
    # unknown keys, with a did-you-mean
    (lambda r: r.update(metirc="bleu"), "metirc: unknown key (did you mean 'metric'?)"),
    (lambda r: r["model"].update(d_modle=64), "model.d_modle: unknown key (did you mean 'd_model'?)"),
    (lambda r: r.update(sampler={"type": "tpe", "sed": 1}), "sampler.sed: unknown key (did you mean 'seed'?)"),
    (lambda r: r.update(stopping={"patiense": 2}), "stopping.patiense: unknown key (did you mean 'patience'?)"),
    (lambda r: r.update(pruner={"type": "medain"}), "pruner.type: 'medain' is not one of"),
    # wrong types
    (lambda r: r["train"].update(max_steps="many"), "train.max_steps: expected an integer"),
    (lambda r: r.update(budget={"trials": "ten"}), "budget.trials: expected an integer"),
    # the search space's own errors: tests/test_space.py; one shows it is checked with the spec
    (lambda r: r["search"]["model.n_heads"].update(choices=[4, 6]),
     "model.n_heads 6 does not divide model.d_model 128"),
    (lambda r: r["model"].update(n_heads=3), "model.n_heads: 3 does not divide model.d_model (64)"),
    # metrics the spec cannot compute or compare
    (lambda r: r["train"].update(bleu_sentences=0), "metric: bleu is computed on train.bleu_sentences"),
    (lambda r: (r.update(metric="chrf"), r["search"].update(
        {"train.bleu_sentences": {"type": "categorical", "choices": [0, 100]}})), "metric: chrf is computed on"),
    (lambda r: (r.update(metric="val_loss"), r["search"].update(
        {"data.vocab_size": {"type": "categorical", "choices": [2000, 4000]}})),
     "search.data.vocab_size: changes the tokenization, so val_loss (per subword) is not comparable"),
    (lambda r: r.update(metric="accuracy"), "metric: 'accuracy' is not one of val_loss, val_loss_per_char, bleu, chrf"),
    (lambda r: r.update(direction="minimize"), "direction: bleu is better when it is higher"),
    # missing data files
    (lambda r: r.update(data={"format": "jsonl", "train": ["/nonexistent/train.jsonl"]}),
     "data.train[0]: /nonexistent/train.jsonl: no such file"),
    # fixed sections are validated like a training config
    (lambda r: r["train"].update(lr=-1), "train.lr: must be > 0"),
    (lambda r: r.update(name=""), "name: expected a non-empty study name"),
])
def test_bad_spec_names_the_key(change, expected):
    assert expected in error_of(spec_with(change))


def test_vocab_size_can_be_searched_with_a_per_character_metric():
    raw = spec_with(lambda r: (r.update(metric="val_loss_per_char"), r["search"].update(
        {"data.vocab_size": {"type": "categorical", "choices": [2000, 4000]}})))
    assert build_spec(raw).direction == "minimize"


def test_run_config_applies_budget_and_metric():
    spec = build_spec(copy.deepcopy(BASE))
    cfg = spec.run_config({"train.lr": 5e-4, "model.enc_layers": 2})
    assert cfg.train.lr == 5e-4 and cfg.model.enc_layers == 2
    assert cfg.train.max_steps == 60  # budget.max_steps wins over train.max_steps
    assert cfg.train.keep_best_by == "bleu"  # best.pt is kept by the study's metric
    assert spec.scale == 1000


def test_to_dict_is_json_and_round_trips():
    spec = build_spec(copy.deepcopy(BASE))
    d = spec.to_dict()
    again = StudySpec.from_dict(json.loads(json.dumps(d)))
    assert again.to_dict() == d
    assert [x.path for x in again.search] == list(BASE["search"])


def test_storage_url_is_not_stored():
    raw = spec_with(lambda r: r.update(storage="postgresql+psycopg://u:secret@db/x"))
    spec = build_spec(raw)
    assert spec.storage.endswith("@db/x")
    assert "storage" not in spec.to_dict() and "secret" not in json.dumps(spec.to_dict())


def test_load_spec_overrides_including_search_dimensions(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(BASE))
    spec = load_spec(path, ["budget.trials=7", "search.train.lr.high=1.0e-2", "search.model.enc_layers=null",
                            "search.model.dropout={type: float, low: 0.0, high: 0.3}"])
    assert spec.budget.trials == 7
    dims = {d.path: d for d in spec.search}
    assert dims["train.lr"].high == 1e-2 and "model.enc_layers" not in dims and "model.dropout" in dims
    with pytest.raises(ConfigError, match=r"s.yaml: search.train.lr: low .* must be below high"):
        load_spec(path, ["search.train.lr.high=1.0e-5"])


def test_load_spec_reports_file_and_line_of_bad_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nsearch: {train.lr: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(line"):
        load_spec(path)


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


@pytest.mark.parametrize("path", sorted((REPO / "studies").glob("*.yaml")))
def test_shipped_specs_and_training_configs_are_valid(path):
    raw = yaml.safe_load(path.read_text())
    if "search" not in raw:  # a training config (studies/baseline.yaml): what `mt-tune train` loads
        cfg = load_run_config(path)
        assert (cfg.model.enc_layers, cfg.model.dec_layers, cfg.model.d_model) == (3, 3, 256)
        assert (cfg.model.n_heads, cfg.model.ffn_dim, cfg.train.max_minutes) == (4, 1024, 10)
        return
    spec = build_spec(raw, check_files=False)  # the 10k/full specs name corpus files not shipped
    assert spec.budget.trials >= 1


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


# --- search_start: configurations tried first ---------------------------------------------


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


def test_a_training_config_given_as_a_spec_is_named_as_such():
    baseline = REPO / "studies" / "baseline.yaml"
    with pytest.raises(ConfigError) as err:
        load_spec(baseline)
    assert str(err.value) == (f"{baseline} is a training config (no search: section); a study spec needs a "
                              f"search: section — see studies/demo.yaml")
