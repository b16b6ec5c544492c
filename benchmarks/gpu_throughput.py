"""Training throughput and MFU on a GPU: 6+6 layers, d_model 512, bf16, with and without
gradient checkpointing.

The Trainer itself trains on the bundled sample (joint vocabulary of 4,000 pieces), first a few
updates to warm the GPU up, then `--steps` measured updates per config. Printed per config:
target tokens/s, updates/s, model FLOPs utilisation (the Trainer's figure: 6 x parameters x
tokens / 2 against the GPU's dense bf16 peak) and peak memory; and the cost of checkpointing
as a ratio of tokens/s against plain bf16 (the baseline, measured in the same run).

    python benchmarks/gpu_throughput.py [--steps 100] [--max-tokens 8192]

Without CUDA it says so and exits 0; `--device cpu` runs it anyway (very slowly, bf16 on a CPU:
a smoke test; peak memory is then the process's largest resident set so far).
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from mt_tune.config import build_run_config
from mt_tune.data import prepare
from mt_tune.train import Trainer

MODEL = {"d_model": 512, "n_heads": 8, "enc_layers": 6, "dec_layers": 6, "ffn_dim": 2048, "dropout": 0.1}
CONFIGS = [("bf16", {}), ("bf16 + checkpointing", {"grad_checkpointing": True})]


def run_config(args: argparse.Namespace, cache: str, model: dict, steps: int):
    return build_run_config({
        "data": {"format": "sample", "vocab_size": 4000, "valid_size": 500, "cache_dir": cache},
        "model": {**MODEL, **model},
        "train": {"device": args.device, "amp": "bf16", "max_tokens": args.max_tokens, "lr": 1e-3,
                  "warmup_steps": 10, "max_steps": steps, "eval_every": steps, "bleu_sentences": 0,
                  "keep_best_by": "val_loss", "log_every": max(steps, 1)},
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="measured updates per config")
    parser.add_argument("--warmup", type=int, default=10, help="updates before measuring (not counted)")
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device here: nothing measured (this benchmark is for a GPU machine)")
        return

    quiet = lambda *a, **k: None  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="mt-tune-gpu-bench-") as cache:
        data = prepare(run_config(args, cache, {}, 1).data)
        rows = {}
        for name, model in CONFIGS:
            Trainer(run_config(args, cache, model, args.warmup), None, data=data, log=quiet).fit()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            result = Trainer(run_config(args, cache, model, args.steps), None, data=data, log=quiet).fit()
            rows[name] = result
            print(f"{name}: {result.tokens_per_s:,.0f} target tokens/s, {result.updates_per_s:.2f} updates/s, "
                  f"{result.tokens_per_update:,.0f} target tokens/update, MFU "
                  + (f"{result.mfu:.1%}" if result.mfu is not None else "- (GPU peak unknown)")
                  + f", peak memory {result.peak_memory_bytes / 2**30:.2f} GiB, {result.n_params:,} parameters",
                  flush=True)
    base, ckpt = rows["bf16"], rows["bf16 + checkpointing"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"\n{device}: checkpointing runs at {ckpt.tokens_per_s / base.tokens_per_s:.2f}x the tokens/s of plain "
          f"bf16 and uses {ckpt.peak_memory_bytes / max(base.peak_memory_bytes, 1):.2f}x its peak memory")


if __name__ == "__main__":
    main()
