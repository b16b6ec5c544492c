"""The `mt-tune` command line: parse arguments, call one function, print.

Exit status: 0 success; 2 bad input or usage (a one-line message, no traceback); 1 runtime
failure. Commands that take a CONFIG or SPEC also take `key.path=value` overrides after it.
"""

from __future__ import annotations

import sys
from typing import Optional

import typer
from rich.console import Console

from mt_tune.errors import UserError

app = typer.Typer(
    help="Hyperparameter search for Transformer machine translation, built on Optuna.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Check and prepare corpora: report, vocabulary, token shards.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = Console(stderr=True)
out = Console()

OVERRIDES = typer.Argument(None, help="overrides: key.path=value (YAML scalars), validated like the file")


# --- data ---------------------------------------------------------------------------------


# --- training -----------------------------------------------------------------------------


# --- entry point --------------------------------------------------------------------------


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


if __name__ == "__main__":
    main()
