"""benchmarks/search_value.py: the verdict it prints (the runs themselves take half an hour a seed)."""

import importlib.util
from pathlib import Path

from mt_tune.search.spec import load_spec

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "search_value.py"
_spec = importlib.util.spec_from_file_location("search_value", SCRIPT)
sv = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sv)


def test_one_seed_never_meets_the_target_however_large_its_gain():
    assert not sv.target_met([0.7])
    assert not sv.target_met([5.0])


def test_the_target_is_the_mean_of_two_or_more_seeds():
    assert sv.target_met([0.7, 0.4])
    assert not sv.target_met([0.7, 0.0, 0.0])
    assert not sv.target_met([0.49, 0.49])


def test_metric_bleu_ranks_the_trials_by_the_bleu_the_final_runs_keep_their_checkpoint_by():
    spec = load_spec(REPO / "studies" / "demo.yaml", sv.METRIC_OVERRIDES["bleu"])
    assert (spec.metric, spec.direction) == ("bleu", "maximize")
    assert spec.fixed("train.bleu_sentences") == 200 and spec.fixed("train.keep_best_by") == "bleu"
    assert load_spec(REPO / "studies" / "demo.yaml", sv.METRIC_OVERRIDES["spec"]).metric == "val_loss"
