"""The `mt-tune` command line: parse arguments, call one function, print.

Exit status: 0 success; 2 bad input or usage (a one-line message, no traceback); 1 runtime
failure. Commands that take a CONFIG or SPEC also take `key.path=value` overrides after it.
"""

from __future__ import annotations

import sys
from pathlib import Path
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


# --- search -------------------------------------------------------------------------------

study_app = typer.Typer(help="Create, list, show and delete studies.", no_args_is_help=True)
app.add_typer(study_app, name="study")

STORAGE = typer.Option(None, "--storage", help="storage URL [default: $MT_TUNE_STORAGE, else the embedded "
                       "sqlite:///mt-tune.db]")


@study_app.command("create")
def study_create(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="study spec YAML (see studies/demo.yaml)"),
    overrides: Optional[list[str]] = OVERRIDES,
    name: Optional[str] = typer.Option(None, "--name", help="study name [default: the spec's name]"),
    storage: Optional[str] = typer.Option(None, "--storage", help="storage URL [default: the spec's storage, "
                                          "else $MT_TUNE_STORAGE, else sqlite:///mt-tune.db]"),
    exists_ok: bool = typer.Option(False, "--exists-ok", help="reuse an existing study if its spec is identical"),
) -> None:
    """Validate a spec and store it as a new study (nothing is written for an invalid spec)."""
    from mt_tune.config import format_scale
    from mt_tune.search.spec import load_spec
    from mt_tune.search.storage import mask_url, resolve_url
    from mt_tune.search.study import create_study

    spec = load_spec(spec_path, list(overrides or []))
    study = create_study(spec, name=name, storage_url=storage, exists_ok=exists_ok)
    out.print(f"study {study.study_name!r} in {mask_url(resolve_url(storage or spec.storage))}: "
              f"{len(spec.search)} searched parameters, metric {spec.metric} ({spec.direction}), "
              f"scale {format_scale(spec.scale)}, budget {spec.budget.trials} trials\n"
              f"next: mt-tune worker {study.study_name}", markup=False, highlight=False)


@study_app.command("list")
def study_list(storage: Optional[str] = STORAGE) -> None:
    """All studies in the storage: scale, trials by state, best value."""
    from mt_tune.search.storage import mask_url, resolve_url
    from mt_tune.search.study import list_studies, studies_table

    out.print(studies_table(list_studies(storage), mask_url(resolve_url(storage))))


@study_app.command("show")
def study_show(
    name: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = STORAGE,
    top: int = typer.Option(5, "--top", help="how many best trials to list"),
) -> None:
    """Best trials with params, trials by state and stop reason, speed and time per trial."""
    from mt_tune.search.study import show_study, study_view

    out.print(study_view(show_study(name, storage, top=top)))


@study_app.command("delete")
def study_delete(
    name: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = STORAGE,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete a study and all its trials from the storage (checkpoints on disk are kept)."""
    from mt_tune.search.storage import mask_url, resolve_url
    from mt_tune.search.study import delete_study, load_study

    where = mask_url(resolve_url(storage))
    n = len(load_study(name, storage).get_trials(deepcopy=False))
    if not yes and not typer.confirm(f"delete study {name!r} ({n} trials) from {where}?"):
        raise typer.Exit(1)
    delete_study(name, storage)
    out.print(f"deleted study {name!r} ({n} trials) from {where}", markup=False, highlight=False)


@app.command()
def worker(
    name: str = typer.Argument(..., help="study name"),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="stop after this many trials of this worker "
                                           "[default: until the study's budget is spent]"),
    storage: Optional[str] = STORAGE,
    device: str = typer.Option("auto", "--device", help="auto (the spec's train.device), cpu, cuda or cuda:N"),
    artifacts: Path = typer.Option(Path("mt-tune-artifacts"), "--artifacts",
                                   help="checkpoints go to ARTIFACTS/<study>/<trial>/"),
) -> None:
    """Run the study's trials on this machine until its total budget (or --n-trials) is reached."""
    import logging

    import optuna

    from mt_tune.search.worker import run_worker

    optuna.logging.set_verbosity(logging.WARNING)  # one line per trial comes from the worker
    run_worker(name, storage, n_trials=n_trials, device=device, artifacts=str(artifacts),
               log=lambda line: out.print(line, markup=False, highlight=False))


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
