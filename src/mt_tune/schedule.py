"""The learning-rate schedule of a run, and where a time budget is projected to end it.

Warmup, then inverse-sqrt (the Transformer's), cosine or linear decay (train.schedule); under
train.max_minutes the decay ends where the budget is projected to run out.
"""

from __future__ import annotations

import math

from mt_tune.config import TrainConfig


def lr_at(step: int, tc: TrainConfig, end_step: float | None = None) -> float:
    """Learning rate of update number `step` (1-based): linear warmup to tc.lr over
    tc.warmup_steps, then inverse-sqrt, or cosine / linear down to min_lr at `end_step`
    (default max_steps); never below min_lr after warmup."""
    warmup = tc.warmup_steps
    if step <= warmup:
        return tc.lr * step / warmup
    if tc.schedule == "inverse_sqrt":
        value = tc.lr * math.sqrt(max(warmup, 1) / step)
    else:
        end = tc.max_steps if end_step is None else min(end_step, tc.max_steps)
        progress = min(1.0, (step - warmup) / max(1.0, end - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if tc.schedule == "cosine" else 1 - progress
        value = tc.min_lr + (tc.lr - tc.min_lr) * shape
    return max(value, tc.min_lr)


def projected_end_step(step: int, elapsed_s: float, tc: TrainConfig,
                       since: tuple[int, float] = (0, 0.0)) -> float | None:
    """The step at which max_minutes runs out at the pace so far (None without a time limit).
    A time-limited run otherwise ends wherever the clock stops it, in mid-schedule: budgeted
    training ends best with the learning rate decayed (Li et al. 2020, "Budgeted Training").
    `since` (step, elapsed seconds): the pace is measured from there on, as after the updates
    in which torch.compile compiled, which would make it look slower than it is."""
    step0, elapsed0 = since
    if tc.max_minutes <= 0 or step <= step0 or elapsed_s <= elapsed0:
        return None
    return step0 + (step - step0) * (tc.max_minutes * 60 - elapsed0) / (elapsed_s - elapsed0)
