"""What the commands share: the output consoles and the options that mean one thing everywhere."""

from __future__ import annotations

import typer
from rich.console import Console

console = Console(stderr=True)  # errors
out = Console()

OVERRIDES = typer.Argument(None, help="overrides: key.path=value (YAML scalars), validated like the file")
STORAGE = typer.Option(None, "--storage", help="storage URL [default: $MT_TUNE_STORAGE, else the embedded "
                       "sqlite:///mt-tune.db]")
BEAM = typer.Option(4, "--beam", min=1, help="beam size (1: greedy)")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device

