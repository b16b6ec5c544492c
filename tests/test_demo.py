"""`mt-tune demo`: its plan, its final pick, and the whole flow shrunk to a tiny model and a
one-and-a-half-minute budget, end to end."""

from __future__ import annotations

import optuna
import pytest
import yaml

from pathlib import Path

from mt_tune.checkpoint import read_checkpoint
from mt_tune.config import load_run_config, to_dict
from mt_tune.demo import PROMOTION_SHARE, SEARCH_SHARE, TOP_K, default_spec_path, pick_final, plan
from mt_tune.errors import UserError
from mt_tune.search.spec import load_spec
from cli_run import cli

TINY_SPEC = {
    "name": "tiny",
    "data": {"format": "sample", "scale": "full", "valid_size": 100, "vocab_size": 2000},
    "model": {"d_model": 32, "n_heads": 2, "enc_layers": 1, "dec_layers": 1, "ffn_dim": 64},
    "train": {"eval_every": 400, "bleu_sentences": 0, "keep_best_by": "val_loss", "warmup_steps": 5,
              "max_tokens": 1024, "log_every": 10},
    "search": {"train.lr": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True}},
    # A warm start that is sure to lose: it must still be promoted and continued, and the
    # final run must leave it for the trial that beat it clearly past the warmup.
    "search_start": [{"train.lr": 1e-5}],
    "metric": "val_loss",
    "pruner": {"type": "none"},
    "budget": {"trials": 4, "max_steps": 100000},
}


def test_plan_splits_the_budget():
    p = plan(10, trials=8, top_k=6)
    assert p.search_s == pytest.approx(SEARCH_SHARE * 600 / 8)
    assert p.promoted_s == pytest.approx(p.search_s + PROMOTION_SHARE * 600 / 6)
    assert 0 < p.reserve_s < 60
    with pytest.raises(UserError, match="--minutes: at least 1"):
        plan(0.5, trials=8, top_k=3)


def test_the_shipped_demo_spec_warm_starts_from_the_baseline(tmp_path):
    """studies/demo.yaml is valid, its first trial trains studies/baseline.yaml's config (data
    included), and what the demo changes for its final run is only how it evaluates."""
    spec = load_spec(default_spec_path(), [f"data.cache_dir={tmp_path}"])
    assert spec.budget.trials >= TOP_K >= 6 and spec.search and spec.search_start
    warm = to_dict(spec.run_config(spec.search_start[0]))
    baseline = to_dict(load_run_config(Path(default_spec_path()).parent / "baseline.yaml",
                                       [f"data.cache_dir={tmp_path}"]))
    for section in ("data", "model"):
        assert warm[section] == baseline[section]
    evaluation = {"max_steps", "max_minutes", "eval_every", "bleu_sentences", "keep_best_by"}
    assert {k: v for k, v in warm["train"].items() if k not in evaluation} == \
        {k: v for k, v in baseline["train"].items() if k not in evaluation}


def _trial(value: float, steps: int, source: int, warmup: int) -> optuna.trial.FrozenTrial:
    return optuna.trial.create_trial(
        params={"train.warmup_steps": warmup}, value=value,
        distributions={"train.warmup_steps": optuna.distributions.IntDistribution(50, 400, step=50)},
        user_attrs={"steps": steps, "promoted_from": {"study": "s", "trial": source}})


@pytest.mark.parametrize("best, warm_steps, expect, says", [
    ((4.0, 40, 300), 40, 0, "before the end of the warmup"),  # a lower loss, but both within their warmup
    ((4.95, 500, 50), 500, 0, "only 1.0% better"),  # past the warmup, a win within the margin
    ((4.0, 500, 50), 500, 1, "beat the warm start clearly"),
])
def test_pick_final_keeps_the_warm_start_unless_clearly_beaten(tmp_path, best, warm_steps, expect, says):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/p.db", study_name="p")
    study.add_trial(_trial(5.0, warm_steps, source=0, warmup=300))  # the warm start
    study.add_trial(_trial(best[0], best[1], source=3, warmup=best[2]))
    spec = load_spec(default_spec_path(), [f"data.cache_dir={tmp_path}"])
    trial, reason = pick_final(study, spec, warm=0)
    assert trial.number == expect and says in reason
    assert pick_final(study, spec, warm=None)[0].number == 1  # no warm start: the best


def test_demo_new_flow_end_to_end_at_a_tiny_budget(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    work = tmp_path / "work"
    assert cli("demo", "--minutes", "1.5", "--workdir", str(work), "--spec", str(spec), "--top-k", "3") == 0
    printed = capsys.readouterr().out
    for step in ("1/5 search", "2/5 promotion", "3/5 the final config", "4/5 final training",
                 "5/5 BLEU on the held-out set"):
        assert step in printed
    assert "on 100 held-out sentences" in printed and "nrefs:1|case:mixed|eff:no|tok:13a" in printed
    assert f"mt-tune dashboard --storage sqlite:///{work}/mt-tune.db" in printed

    storage = f"sqlite:///{work}/mt-tune.db"
    search = optuna.load_study(study_name="tiny-search", storage=storage)
    assert search.trials[0].params == {"train.lr": 1e-5}  # the warm start ran first
    done = search.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 4
    warm_rank = sorted(done, key=lambda t: t.value).index(search.trials[0]) + 1
    assert warm_rank > 2  # it lost: it is promoted only because it is the warm start

    promoted = optuna.load_study(study_name="tiny-promoted", storage=storage)
    assert promoted.user_attrs["parent"]["study"] == "tiny-search"
    ranks = sorted(t.user_attrs["source_rank"] for t in promoted.trials)
    assert ranks == [1, 2, warm_rank]
    for t in promoted.trials:  # each continued its search trial's run rather than starting over
        source = search.trials[t.user_attrs["promoted_from"]["trial"]]
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert t.user_attrs["resumed_from_step"] == source.user_attrs["steps"] > 0
        assert t.user_attrs["steps"] > source.user_attrs["steps"]
    assert "ranking after" in printed and "Spearman" in printed

    # The final config is the one pick_final chooses from what the promotion measured, and
    # the demo prints why (tests above: each of its reasons).
    winner, reason = pick_final(promoted, load_spec(spec), warm=search.trials[0].number)
    assert f"final: trial {winner.number} of tiny-promoted" in printed and reason in printed
    exported = yaml.safe_load((work / "tiny-best.yaml").read_text())
    assert exported["provenance"]["study"] == "tiny-promoted" and exported["provenance"]["trial"] == winner.number
    final = read_checkpoint(work / "tiny-final" / "best.pt")
    assert final["step"] > winner.user_attrs["steps"] and final["config"]["train"]["keep_best_by"] == "bleu"
    assert f"resumed from {work / 'tiny-final' / 'last.pt'} at step {winner.user_attrs['steps']}" in printed
    assert (work / "report-tiny-search.html").is_file() and (work / "report-tiny-promoted.html").is_file()


def test_demo_refuses_to_replace_studies_it_did_not_make(tmp_path, capsys):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY_SPEC))
    work = tmp_path / "work"
    work.mkdir()
    optuna.create_study(study_name="tiny-search", storage=f"sqlite:///{work}/mt-tune.db")
    assert cli("demo", "--workdir", str(work), "--spec", str(spec)) == 2
    err = capsys.readouterr().err
    assert "study 'tiny-search'" in err and "was not made by the demo" in err
