"""The commands of a search: `mt-tune study create|list|show|delete|promote|export|report`,
`worker`, `dashboard` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mt_tune.cli.options import OVERRIDES, STORAGE, out
from mt_tune.errors import UserError

commands = typer.Typer()
study_app = typer.Typer(help="Create, list, show and delete studies.", no_args_is_help=True)
commands.add_typer(study_app, name="study")


# --- search -------------------------------------------------------------------------------



@study_app.command("create")
def study_create(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="study spec YAML (see studies/demo.yaml)"),
    overrides: Optional[list[str]] = OVERRIDES,
    name: Optional[str] = typer.Option(None, "--name", help="study name [default: the spec's name]"),
    storage: Optional[str] = typer.Option(None, "--storage", help="storage URL [default: the spec's storage, "
                                          "else $MT_TUNE_STORAGE, else sqlite:///mt-tune.db]"),
    exists_ok: bool = typer.Option(False, "--exists-ok", help="reuse an existing study if its spec is identical"),
    start_from: Optional[Path] = typer.Option(None, "--start-from", metavar="CONFIG", help="a training config "
                                              "(e.g. studies/baseline.yaml, an exported best): its values of the "
                                              "searched fields are tried first, after the spec's search_start"),
) -> None:
    """Validate a spec and store it as a new study (nothing is written for an invalid spec);
    its start configurations (search_start, --start-from) are queued as its first trials."""
    import optuna

    from mt_tune.config import format_scale
    from mt_tune.search.spec import load_spec
    from mt_tune.search.study import create_study
    from mt_tune.search.urls import mask_url, resolve_url
    from mt_tune.search.warmstart import add_start_from

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # its "study created" line repeats ours
    spec = load_spec(spec_path, list(overrides or []))
    added = add_start_from(spec, start_from) if start_from is not None else None
    study = create_study(spec, name=name, storage_url=storage, exists_ok=exists_ok)
    out.print(f"study {study.study_name!r} in {mask_url(resolve_url(storage or spec.storage))}: "
              f"{len(spec.search)} searched parameters, metric {spec.metric} ({spec.direction}), "
              f"scale {format_scale(spec.scale)}, budget {spec.budget.trials} trials",
              markup=False, highlight=False, soft_wrap=True)
    for i, params in enumerate(spec.search_start):
        source = f" (from {start_from})" if added and not added.duplicate and i == added.index else ""
        out.print(f"first trials: search_start[{i}]{source}: " + ", ".join(f"{k}={v}" for k, v in params.items()),
                  markup=False, highlight=False, soft_wrap=True)
    if added and added.duplicate:
        out.print(f"--start-from {start_from}: the same as search_start[{added.index}]; not queued twice",
                  markup=False, highlight=False, soft_wrap=True)
    if added and added.dropped:
        out.print(f"--start-from {start_from}: not sampled for these values, the spec's fixed value is used: "
                  f"{', '.join(added.dropped)}", markup=False, highlight=False, soft_wrap=True)
    if added and added.differences:
        out.print(f"--start-from {start_from}: fixed in the spec, so not as in the config: "
                  f"{'; '.join(added.differences)}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"next: mt-tune worker {study.study_name}", markup=False, highlight=False)


@study_app.command("list")
def study_list(storage: Optional[str] = STORAGE) -> None:
    """All studies in the storage: scale, trials by state, best value."""
    from mt_tune.search.study import list_studies, studies_table
    from mt_tune.search.urls import mask_url, resolve_url

    out.print(studies_table(list_studies(storage), mask_url(resolve_url(storage))))


@study_app.command("show")
def study_show(
    name: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = STORAGE,
    top: int = typer.Option(5, "--top", help="how many best trials to list"),
) -> None:
    """Best trials with params, trials by state and stop reason, speed and time per trial;
    for a promoted study, how the source study's ranking held (scale transfer)."""
    from mt_tune.search.study import show_study, study_view
    from mt_tune.search.transfer import transfer_view

    out.print(study_view(show_study(name, storage, top=top)))
    transfer = transfer_view(name, storage)
    if transfer is not None:
        out.print(transfer)



@study_app.command("delete")
def study_delete(
    name: str = typer.Argument(..., help="study name"),
    storage: Optional[str] = STORAGE,
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete a study and all its trials from the storage (checkpoints on disk are kept)."""
    from mt_tune.search.study import delete_study, load_study
    from mt_tune.search.urls import mask_url, resolve_url

    where = mask_url(resolve_url(storage))
    n = len(load_study(name, storage).get_trials(deepcopy=False))
    if not yes and not typer.confirm(f"delete study {name!r} ({n} trials) from {where}?"):
        raise typer.Exit(1)
    delete_study(name, storage)
    out.print(f"deleted study {name!r} ({n} trials) from {where}", markup=False, highlight=False)


@commands.command()
def worker(
    name: str = typer.Argument(..., help="study name"),
    n_trials: Optional[int] = typer.Option(None, "--n-trials", help="stop after this many trials of this worker "
                                           "[default: until the study's budget is spent]"),
    storage: Optional[str] = STORAGE,
    device: str = typer.Option("auto", "--device", help="auto (the spec's train.device), cpu, cuda or cuda:N"),
    artifacts: Path = typer.Option(Path("mt-tune-artifacts"), "--artifacts",
                                   help="checkpoints go to ARTIFACTS/<study>/<trial>/ (share it between machines)"),
    devices: Optional[str] = typer.Option(None, "--devices", help="one worker process per device, as in mt-tune train: "
                                          "cpu, cpu:N (N processes), cuda, all (every visible GPU) or GPU indices "
                                          "like 0,1,2,3 [default: one process, --device]"),
    processes: Optional[int] = typer.Option(None, "--processes", help="worker processes per device, e.g. --devices "
                                            "0,1 --processes 2 (on the CPU, --devices cpu:N says it) [default: 1]"),
    max_consecutive_failures: Optional[int] = typer.Option(
        None, "--max-consecutive-failures", help="stop (exit 1) after this many FAIL trials in a row "
        "[default: the spec's budget.max_consecutive_failures, 3]"),
    seed_exact: bool = typer.Option(False, "--seed-exact", help="one process only: sample with the spec's seed as "
                                    "it is (reproducible); by default each process mixes in its host and process id"),
) -> None:
    """Run the study's trials on this machine until its total budget (or --n-trials) is reached.

    Ctrl-C / SIGTERM: running trials are recorded as interrupted and re-queued to resume from their last checkpoint; then the workers exit."""
    from mt_tune.search.launcher import (
        EXIT_INTERRUPTED,
        launch_workers,
        run_this_process,
    )

    def log(line: str) -> None:
        out.print(line, markup=False, highlight=False, soft_wrap=True)

    if devices is None and processes in (None, 1):
        status, _ = run_this_process(name, storage, n_trials=n_trials, device=device, artifacts=str(artifacts), log=log,
                                     max_consecutive_failures=max_consecutive_failures, seed_exact=seed_exact)
        raise typer.Exit(status)
    if seed_exact:
        raise UserError("--seed-exact: only for a single worker process; launched processes get one stream each")
    summary = launch_workers(name, storage, devices=devices or "cpu", processes=processes, n_trials=n_trials,
                             artifacts=str(artifacts), log=log, max_consecutive_failures=max_consecutive_failures)
    raise typer.Exit(EXIT_INTERRUPTED if summary["interrupted"] else 1 if summary["failed_processes"] else 0)


# --- results: promote, export, report, dashboard, demo ------------------------------------


@study_app.command("promote")
def study_promote(
    src: str = typer.Argument(..., help="the study whose best trials are promoted"),
    dst: str = typer.Option(..., "--to", help="the study they are enqueued in (created from SRC's spec, or reused)"),
    top_k: int = typer.Option(4, "--top-k", help="how many of SRC's best completed trials"),
    scale: str = typer.Option("full", "--scale", help="data scale of the new study: 10k, 100k, full, ..."),
    steps_factor: float = typer.Option(1.0, "--steps-factor", help="multiply the per-trial step (and time) budget"),
    storage: Optional[str] = STORAGE,
) -> None:
    """Enqueue SRC's top-k trials into DST at a larger data scale; run DST with `mt-tune worker DST`."""
    from mt_tune.search.promote import promote

    result = promote(src, dst, storage, top_k=top_k, scale=scale, steps_factor=steps_factor,
                     log=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
    for e in result.enqueued:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e["params"].items())
        out.print(f"enqueued trial {e['source_trial']} of {src} (rank {e['source_rank']}): {params}",
                  markup=False, highlight=False, soft_wrap=True)
    if result.already_there:
        out.print(f"already in {dst}: trials {', '.join(map(str, result.already_there))} of {src}",
                  markup=False, highlight=False, soft_wrap=True)
    out.print(f"next: mt-tune worker {dst}", markup=False, highlight=False, soft_wrap=True)


@study_app.command("export")
def study_export(
    name: str = typer.Argument(..., help="study name"),
    output: Path = typer.Option(..., "-o", "--output", help="the training config YAML to write"),
    trial: Optional[int] = typer.Option(None, "--trial", help="trial number [default: the best trial]"),
    scale: Optional[str] = typer.Option(None, "--scale", help="train at this data scale [default: the study's]"),
    steps: Optional[int] = typer.Option(None, "--steps", help="train.max_steps [default: the study's step budget]"),
    storage: Optional[str] = STORAGE,
) -> None:
    """Write a trial's complete training config, with provenance, for `mt-tune train`."""
    from mt_tune.search.export import export_config

    result = export_config(name, output, storage, trial=trial, scale=scale, steps=steps)
    out.print(f"wrote {result.path}: trial {result.trial} of {name} ({result.metric} {result.value:.4g})\n"
              f"next: mt-tune train {result.path}", markup=False, highlight=False, soft_wrap=True)


@study_app.command("report")
def study_report(
    name: str = typer.Argument(..., help="study name"),
    output: Path = typer.Option(Path("report.html"), "-o", "--output", help="the HTML file to write"),
    storage: Optional[str] = STORAGE,
) -> None:
    """Write one self-contained HTML page: history, curves, importances, transfer, best config."""
    from mt_tune.search.report import write_report

    path = write_report(name, output, storage)
    out.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


@commands.command()
def dashboard(
    storage: Optional[str] = typer.Option(None, "--storage", help="storage URL [default: $MT_TUNE_STORAGE, "
                                          "else the embedded sqlite:///mt-tune.db]"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8080, "--port", help="port to listen on"),
) -> None:
    """Serve optuna-dashboard on the study storage: trials, curves, notes (Ctrl-C to stop)."""
    from mt_tune.search.dashboard import serve

    serve(storage, host, port, log=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))


@commands.command()
def demo(
    overrides: Optional[list[str]] = typer.Argument(None, help="overrides of the demo spec: key.path=value"),
    minutes: float = typer.Option(10.0, "--minutes", help="wall-time budget of the whole demo"),
    workdir: Path = typer.Option(Path("."), "--workdir", help="where the storage, checkpoints, reports and "
                                 "the exported config go"),
    spec: Optional[Path] = typer.Option(None, "--spec", help="study spec [default: studies/demo.yaml]"),
    top_k: int = typer.Option(6, "--top-k", help="search trials promoted (continued for longer)"),
) -> None:
    """The whole loop on the bundled sample: search, promote (continue) the best, final training, BLEU."""
    from mt_tune.demo import run_demo

    run_demo(minutes, workdir, spec, list(overrides or []), top_k=top_k,
             log=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))
