"""Run the `mt-tune` command line inside the test process (shared by the test modules)."""

from mt_tune.cli import main


def cli(*args: str) -> int:
    """Run `mt-tune ARGS` in this process; its exit status."""
    try:
        main(list(args))
    except SystemExit as e:
        return e.code
    return 0
