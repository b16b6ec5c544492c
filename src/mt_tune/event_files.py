"""TensorBoard event files of a training run (`tensorboard --logdir OUT/tensorboard`).

Written by `mt-tune train` into OUT/tensorboard/ when the optional tensorboard package is
installed (`pip install mt-tune[tensorboard]`), as fairseq, JoeyNMT and the Hugging Face
Trainer do. Scalars, by update number:

    train/loss  train/lr                         at every log line (train.log_every)
    valid/loss  valid/loss_per_char              at every evaluation
    valid/bleu  valid/chrf                       at every evaluation that translates
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from mt_tune.results import EvalResult

EVENTS_DIR = "tensorboard"


class EventFiles:
    """A SummaryWriter with the run's scalars under the names above."""

    def __init__(self, writer: Any):
        self.writer = writer

    def train(self, step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)

    def evaluation(self, result: EvalResult) -> None:
        step = result.step
        self.writer.add_scalar("valid/loss", result.val_loss, step)
        self.writer.add_scalar("valid/loss_per_char", result.val_loss_per_char, step)
        if result.bleu is not None:
            self.writer.add_scalar("valid/bleu", result.bleu, step)
            self.writer.add_scalar("valid/chrf", result.chrf, step)
        self.writer.flush()  # visible in a running TensorBoard at each evaluation, not only at the end

    def close(self) -> None:
        self.writer.close()


def open_event_files(out_dir: Path, log: Callable[[str], None]) -> EventFiles | None:
    """Event files under OUT/tensorboard/, or None (and one log line) without tensorboard."""
    try:
        # imported only here: tensorboard is optional, and slow to import
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log("event files off: tensorboard is not installed (pip install 'mt-tune[tensorboard]')")
        return None
    return EventFiles(SummaryWriter(log_dir=str(Path(out_dir) / EVENTS_DIR)))
