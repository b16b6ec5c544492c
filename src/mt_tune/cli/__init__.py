"""The `mt-tune` command line: parse arguments, call one function, print.

Exit status: 0 success; 2 bad input or usage (a one-line message, no traceback); 1 runtime
failure. Commands that take a CONFIG or SPEC also take `key.path=value` overrides after it.
Commands: cli/training.py (data, train, estimate, translate, evaluate) and cli/studies.py
(study, worker, dashboard, demo); what they share: cli/options.py.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer

from mt_tune.cli import studies, training
from mt_tune.cli.options import console
from mt_tune.errors import UserError

app = typer.Typer(
    help="Hyperparameter search for Transformer machine translation, built on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(training.commands)
app.add_typer(studies.commands)


def main(argv: Optional[list[str]] = None) -> None:
    """Run the app; typer maps usage errors to exit 2. UserError -> message, exit 2;
    StorageUnavailable (a storage server that stayed unreachable) -> message, exit 1."""
    from mt_tune.search.storage import StorageUnavailable

    try:
        app(args=argv, prog_name="mt-tune")
    except UserError as e:
        console.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except StorageUnavailable as e:
        console.print(f"error: {e}", style="red", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)

