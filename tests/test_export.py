"""Export a trial as a training config: contents, provenance, errors, and the round trip
export → `mt-tune train` → `mt-tune evaluate`."""

from __future__ import annotations

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution

from mt_tune import __version__
from mt_tune.config import load_run_config
from mt_tune.errors import UserError
from mt_tune.search.export import export_config
from mt_tune.search.spec import build_spec
from mt_tune.search.study import create_study
from cli_run import cli


DISTS = {"train.lr": FloatDistribution(1e-4, 3e-3, log=True), "model.ffn_dim": CategoricalDistribution([32, 64])}


def spec_dict(cache_dir) -> dict:
    return {
        "name": "exp",
        "data": {"format": "sample", "scale": "1k", "vocab_size": 2000, "valid_size": 100, "cache_dir": str(cache_dir)},
        "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64, "dropout": 0.0},
        "train": {"eval_every": 4, "bleu_sentences": 8, "warmup_steps": 2, "max_tokens": 1024, "log_every": 4,
                  "device": "cpu", "max_minutes": 5},
        "search": {"train.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                   "model.ffn_dim": {"type": "categorical", "choices": [32, 64]}},
        "metric": "chrf",
        "budget": {"trials": 4, "max_steps": 300, "max_minutes": 1.5},
    }


@pytest.fixture
def study(tmp_path):
    """A study mt-tune made, with trials as the objective leaves them (no training needed)."""
    url = f"sqlite:///{tmp_path}/export.db"
    s = create_study(build_spec(spec_dict(tmp_path / "cache")), storage_url=url)
    for lr, ffn, value in ((1e-3, 32, 20.0), (2e-3, 64, 31.5), (5e-4, 32, 12.0)):
        s.add_trial(optuna.trial.create_trial(value=value, params={"train.lr": lr, "model.ffn_dim": ffn},
                                              distributions=DISTS, user_attrs={"best_step": 200, "stop_reason": "diverged"}))
    s.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, params={"train.lr": 3e-3, "model.ffn_dim": 64},
                                          distributions=DISTS, intermediate_values={4: 1.0}))
    return url


def test_export_writes_the_best_trial_with_provenance(study, tmp_path):
    out = tmp_path / "best.yaml"
    result = export_config("exp", out, study)
    assert result.trial == 1 and result.value == 31.5
    text = out.read_text()
    assert text.startswith("# Training config exported from study 'exp', trial 1 (chrf 31.5).")
    raw = yaml.safe_load(text)
    assert set(raw) == {"data", "model", "train", "provenance"}
    assert raw["train"]["lr"] == 2e-3 and raw["model"]["ffn_dim"] == 64
    assert raw["train"]["max_steps"] == 300  # the search's step budget
    assert raw["train"]["max_minutes"] == 5  # the spec's own limit; the per-trial budget is dropped
    assert raw["train"]["keep_best_by"] == "chrf"
    assert raw["data"]["scale"] == "1k"
    prov = raw["provenance"]
    assert prov["study"] == "exp" and prov["trial"] == 1 and prov["value"] == 31.5 and prov["metric"] == "chrf"
    assert prov["params"] == {"train.lr": 2e-3, "model.ffn_dim": 64} and prov["best_step"] == 200
    assert prov["storage"] == study and prov["mt_tune_version"] == __version__ and prov["exported_at"]
    # `mt-tune train` reads it as it is
    cfg = load_run_config(out)
    assert cfg.train.lr == 2e-3 and cfg.model.ffn_dim == 64


def test_export_a_chosen_trial_at_another_scale_and_length(study, tmp_path):
    raw = export_config("exp", tmp_path / "t0.yaml", study, trial=0, scale="full", steps=50).config
    assert raw["provenance"]["trial"] == 0 and raw["train"]["lr"] == 1e-3
    assert raw["data"]["scale"] == "full" and raw["provenance"]["searched_scale"] == "1k"
    assert raw["train"]["max_steps"] == 50


@pytest.mark.parametrize("kwargs, message", [
    ({"trial": 3}, "--trial 3: trial 3 of study 'exp' is PRUNED; completed trials: 0, 1, 2"),
    ({"trial": 9}, "--trial 9: trial 9 of study 'exp' does not exist"),
    ({"steps": 0}, "--steps: must be >= 1"),
    ({"scale": "lots"}, "--scale: expected a number of pairs"),
])
def test_export_refuses_bad_arguments_and_writes_nothing(study, tmp_path, kwargs, message):
    out = tmp_path / "x.yaml"
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        export_config("exp", out, study, **kwargs)
    assert not out.exists()


def test_export_of_a_study_without_completed_trials(tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    create_study(build_spec(spec_dict(tmp_path / "cache")), storage_url=url)
    with pytest.raises(UserError, match="has no completed trial to export"):
        export_config("exp", tmp_path / "x.yaml", url)


def test_round_trip_export_train_evaluate(study, tmp_path, capsys):
    """The exported file trains unchanged, and the checkpoint evaluates with sacrebleu."""
    out = tmp_path / "final.yaml"
    assert cli("study", "export", "exp", "-o", str(out), "--steps", "8", "--storage", study) == 0
    assert "mt-tune train" in capsys.readouterr().out
    run_dir = tmp_path / "run"
    assert cli("train", str(out), "--out", str(run_dir)) == 0
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()

    pairs = [("我喜欢喝茶。", "I like drinking tea."), ("他是我的朋友。", "He is my friend."),
             ("今天天气很好。", "The weather is good today.")]
    src, ref = tmp_path / "test.zh", tmp_path / "test.en"
    src.write_text("".join(p[0] + "\n" for p in pairs), encoding="utf-8")
    ref.write_text("".join(p[1] + "\n" for p in pairs), encoding="utf-8")
    capsys.readouterr()
    assert cli("evaluate", str(run_dir / "best.pt"), "--src", str(src), "--ref", str(ref)) == 0
    printed = capsys.readouterr().out
    assert "BLEU" in printed and "nrefs:1|case:mixed|eff:no|tok:13a" in printed
