"""Peak GPU memory of training steps against mt_tune.memory.estimate_memory.

For three configs (6+6 layers, d_model 512, vocabulary 32k: bf16, bf16 with gradient
checkpointing, fp32) it runs a few training steps the way the Trainer does (autocast, label-
smoothed summed cross-entropy, clipping, fused AdamW, zero_grad(set_to_none=True)) on batches of
exactly train.max_tokens tokens a side, and prints the estimate, torch.cuda.max_memory_allocated
and their ratio (target: within 15 %), and how much checkpointing saves.

    python benchmarks/memory_check.py [--max-tokens 8192] [--length 32] [--steps 3]

Needs a CUDA GPU; elsewhere it says so and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import torch
import torch.nn.functional as F

from mt_tune.config import ModelConfig, TrainConfig
from mt_tune.memory import estimate_memory, format_bytes
from mt_tune.model import Seq2SeqTransformer

VOCAB = 32_000
BASE = ModelConfig(d_model=512, n_heads=8, enc_layers=6, dec_layers=6, ffn_dim=2048, dropout=0.1,
                   src_vocab_size=VOCAB, tgt_vocab_size=VOCAB)
CONFIGS = [
    ("bf16", BASE, "bf16"),
    ("bf16 + checkpointing", dataclasses.replace(BASE, grad_checkpointing=True), "bf16"),
    ("fp32", BASE, None),
]


def measure(model_cfg: ModelConfig, amp: str | None, max_tokens: int, length: int, steps: int) -> int:
    """torch.cuda.max_memory_allocated over `steps` training steps after one warm-up step."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = Seq2SeqTransformer(model_cfg).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    dtype = {"bf16": torch.bfloat16, None: None}[amp]
    batch = max_tokens // length
    src = torch.randint(4, VOCAB, (batch, length), device=device)
    tgt = torch.randint(4, VOCAB, (batch, length + 1), device=device)
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            logits = model(src, tgt_in)
            loss = F.cross_entropy(logits.view(-1, VOCAB), tgt_out.reshape(-1), ignore_index=0,
                                   label_smoothing=0.1, reduction="sum") / tgt_out.numel()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # allocates the optimizer state
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    model = optimizer = None  # step() holds them: drop both before the cache is emptied
    torch.cuda.empty_cache()
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-tokens", type=int, default=8192)
    parser.add_argument("--length", type=int, default=32, help="tokens per sentence in the synthetic batches")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("memory_check needs a CUDA GPU (torch.cuda.max_memory_allocated); nothing measured.")
        return 0
    print(f"device: {torch.cuda.get_device_name()}, max_tokens {args.max_tokens}, sentences of {args.length} tokens")
    train_cfg = TrainConfig(device="cuda", max_tokens=args.max_tokens)
    peaks = {}
    print(f"{'config':<24}{'estimate':>12}{'measured':>12}{'ratio':>8}")
    for name, model_cfg, amp in CONFIGS:
        estimate = estimate_memory(model_cfg, train_cfg, amp)["total"]
        peaks[name] = measure(model_cfg, amp, args.max_tokens, args.length, args.steps)
        ratio = estimate / peaks[name]
        flag = "" if abs(ratio - 1) <= 0.15 else "  (outside 15 %)"
        print(f"{name:<24}{format_bytes(estimate):>12}{format_bytes(peaks[name]):>12}{ratio:>8.2f}{flag}")
    saved = 1 - peaks["bf16 + checkpointing"] / peaks["bf16"]
    print(f"gradient checkpointing saves {saved:.0%} of the bf16 peak "
          f"({format_bytes(peaks['bf16'] - peaks['bf16 + checkpointing'])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
