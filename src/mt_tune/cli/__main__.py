"""`python -m mt_tune.cli ...`: the same as `mt-tune ...` (torchrun starts DDP workers so)."""

from mt_tune.cli import main

main()
