"""What a run reports: the metrics and their directions, and the errors' stop reasons."""

from __future__ import annotations

import dataclasses

from mt_tune.config import METRICS
from mt_tune.results import EvalResult, NaNLossError, OutOfMemoryError, StopTraining, TrainingError


def test_every_metric_is_a_field_of_an_evaluation():
    fields = {f.name for f in dataclasses.fields(EvalResult)}
    assert set(METRICS) <= fields
    assert [m for m, direction in METRICS.items() if direction == "minimize"] == ["val_loss", "val_loss_per_char"]


def test_errors_say_why_and_where_a_run_ended():
    assert StopTraining("pruned").reason == "pruned"
    assert (TrainingError("x", 3).stop_reason, TrainingError("x", 3).step) == ("error", 3)
    assert NaNLossError("nan", 5).stop_reason == "nan_loss"
    oom = OutOfMemoryError("oom", 7, 2**30)
    assert (oom.stop_reason, oom.step, oom.estimate_bytes) == ("oom", 7, 2**30)
