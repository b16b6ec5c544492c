"""The learning-rate schedule: warmup, decay, and the projected end of a time budget."""

from __future__ import annotations

import math

import pytest

from mt_tune.config import build_run_config
from mt_tune.schedule import lr_at, projected_end_step


def test_schedule_warms_up_linearly_then_decays():
    tc = build_run_config({"data": {"format": "sample"}, "train": {"lr": 1e-3, "warmup_steps": 100,
                                                                     "max_steps": 1000, "min_lr": 1e-5}}).train
    assert lr_at(1, tc) == pytest.approx(1e-5)
    assert lr_at(50, tc) == pytest.approx(5e-4)
    assert lr_at(100, tc) == pytest.approx(1e-3)
    assert lr_at(400, tc) == pytest.approx(1e-3 * math.sqrt(100 / 400))
    decay = [lr_at(s, tc) for s in range(100, 1001, 50)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    tc.schedule = "cosine"
    assert lr_at(100, tc) == pytest.approx(1e-3)
    assert lr_at(550, tc) == pytest.approx((1e-3 + 1e-5) / 2)
    assert lr_at(1000, tc) == pytest.approx(1e-5)
    assert lr_at(5000, tc) == pytest.approx(1e-5)  # floor past max_steps


def test_linear_and_cosine_decay_end_at_the_projected_end_of_a_time_budget():
    tc = build_run_config({"data": {"format": "sample"}, "train": {
        "lr": 1e-3, "warmup_steps": 100, "max_steps": 10_000, "schedule": "linear", "max_minutes": 10}}).train
    assert lr_at(100, tc) == pytest.approx(1e-3)
    assert lr_at(5050, tc) == pytest.approx(5e-4)  # halfway to max_steps without a projection
    # 300 updates in the first 2 of 10 minutes: the budget runs out near update 1,500
    end = projected_end_step(300, 120.0, tc)
    assert end == pytest.approx(1500)
    assert lr_at(800, tc, end) == pytest.approx(5e-4)
    assert lr_at(1500, tc, end) == 0.0 and lr_at(1600, tc, end) == 0.0
    assert lr_at(800, tc, 20_000) == lr_at(800, tc)  # max_steps still ends the decay when it comes first
    tc.schedule = "cosine"
    assert lr_at(800, tc, end) == pytest.approx(5e-4)
    tc.max_minutes = 0
    assert projected_end_step(300, 120.0, tc) is None


def test_the_pace_of_a_time_budget_can_leave_out_the_first_updates():
    tc = build_run_config({"data": {"format": "sample"}, "train": {"max_minutes": 10}}).train
    assert projected_end_step(100, 60.0, tc) == pytest.approx(1000)
    # 2 updates took 300 s (compiling), then 100 updates 60 s: 90 % of 540 s remain at 0.6 s each
    assert projected_end_step(102, 360.0, tc, since=(2, 300.0)) == pytest.approx(2 + 100 * 300 / 60)
    assert projected_end_step(2, 300.0, tc, since=(2, 300.0)) is None
