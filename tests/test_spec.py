"""Study specs: every class of bad spec is a ConfigError naming the key; good specs round-trip."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from mt_tune.config import load_run_config
from mt_tune.errors import ConfigError
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
    (lambda r: r.update(pruner={"warmup_fraction": 1.0}), "pruner.warmup_fraction: must be in [0, 1), got 1.0"),
    (lambda r: r.update(pruner={"warmup_fraction": -0.1}), "pruner.warmup_fraction: must be in [0, 1)"),
    (lambda r: r.update(pruner={"patience": -1}), "pruner.patience: must be >= 0, got -1"),
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


def test_a_training_config_given_as_a_spec_is_named_as_such():
    baseline = REPO / "studies" / "baseline.yaml"
    with pytest.raises(ConfigError) as err:
        load_spec(baseline)
    assert str(err.value) == (f"{baseline} is a training config (no search: section); a study spec needs a "
                              f"search: section — see studies/demo.yaml")
