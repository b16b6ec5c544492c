"""What the commands share: --device auto picks CUDA exactly when there is a GPU, other names pass through."""

from __future__ import annotations

import torch

from mt_tune.cli.options import pick_device


def test_pick_device_resolves_auto_and_keeps_an_explicit_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda:1") == "cuda:1"
    assert (pick_device("auto") == "cuda") == torch.cuda.is_available()
    assert pick_device("auto") in ("cuda", "cpu")
