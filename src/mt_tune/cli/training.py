"""The commands that work on data and models: `mt-tune data check|prepare`, `train`,
`estimate`, `translate`, `evaluate`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mt_tune.cli.options import BEAM, DEVICE, OVERRIDES, console, out, pick_device
from mt_tune.errors import UserError

commands = typer.Typer()
data_app = typer.Typer(help="Check and prepare corpora: report, vocabulary, token shards.", no_args_is_help=True)
commands.add_typer(data_app, name="data")


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


@commands.command()
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

    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

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


@commands.command()
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




@commands.command()
def translate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by mt-tune train (last.pt or best.pt)"),
    input_file: Optional[Path] = typer.Option(None, "-i", "--input", help="source sentences, one a line "
                                              "[default: standard input]"),
    beam: int = BEAM,
    device: str = DEVICE,
) -> None:
    """Translate sentences, one a line, to standard output in the same order."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.decode import read_lines
    from mt_tune.decode import translate as translate_texts

    lines = read_lines(input_file, "input file") if input_file else sys.stdin.read().splitlines()
    model, _, src_tok, tgt_tok = load_checkpoint(checkpoint, pick_device(device))
    for line in translate_texts(model, src_tok, tgt_tok, lines, beam=beam):
        sys.stdout.write(line + "\n")


@commands.command()
def evaluate(
    checkpoint: Path = typer.Argument(..., help="a checkpoint written by mt-tune train (last.pt or best.pt)"),
    src: Path = typer.Option(..., "--src", help="source sentences, one a line"),
    ref: Path = typer.Option(..., "--ref", help="reference translations, one a line"),
    beam: int = BEAM,
    device: str = DEVICE,
) -> None:
    """Translate --src and score it against --ref: BLEU and chrF with their sacrebleu signatures."""
    from mt_tune.checkpoint import load_checkpoint
    from mt_tune.decode import evaluate as evaluate_model
    from mt_tune.decode import read_lines

    sources, refs = read_lines(src, "source file"), read_lines(ref, "reference file")
    model, run_cfg, src_tok, tgt_tok = load_checkpoint(checkpoint, pick_device(device))
    _, scores = evaluate_model(model, src_tok, tgt_tok, sources, refs, tgt_lang=run_cfg.data.tgt_lang, beam=beam)
    out.print(f"BLEU {scores['bleu']:.2f}  {scores['bleu_signature']}", highlight=False)
    out.print(f"chrF {scores['chrf']:.2f}  {scores['chrf_signature']}", highlight=False)
