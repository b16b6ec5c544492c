"""`mt-tune demo`, shrunk to a tiny model and a one-and-a-half-minute budget, end to end."""

from __future__ import annotations

import optuna
import pytest
import yaml

from mt_tune.data import prepare
from mt_tune.demo import default_spec_path, plan
from mt_tune.errors import UserError
from mt_tune.search.spec import load_spec
from cli_run import cli

TINY_SPEC = {
    "name": "tiny",
    "data": {"format": "sample", "scale": "full", "valid_size": 100, "vocab_size": 2000},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64},
    "train": {"eval_every": 10, "bleu_sentences": 10, "warmup_steps": 5, "max_tokens": 1024, "log_every": 10},
    "search": {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    "metric": "chrf",
    "pruner": {"type": "none"},
    "budget": {"trials": 2, "max_steps": 20},
}


def test_plan_splits_the_budget():
    p = plan(10, trials=8, top_k=3)
    assert (p.search, p.promotion, p.final) == (4.0, 2.5, 3.0)
    assert p.per_search_trial == pytest.approx(0.8 * 4.0 / 8) and p.per_promoted_trial == pytest.approx(0.8 * 2.5 / 3)
    with pytest.raises(UserError, match="--minutes: at least 1"):
        plan(0.5, trials=8, top_k=3)


def test_the_shipped_demo_spec_works_at_the_search_scale(tmp_path):
    """studies/demo.yaml is valid, and its data (vocabulary size included) can be prepared at 1k."""
    spec = load_spec(default_spec_path(), ["data.scale=1k", f"data.cache_dir={tmp_path}"])
    assert spec.data["format"] == "sample" and spec.budget.trials >= 3 and spec.search
    data = prepare(spec.run_config().data)
    assert len(data.train) == 1000 and len(data.valid) == 500


def test_demo_runs_the_whole_loop(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    work = tmp_path / "work"
    assert cli("demo", "--minutes", "1.5", "--workdir", str(work), "--spec", str(spec), "--top-k", "2") == 0
    printed = capsys.readouterr().out
    for step in ("1/5 search", "2/5 promotion", "3/5 export", "4/5 final training", "5/5 BLEU on the held-out set"):
        assert step in printed
    assert "on 100 held-out sentences" in printed and "nrefs:1|case:mixed|eff:no|tok:13a" in printed
    assert f"mt-tune dashboard --storage sqlite:///{work}/mt-tune.db" in printed

    storage = f"sqlite:///{work}/mt-tune.db"
    search = optuna.load_study(study_name="tiny-1k", storage=storage)
    assert search.user_attrs["spec"]["data"]["scale"] == "1k"
    assert len(search.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 2
    promoted = optuna.load_study(study_name="tiny-full", storage=storage)
    assert promoted.user_attrs["parent"]["study"] == "tiny-1k"
    assert sorted(t.user_attrs["source_rank"] for t in promoted.trials) == [1, 2]

    exported = yaml.safe_load((work / "tiny-best.yaml").read_text())
    assert exported["provenance"]["study"] == "tiny-full" and exported["data"]["scale"] == "full"
    assert (work / "tiny-final" / "best.pt").is_file()
    assert (work / "report-tiny-1k.html").is_file() and (work / "report-tiny-full.html").is_file()
    assert "resumed from" in printed  # the final run continued the promoted winner's checkpoint


def test_demo_refuses_to_replace_studies_it_did_not_make(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    work = tmp_path / "work"
    work.mkdir()
    optuna.create_study(study_name="tiny-1k", storage=f"sqlite:///{work}/mt-tune.db")
    assert cli("demo", "--workdir", str(work), "--spec", str(spec)) == 2
    err = capsys.readouterr().err
    assert "study 'tiny-1k'" in err and "was not made by the demo" in err
