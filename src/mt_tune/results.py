"""What a training run reports, and how it ends early.

EvalResult is one evaluation (the Trainer's history, a checkpoint's "history"), RunResult a
finished run. A hook raises StopTraining to end a run cleanly; a TrainingError is a run that
cannot go on, its `stop_reason` saying why (a search records it as the trial's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class EvalResult:
    step: int
    val_loss: float
    val_loss_per_char: float
    bleu: float | None
    chrf: float | None
    lr: float
    train_loss: float
    tokens_per_s: float
    elapsed_s: float


@dataclass
class RunResult:
    stop_reason: str
    steps: int
    history: list[EvalResult]
    best: dict[str, tuple[float, int]]
    tokens_per_s: float
    updates_per_s: float
    peak_memory_bytes: int
    n_params: int
    wall_s: float
    mfu: float | None
    tokens_per_update: float = 0.0  # mean target tokens per update, all processes together
    bleu_signature: str | None = None
    out_dir: Path | None = None


class StopTraining(Exception):
    """Raised by a hook to end fit() cleanly; `reason` becomes RunResult.stop_reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrainingError(RuntimeError):
    """A run that cannot go on; `stop_reason` says why, `step` where."""

    stop_reason = "error"

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NaNLossError(TrainingError):
    stop_reason = "nan_loss"


class OutOfMemoryError(TrainingError):
    stop_reason = "oom"

    def __init__(self, message: str, step: int, estimate_bytes: int | None):
        super().__init__(message, step)
        self.estimate_bytes = estimate_bytes
