"""benchmarks/search_value.py: the verdict it prints (the runs themselves take half an hour a seed)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "search_value.py"
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
