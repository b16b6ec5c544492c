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


@data_app.command("check")
def data_check(
    paths: Optional[list[str]] = typer.Argument(None, help="a corpus file, or the two files of a Moses pair "
                                                "(none with --format sample)"),
    format: str = typer.Option("auto", "--format", "-f", help="auto, jsonl, tsv, moses or sample"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON object"),
) -> None:
    """Read a corpus and print its report (pairs kept, skips by reason, lengths); build nothing."""
    import json

    from mt_tune.data import check_corpus
    from mt_tune.data.describe import describe_report

    if not paths and format != "sample":
        raise UserError("give a corpus file (or two for a Moses pair), or --format sample")
    report = check_corpus(paths or [], format).to_dict()
    if as_json:
        print(json.dumps(report, ensure_ascii=False))
    else:
        out.print(describe_report(report), markup=False, highlight=False, soft_wrap=True)


@data_app.command("prepare")
def data_prepare(
    spec: str = typer.Argument(..., help="a training config or study spec; its `data:` section is used"),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Validate the corpus, print its report, build (or reuse) the vocabulary and token shards."""
    from mt_tune.data import prepare
    from mt_tune.data.describe import describe_report, describe_stats
    from mt_tune.data.prepare import load_data_config

    data = prepare(load_data_config(spec, overrides or []), progress=True)
    out.print(describe_report(data.report.to_dict()), markup=False, highlight=False, soft_wrap=True)
    out.print(describe_stats(data.stats), markup=False, highlight=False, soft_wrap=True)
    out.print("cache hit: nothing rebuilt" if data.cache_hit else
              f"built in {data.stats['total_s']:.1f} s", markup=False, highlight=False, soft_wrap=True)


# --- training -----------------------------------------------------------------------------


@app.command()
def train(
    config: Path = typer.Argument(..., help="training config YAML (data, model and train sections)"),
    overrides: Optional[list[str]] = OVERRIDES,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="checkpoint directory [default: runs/<config stem>]"),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last.pt"),
    devices: Optional[str] = typer.Option(None, "--devices", help="cpu, cpu:N, 0,1,… or all; several devices "
                                          "run one DDP process each through torchrun"),
) -> None:
    """Train a model; OUT/last.pt is written at every evaluation, OUT/best.pt when keep_best_by improves."""
    import os

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mt_tune import distributed
    from mt_tune.config import load_run_config
    from mt_tune.data import prepare
    from mt_tune.train import Trainer, TrainingError

    overrides = list(overrides or [])
    out_dir = out_dir or Path("runs") / config.stem
    in_worker = "WORLD_SIZE" in os.environ  # started by torchrun: the parent checked everything
    if devices:
        spec = distributed.parse_devices(devices)
        overrides.append("train.device=cpu" if spec.kind == "cpu" else
                         f"train.device=cuda{'' if spec.n_procs > 1 else ':' + spec.gpu_ids[0]}")
    cfg = load_run_config(config, overrides)
    if not resume and not in_worker and (out_dir / "last.pt").exists():
        raise UserError(f"{out_dir} already holds a run (last.pt): pass --resume to continue it, "
                        f"or choose another --out")
    if devices and spec.n_procs > 1:
        args = ["train", str(config), *overrides, "--out", str(out_dir)] + (["--resume"] if resume else [])
        raise typer.Exit(distributed.launch(spec, args))

    is_main = os.environ.get("RANK", "0") == "0"
    columns = [TextColumn("step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=not is_main) as progress:
        task = progress.add_task("train", total=cfg.train.max_steps, info="")

        def on_step(step: int, info: dict) -> None:
            shown = [f"{name} {info[key]:{fmt}}" for name, key, fmt in
                     (("loss", "loss", ".3f"), ("val", "val_loss", ".3f"), ("lr", "lr", ".1e"), ("tok/s", "tok_s", ",.0f"))
                     if info.get(key) is not None]
            progress.update(task, completed=step, info=" | ".join(shown))

        def log(message: str) -> None:
            progress.console.print(message, markup=False, highlight=False, soft_wrap=True)

        try:
            trainer = Trainer(cfg, out_dir, prepare(cfg.data), resume=resume, log=log, on_step=on_step,
                              tensorboard=True)
            progress.update(task, completed=trainer.step)
            result = trainer.fit()
        except TrainingError as e:
            console.print(f"error: training stopped ({e.stop_reason}) at step {e.step}: {e}",
                          style="red", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(1)
    if is_main:
        out.print(_run_summary(result))


def _run_summary(result):
    """The final summary of a RunResult as a rich table."""
    from rich.table import Table

    table = Table(title="training run", show_header=False)
    table.add_column("what", no_wrap=True)
    table.add_column("value", overflow="fold")
    best = result.best

    def best_of(metric: str, fmt: str) -> str:
        return f"{best[metric][0]:{fmt}} (step {best[metric][1]})" if metric in best else "-"

    rows = [("steps", f"{result.steps}"), ("stop reason", result.stop_reason),
            ("best val loss", best_of("val_loss", ".4f")), ("best val loss / char", best_of("val_loss_per_char", ".4f")),
            ("best BLEU", best_of("bleu", ".2f")), ("best chrF", best_of("chrf", ".2f")),
            ("BLEU signature", result.bleu_signature or "-"),
            ("target tokens/s", f"{result.tokens_per_s:,.0f}"), ("updates/s", f"{result.updates_per_s:.2f}"),
            ("target tokens/update", f"{result.tokens_per_update:,.0f}"),
            ("peak memory", f"{result.peak_memory_bytes / 2**20:,.0f} MiB"), ("parameters", f"{result.n_params:,}"),
            ("MFU", f"{result.mfu:.1%}" if result.mfu is not None else "-"), ("wall time", f"{result.wall_s:,.1f} s"),
            ("checkpoints", str(result.out_dir) if result.out_dir else "-")]
    for name, value in rows:
        table.add_row(name, value)
    return table


# --- model --------------------------------------------------------------------------------


@app.command()
def estimate(
    config: Path = typer.Argument(..., help="training config YAML (data, model and train sections), or a "
                                  "study spec: its largest and smallest configurations"),
    overrides: Optional[list[str]] = OVERRIDES,
) -> None:
    """Parameter count and estimated peak training memory of a config (vocabulary sizes left at 0
    are taken as data.vocab_size; amp auto is assumed to be bf16 unless train.device is cpu).
    For a study spec: of the largest and the smallest configuration its search space can sample."""
    from rich.table import Table

    from mt_tune.config import load_run_config, read_yaml
    from mt_tune.memory import estimate_run, format_bytes

    raw = read_yaml(config)
    if "search" in raw or "name" in raw:  # a study spec
        from mt_tune.search.extremes import extreme_configs
        from mt_tune.search.spec import load_spec

        spec = load_spec(config, list(overrides or []))
        results = extreme_configs(spec)
        out.print(f"study {spec.name}: the largest and the smallest configuration its search space can sample",
                  markup=False, highlight=False, soft_wrap=True)
    else:
        cfg = load_run_config(config, list(overrides or []))
        results = {"": dict(estimate_run(cfg), run_config=cfg)}
    for label, result in results.items():
        model, train_cfg = result["model"], result["run_config"].train
        if label:
            sampled = ", ".join(f"{k}={v}" for k, v in result["sampled"].items()) or "nothing size-related searched"
            out.print(f"{label}: {sampled}", markup=False, highlight=False, soft_wrap=True)
        out.print(f"parameters: {result['params']:,} (d_model {model.d_model}, {model.enc_layers}+{model.dec_layers} "
                  f"layers, vocab {model.src_vocab_size}/{model.tgt_vocab_size})", highlight=False, soft_wrap=True)
        total = f" {format_bytes(result['memory']['total'])}" if label else ""  # the table comes after both
        out.print(f"peak training memory{total} for max_tokens {train_cfg.max_tokens}, amp {result['amp'] or 'off'}, "
                  f"device {train_cfg.device}, grad_checkpointing {str(model.grad_checkpointing).lower()}"
                  + ("" if label else ":"), highlight=False, soft_wrap=True)
    if len(results) > 1:
        out.print("peak training memory by component:", highlight=False)
    table = Table()
    table.add_column("component")
    for label in results:
        table.add_column(label or "bytes", justify="right")
    for name in next(iter(results.values()))["memory"]:
        table.add_row(name, *(format_bytes(r["memory"][name]) for r in results.values()),
                      style="bold" if name == "total" else None)
    out.print(table)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


BEAM = typer.Option(4, "--beam", min=1, help="beam size (1: greedy)")
DEVICE = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N")


@app.command()
def translate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by mt-tune train (last.pt or best.pt)"),
    input_file: Optional[Path] = typer.Option(None, "-i", "--input", help="source sentences, one a line "
                                              "[default: standard input]"),
    beam: int = BEAM,
    device: str = DEVICE,
) -> None:
    """Translate sentences, one a line, to standard output in the same order."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.decode import read_lines, translate as translate_texts

    lines = read_lines(input_file, "input file") if input_file else sys.stdin.read().splitlines()
    model, _, src_tok, tgt_tok = load_checkpoint(checkpoint, _pick_device(device))
    for line in translate_texts(model, src_tok, tgt_tok, lines, beam=beam):
        sys.stdout.write(line + "\n")


@app.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by mt-tune train (last.pt or best.pt)"),
    src: Path = typer.Option(..., "--src", help="source sentences, one a line"),
    ref: Path = typer.Option(..., "--ref", help="reference translations, one a line"),
    beam: int = BEAM,
    device: str = DEVICE,
) -> None:
    """Translate --src and score it against --ref: BLEU and chrF with their sacrebleu signatures."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.decode import evaluate as evaluate_model, read_lines

    sources, refs = read_lines(src, "source file"), read_lines(ref, "reference file")
    model, run_cfg, src_tok, tgt_tok = load_checkpoint(checkpoint, _pick_device(device))
    _, scores = evaluate_model(model, src_tok, tgt_tok, sources, refs, tgt_lang=run_cfg.data.tgt_lang, beam=beam)
    out.print(f"BLEU {scores['bleu']:.2f}  {scores['bleu_signature']}", highlight=False)
    out.print(f"chrF {scores['chrf']:.2f}  {scores['chrf_signature']}", highlight=False)


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
    start_from: Optional[Path] = typer.Option(None, "--start-from", metavar="CONFIG", help="a training config "
                                              "(e.g. studies/baseline.yaml, an exported best): its values of the "
                                              "searched fields are tried first, after the spec's search_start"),
) -> None:
    """Validate a spec and store it as a new study (nothing is written for an invalid spec);
    its start configurations (search_start, --start-from) are queued as its first trials."""
    import optuna

    from mt_tune.config import format_scale
    from mt_tune.search.spec import load_spec
    from mt_tune.search.urls import mask_url, resolve_url
    from mt_tune.search.study import create_study
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
    from mt_tune.search.urls import mask_url, resolve_url
    from mt_tune.search.study import list_studies, studies_table

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
    from mt_tune.search.urls import mask_url, resolve_url
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
    from mt_tune.search.launcher import EXIT_INTERRUPTED, launch_workers, run_this_process

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


@app.command()
def dashboard(
    storage: Optional[str] = typer.Option(None, "--storage", help="storage URL [default: $MT_TUNE_STORAGE, "
                                          "else the embedded sqlite:///mt-tune.db]"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to listen on (0.0.0.0: every interface)"),
    port: int = typer.Option(8080, "--port", help="port to listen on"),
) -> None:
    """Serve optuna-dashboard on the study storage: trials, curves, notes (Ctrl-C to stop)."""
    from mt_tune.search.dashboard import serve

    serve(storage, host, port, log=lambda line: out.print(line, markup=False, highlight=False, soft_wrap=True))


@app.command()
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
