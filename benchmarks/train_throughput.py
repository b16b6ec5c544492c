"""Training throughput on the bundled sample, CPU: mt-tune's Trainer against a plain loop.

The reference is a training loop written the common way: torch.nn.Transformer (batch_first),
batches of a fixed number of sentences in random order padded to the batch maximum, the same
d_model / layers / heads / ffn / vocabulary / dropout / label smoothing / AdamW. mt-tune runs
its own update (Trainer._update) on its length-bucketed token batches, which a background thread
builds ahead (as in training; the reference builds its batches inline). Both train over the same
number of target tokens, alternated `--rounds` times in one process; the figure is non-pad
target tokens per second (eos included), the median of the rounds. --cpu-time divides by the
process's CPU seconds instead of wall seconds (all its threads, the batch thread included): on a
shared machine, with --threads 1, a figure that other processes' load barely moves.

    python benchmarks/train_throughput.py [--config studies/baseline.yaml] [--tokens 40000] [--cpu-time]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from mt_tune.config import load_run_config
from mt_tune.data import prepare
from mt_tune.train import Trainer


class ReferenceTransformer(nn.Module):
    """nn.Transformer with embeddings, sinusoidal positions and a tied output projection."""

    def __init__(self, vocab: int, d_model: int, heads: int, enc_layers: int, dec_layers: int, ffn: int,
                 dropout: float):
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model, padding_idx=0)
        self.transformer = nn.Transformer(d_model, heads, enc_layers, dec_layers, ffn, dropout, batch_first=True,
                                          norm_first=True)
        position = torch.arange(1024).unsqueeze(1)
        div = torch.exp(torch.arange(0, d_model, 2) * (-math.log(10000.0) / d_model))
        table = torch.zeros(1024, d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(position * div), torch.cos(position * div)
        self.register_buffer("positions", table)
        self.scale = math.sqrt(d_model)
        self.dropout = nn.Dropout(dropout)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embed(ids) * self.scale + self.positions[: ids.size(1)])

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        causal = torch.ones(tgt_in.size(1), tgt_in.size(1), dtype=torch.bool).triu(1)  # True: masked
        hidden = self.transformer(self.embed_tokens(src), self.embed_tokens(tgt_in), tgt_mask=causal,
                                  src_key_padding_mask=src == 0, tgt_key_padding_mask=tgt_in == 0,
                                  memory_key_padding_mask=src == 0, tgt_is_causal=True)
        return hidden @ self.embed.weight.T


def padded_batches(shard, sentences: int, seed: int):
    """Fixed-size batches of sentences in random order, padded to the batch maximum, forever."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(shard))
        for start in range(0, len(order) - sentences + 1, sentences):
            pairs = [shard.pair(int(i)) for i in order[start:start + sentences]]
            s_len = max(len(s) for s, _ in pairs) + 1
            t_len = max(len(t) for _, t in pairs) + 1
            src = torch.zeros(sentences, s_len, dtype=torch.long)
            tgt_in = torch.zeros(sentences, t_len, dtype=torch.long)
            tgt_out = torch.zeros(sentences, t_len, dtype=torch.long)
            for row, (s, t) in enumerate(pairs):
                src[row, : len(s) + 1] = torch.tensor([*s.tolist(), 3])
                tgt_in[row, : len(t) + 1] = torch.tensor([2, *t.tolist()])
                tgt_out[row, : len(t) + 1] = torch.tensor([*t.tolist(), 3])
            yield src, tgt_in, tgt_out


clock = time.perf_counter  # time.process_time with --cpu-time


def time_reference(model, optimizer, batches, tokens: int, label_smoothing: float) -> float:
    model.train()
    done, start = 0, clock()
    while done < tokens:
        src, tgt_in, tgt_out = next(batches)
        logits = model(src, tgt_in)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt_out.reshape(-1), ignore_index=0,
                               label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        done += int((tgt_out != 0).sum())
    return done / (clock() - start)


def time_trainer(trainer: Trainer, tokens: int) -> float:
    done, start = 0, clock()
    while done < tokens:
        done += trainer._update()[0]
    return done / (clock() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="studies/baseline.yaml")
    parser.add_argument("--tokens", type=int, default=40_000, help="target tokens per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sentences", type=int, default=64, help="sentences per reference batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cpu-time", action="store_true", help="tokens per CPU second, not per wall second")
    args = parser.parse_args()
    global clock
    clock = time.process_time if args.cpu_time else time.perf_counter
    unit = "CPU-s" if args.cpu_time else "s"

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer with norm_first
    cfg = load_run_config(args.config, [f"train.threads={args.threads}", "train.device=cpu"])
    data = prepare(cfg.data)
    trainer = Trainer(cfg, None, data=data, log=lambda *a: None)
    m, tc = trainer.cfg.model, trainer.cfg.train
    torch.manual_seed(0)
    reference = ReferenceTransformer(m.tgt_vocab_size, m.d_model, m.n_heads, m.enc_layers, m.dec_layers,
                                     m.ffn_dim, m.dropout)
    ref_optimizer = torch.optim.AdamW(reference.parameters(), lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)
    ref_batches = padded_batches(data.train, args.sentences, seed=0)

    print(f"model: {m.enc_layers}+{m.dec_layers} layers, d_model {m.d_model}, {m.n_heads} heads, ffn "
          f"{m.ffn_dim}, vocab {m.tgt_vocab_size}, dropout {m.dropout}; mt-tune {trainer.n_params:,} params, "
          f"reference {sum(p.numel() for p in reference.parameters()):,}")
    print(f"mt-tune: token batches of max_tokens {tc.max_tokens}; reference: {args.sentences} sentences per "
          f"batch; {args.threads} threads; {args.tokens:,} target tokens per round")
    time_reference(reference, ref_optimizer, ref_batches, 2_000, tc.label_smoothing)  # warm-up
    time_trainer(trainer, 2_000)
    ours, theirs = [], []
    for r in range(args.rounds):
        theirs.append(time_reference(reference, ref_optimizer, ref_batches, args.tokens, tc.label_smoothing))
        ours.append(time_trainer(trainer, args.tokens))
        print(f"round {r + 1}: reference {theirs[-1]:,.0f} tok/{unit} | mt-tune {ours[-1]:,.0f} tok/{unit}")
    trainer.batches.close()  # the thread that builds the Trainer's batches ahead
    ours_median, theirs_median = statistics.median(ours), statistics.median(theirs)
    print(f"median target tokens/{unit}: reference (nn.Transformer, padded {args.sentences}-sentence batches) "
          f"{theirs_median:,.0f} | mt-tune Trainer {ours_median:,.0f} | ratio {ours_median / theirs_median:.2f}x")


if __name__ == "__main__":
    main()
