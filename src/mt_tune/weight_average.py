"""A moving average of a model's weights (train.ema_decay; Polyak averaging).

The average trails the trained weights; evaluation, best.pt and translation use it, training
goes on from the trained weights. Both are in a checkpoint (see checkpoint.py).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """An exponential moving average of `model`'s parameters, by parameter name."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = model, decay
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, steps_done: int) -> None:
        """Move the average towards the current weights, after update number steps_done + 1."""
        # a short average early on, when the first weights are far from the later ones
        decay = min(self.decay, (1 + steps_done) / (10 + steps_done))
        for name, param in self.model.named_parameters():
            self.params[name].lerp_(param.detach(), 1 - decay)

    @contextmanager
    def swapped_in(self):
        """Inside the block the model holds the average; the trained weights come back after it."""
        params = dict(self.model.named_parameters())
        trained = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.params[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(trained[n])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the average in place of the trained weights (copies)."""
        with self.swapped_in():
            return {k: v.clone() for k, v in self.model.state_dict().items()}

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        """Take the average from a state dict (a checkpoint's "model"), onto the model's device."""
        self.params = {n: weights[n].to(p.device, copy=True) for n, p in self.model.named_parameters()}
