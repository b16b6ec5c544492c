"""The Trainer: one training run of a seq2seq Transformer from a RunConfig.

    result = Trainer(cfg, out_dir).fit()

What one update does: take `accum_steps` length-bucketed batches (times the number of DDP
processes), sum the label-smoothed cross-entropy over their target tokens and divide by the
target tokens of the whole update (so accumulation equals one bigger batch), backward under
autocast, clip, AdamW step with the learning rate of `lr_at(step)`.

Every `eval_every` updates and at the end: validation loss per target token and per target
character, BLEU/chrF on the first `bleu_sentences` validation sentences, checkpoints (last.pt,
and best.pt when `keep_best_by` improved), then the hooks. A hook may raise StopTraining to end
the run cleanly; any other exception propagates. The Trainer knows nothing of Optuna.
"""

from __future__ import annotations

import copy
import gc
import math
import random
import resource
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mt_tune import distributed
from mt_tune.checkpoint import (CHECKPOINT_VERSION, bytes_to_tensor, load_checkpoint, read_checkpoint,
                                rng_state, save_atomic, set_rng_state)
from mt_tune.config import RunConfig, TrainConfig, to_dict
from mt_tune.errors import ConfigError, UserError

__all__ = ["Trainer", "RunResult", "EvalResult", "StopTraining", "TrainingError", "NaNLossError",
           "OutOfMemoryError", "lr_at", "load_checkpoint", "free_device_memory"]

PAD_ID = 0
# train.compile: padded lengths are rounded up to a multiple of this, and the pace of a time
# budget is measured after this many updates of each session (those that compile).
COMPILE_PAD_MULTIPLE = 8
COMPILE_WARMUP_UPDATES = 2
LOWER_IS_BETTER = {"val_loss": True, "val_loss_per_char": True, "bleu": False, "chrf": False}

# Dense bf16 peak FLOP/s by GPU name, for MFU; first matching substring wins.
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                   ("L40S", 362e12), ("A10G", 70e12), ("RTX 4090", 165e12)]


# --- results and errors -------------------------------------------------------------------


@dataclass
class EvalResult:
    step: int
    val_loss: float
    val_loss_per_char: float
    bleu: float | None
    chrf: float | None
    lr: float
    train_loss: float
    tokens_per_s: float
    elapsed_s: float


@dataclass
class RunResult:
    stop_reason: str
    steps: int
    history: list[EvalResult]
    best: dict[str, tuple[float, int]]
    tokens_per_s: float
    updates_per_s: float
    peak_memory_bytes: int
    n_params: int
    wall_s: float
    mfu: float | None
    tokens_per_update: float = 0.0  # mean target tokens per update, all processes together
    bleu_signature: str | None = None
    out_dir: Path | None = None


class StopTraining(Exception):
    """Raised by a hook to end fit() cleanly; `reason` becomes RunResult.stop_reason."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TrainingError(RuntimeError):
    """A run that cannot go on; `stop_reason` says why, `step` where."""

    stop_reason = "error"

    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step


class NaNLossError(TrainingError):
    stop_reason = "nan_loss"


class OutOfMemoryError(TrainingError):
    stop_reason = "oom"

    def __init__(self, message: str, step: int, estimate_bytes: int | None):
        super().__init__(message, step)
        self.estimate_bytes = estimate_bytes


# --- pieces that are pure functions -------------------------------------------------------


def lr_at(step: int, tc: TrainConfig, end_step: float | None = None) -> float:
    """Learning rate of update number `step` (1-based): linear warmup to tc.lr over
    tc.warmup_steps, then inverse-sqrt, or cosine / linear down to min_lr at `end_step`
    (default max_steps); never below min_lr after warmup."""
    warmup = tc.warmup_steps
    if step <= warmup:
        return tc.lr * step / warmup
    if tc.schedule == "inverse_sqrt":
        value = tc.lr * math.sqrt(max(warmup, 1) / step)
    else:
        end = tc.max_steps if end_step is None else min(end_step, tc.max_steps)
        progress = min(1.0, (step - warmup) / max(1.0, end - warmup))
        shape = 0.5 * (1 + math.cos(math.pi * progress)) if tc.schedule == "cosine" else 1 - progress
        value = tc.min_lr + (tc.lr - tc.min_lr) * shape
    return max(value, tc.min_lr)


def projected_end_step(step: int, elapsed_s: float, tc: TrainConfig,
                       since: tuple[int, float] = (0, 0.0)) -> float | None:
    """The step at which max_minutes runs out at the pace so far (None without a time limit).
    A time-limited run otherwise ends wherever the clock stops it, in mid-schedule: budgeted
    training ends best with the learning rate decayed (Li et al. 2020, "Budgeted Training").
    `since` (step, elapsed seconds): the pace is measured from there on, as after the updates
    in which torch.compile compiled, which would make it look slower than it is."""
    step0, elapsed0 = since
    if tc.max_minutes <= 0 or step <= step0 or elapsed_s <= elapsed0:
        return None
    return step0 + (step - step0) * (tc.max_minutes * 60 - elapsed0) / (elapsed_s - elapsed0)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device: {name} asked for, but no CUDA device is available (use cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device: {name}: this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def pick_amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """train.amp -> autocast dtype, decided once: auto is bf16 where the GPU has it, fp16 on
    older GPUs, off on CPU."""
    if amp == "off":
        return None
    if device.type == "cpu":
        if amp == "fp16":
            raise ConfigError("train.amp: fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.bfloat16 if amp == "bf16" else None
    # Emulated bf16 (V100, T4) runs slower than fp16 with a GradScaler: native support only.
    bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
    if amp == "bf16" and not bf16_ok:
        raise ConfigError(f"train.amp: bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16")
    if amp == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def free_device_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage, return the CUDA allocator's cached blocks to the driver and reset its
    peak statistics: what a worker does between trials, so each trial starts from a clean
    allocator (and reports its own peak), and after an OOM, once nothing refers to the failed
    run's tensors any more. A no-op for the allocator on CPU."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss_kb if sys.platform == "darwin" else rss_kb * 1024)  # macOS reports bytes, Linux KiB


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def optimizer_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on weight matrices only: not on norms, biases or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "emb" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# --- the Trainer ---------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: Path | str | None, data: Any = None,
                 hooks: Iterable[Callable] = (), resume: bool = False, log: Callable = print,
                 on_step: Callable[[int, dict], None] | None = None):
        """`on_step(step, info)`, if given, is called after every update (for a progress bar);
        info holds the latest logged loss, lr, tok_s and val_loss."""
        from mt_tune.data import BatchIterator, prepare
        from mt_tune.data.batching import TrainBatches
        from mt_tune.model import Seq2SeqTransformer

        self.cfg = copy.deepcopy(cfg)
        tc = self.cfg.train
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.hooks = list(hooks)
        self.on_step = on_step
        self.device = resolve_device(tc.device)
        self.dist = distributed.from_env(self.device.type)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.log = log if self.dist.is_main else (lambda *args, **kwargs: None)
        if tc.threads > 0:
            torch.set_num_threads(tc.threads)
        self.amp_dtype = pick_amp_dtype(tc.amp, self.device)
        if self.device.type == "cuda" and self.amp_dtype is None:
            # fp32 matmuls on tensor cores (TF32): several times faster on Ampere and later,
            # within training noise for a Transformer.
            torch.set_float32_matmul_precision("high")

        seed_everything(tc.seed)
        self.data = data if data is not None else prepare(self.cfg.data)
        self.src_tok, self.tgt_tok = self.data.src_tok, self.data.tgt_tok
        self.cfg.model.src_vocab_size = self.src_tok.vocab_size
        self.cfg.model.tgt_vocab_size = self.tgt_tok.vocab_size
        self.model = Seq2SeqTransformer(self.cfg.model).to(self.device)
        self.n_params = self.model.num_params()
        # Weight averaging (Polyak): a copy of the parameters that trails the trained ones.
        self.ema = ({n: p.detach().clone() for n, p in self.model.named_parameters()}
                    if tc.ema_decay > 0 else None)
        if self.dist.rank:  # same initial weights everywhere, different dropout per process
            torch.manual_seed(tc.seed + 1_000_003 * self.dist.rank)

        self.ddp = None
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
            self.train_model = self.ddp
        if tc.compile:
            # Batch shapes change every batch (lengths are padded to multiples of 8, batch
            # sizes vary freely): one shape-generic graph, not a recompilation per new shape.
            self.train_model = torch.compile(self.train_model, dynamic=True)

        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(optimizer_groups(self.model, tc.weight_decay), lr=tc.lr,
                                           betas=(tc.beta1, tc.beta2), eps=tc.eps, fused=fused or None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.batches = TrainBatches(
            BatchIterator(self.data.train, tc.max_tokens, seed=tc.seed, shuffle=True,
                          pad_multiple=COMPILE_PAD_MULTIPLE if tc.compile else 1),
            tc.accum_steps, rank=self.dist.rank, world_size=self.dist.world_size, device=self.device)
        self.valid_batches = lambda: BatchIterator(self.data.valid, tc.max_tokens, seed=tc.seed, shuffle=False)
        self.valid_chars = sum(len(s) for s in self.data.valid_ref)

        self.step = 0
        self.history: list[EvalResult] = []
        self.best: dict[str, tuple[float, int]] = {}
        self.bleu_signature: str | None = None
        self._loss_sum = torch.zeros((), device=self.device)  # training loss since the last log line
        self._loss_updates = 0
        self._started = time.perf_counter()  # reset when fit() starts
        self.elapsed_before = 0.0  # wall seconds of earlier sessions of this run (resume)
        self.end_step: float | None = None  # where the decay ends under max_minutes; see lr_at
        if resume:
            self._resume()
        self._stream = iter(self.batches)  # this process's batches only, built in a thread
        # (step, elapsed s) from which the pace that projects a time budget's end is measured:
        # after the first updates of this session under torch.compile, which compile.
        self._pace_since = (0, 0.0)
        self._compile_updates_left = COMPILE_WARMUP_UPDATES if tc.compile else 0

    def autocast(self):
        """A fresh autocast context for the chosen dtype (a no-op without AMP)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- checkpoints ----------------------------------------------------------------------

    @contextmanager
    def averaged_weights(self):
        """Inside the block the model holds the moving average of its weights (a no-op without
        train.ema_decay); evaluation and checkpoints use it."""
        if self.ema is None:
            yield
            return
        params = dict(self.model.named_parameters())
        trained = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(trained[n])

    def _checkpoint(self) -> dict:
        with self.averaged_weights():
            weights = {k: v.clone() if self.ema is not None else v for k, v in self.model.state_dict().items()}
        extra = {"train_weights": self.model.state_dict()} if self.ema is not None else {}
        return {
            **extra,
            "version": CHECKPOINT_VERSION,
            "config": to_dict(self.cfg),
            "model": weights,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "rng": rng_state(),
            "data_state": self.batches.state_dict(),
            "best": {k: [v, s] for k, (v, s) in self.best.items()},
            "elapsed_s": self.elapsed_before + time.perf_counter() - self._started,
            "history": [asdict(r) for r in self.history],
            "src_spm": bytes_to_tensor(self.src_tok.model_bytes()),
            "tgt_spm": bytes_to_tensor(self.tgt_tok.model_bytes()),
        }

    def _save(self, improved: bool) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        last = self.out_dir / "last.pt"
        save_atomic(self._checkpoint(), last)
        if improved:  # same content: copy the file rather than serialise again
            tmp = self.out_dir / ".best.pt.tmp"
            shutil.copyfile(last, tmp)
            tmp.replace(self.out_dir / "best.pt")

    def _resume(self) -> None:
        if self.out_dir is None:
            raise UserError("resume: no output directory to resume from")
        path = self.out_dir / "last.pt"
        if not path.is_file():
            raise UserError(f"{path}: no checkpoint to resume from")
        ckpt = read_checkpoint(path)  # on the CPU: the RNG states must stay there
        if ckpt["config"]["model"] != to_dict(self.cfg.model):
            raise UserError(f"{path}: the checkpoint's model config differs from this run's; "
                            f"resume with the same model settings")
        self.model.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
        if self.ema is not None:  # the average was saved as "model" (or, without one, starts here)
            self.ema = {n: ckpt["model"][n].to(self.device, copy=True) for n in self.ema}
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])
        try:
            self.batches.load_state_dict(ckpt["data_state"])
        except ValueError as e:
            raise UserError(f"{path}: {e}") from None
        self.best = {k: (v, s) for k, (v, s) in ckpt["best"].items()}
        self.elapsed_before = float(ckpt.get("elapsed_s", 0.0))
        self.history = [EvalResult(**r) for r in ckpt["history"]]
        set_rng_state(ckpt["rng"])
        if self.dist.rank:
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * self.dist.rank + self.step)
        self.log(f"resumed from {path} at step {self.step}")

    # --- one update -----------------------------------------------------------------------

    def _update(self) -> tuple[int, int]:
        """One optimizer step; returns (target tokens, source tokens) of the whole update."""
        tc = self.cfg.train
        world = self.dist.world_size
        # This process's share of the update. Each batch knows the update's total tokens (all
        # processes'), counted from the batch plan's lengths: no communication. A stream of
        # plain batches (world size 1) is the whole update.
        mine = [next(self._stream) for _ in range(tc.accum_steps)]
        if mine[0].update_tokens is not None:
            n_src, n_tgt = mine[0].update_tokens
        else:
            n_src, n_tgt = sum(b.n_src_tokens for b in mine), sum(b.n_tgt_tokens for b in mine)
        # DDP averages gradients over processes: scale by `world` so the result is the sum
        # over all target tokens of the update divided by their number.
        scale = world / n_tgt
        lr = lr_at(self.step + 1, tc, self.end_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.train_model.train()
        non_blocking = self.device.type == "cuda"  # the batches are pinned for CUDA
        for i, batch in enumerate(mine):
            batch = batch.to(self.device, non_blocking=non_blocking)
            last = i == len(mine) - 1
            with self.ddp.no_sync() if self.ddp is not None and not last else nullcontext():
                with self.autocast():
                    logits = self.train_model(batch.src, batch.tgt_in)
                    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), batch.tgt_out.view(-1),
                                           ignore_index=PAD_ID, label_smoothing=tc.label_smoothing,
                                           reduction="sum") * scale
                self.scaler.scale(loss).backward()
            self._loss_sum += loss.detach().float()
        if tc.clip_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            # a short average early on, when the first weights are far from the later ones
            decay = min(tc.ema_decay, (1 + self.step) / (10 + self.step))
            torch._foreach_lerp_(list(self.ema.values()), [p.detach() for p in self.model.parameters()],
                                 1 - decay)
        self._loss_updates += 1
        if self._compile_updates_left:
            self._compile_updates_left -= 1
            if not self._compile_updates_left:
                self._pace_since = (self.step + 1, self.elapsed_before + time.perf_counter() - self._started)
        return n_tgt, n_src

    def _mean_train_loss(self) -> float:
        """Mean training loss since the last call; raises NaNLossError on NaN/inf. In DDP all
        processes call it at the same steps (it all-reduces)."""
        total = self._loss_sum.clone()
        if self.dist.enabled:
            torch.distributed.all_reduce(total)
            total /= self.dist.world_size
        value = total.item() / max(1, self._loss_updates)
        self._loss_sum.zero_()
        self._loss_updates = 0
        if not math.isfinite(value):
            raise NaNLossError(f"training loss is {value} at step {self.step} "
                               f"(lr {lr_at(self.step, self.cfg.train, self.end_step):.3g}); lower train.lr or "
                               f"raise train.warmup_steps", self.step)
        return value

    def _check_time(self, budget_s: float) -> bool:
        """True when the time budget is spent; also moves the end of the lr decay to the step
        where the budget is projected to run out. Process 0's clock decides for every process,
        so all of them use the same learning rate."""
        elapsed = self.elapsed_before + time.perf_counter() - self._started
        since_step, since_s = self._pace_since
        if self.dist.enabled:
            t = torch.tensor([elapsed, since_s], dtype=torch.float64, device=self.device)
            torch.distributed.broadcast(t, src=0)
            elapsed, since_s = t.tolist()
        self.end_step = projected_end_step(self.step, elapsed, self.cfg.train, since=(since_step, since_s))
        return elapsed >= budget_s

    def _agree(self, flag: bool) -> bool:
        """Process 0's decision, for every process (a no-op without DDP)."""
        if not self.dist.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())

    # --- evaluation -----------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float, float | None, float | None]:
        """(val loss per target token, per target character, BLEU, chrF) of the current model
        (of its averaged weights with train.ema_decay)."""
        with self.averaged_weights():
            return self._evaluate()

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float, float | None, float | None]:
        tc = self.cfg.train
        self.model.eval()
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        with self.autocast():
            for batch in self.valid_batches():
                batch = batch.to(self.device)
                logits = self.model(batch.src, batch.tgt_in)
                nll += F.cross_entropy(logits.view(-1, logits.size(-1)).float(), batch.tgt_out.view(-1),
                                       ignore_index=PAD_ID, reduction="sum").double()
                tokens += batch.n_tgt_tokens
        total = nll.item()
        bleu = chrf = None
        n = min(tc.bleu_sentences, len(self.data.valid_src))
        if n > 0:
            from mt_tune.decode import score, translate

            with self.autocast():
                hyps = translate(self.model, self.src_tok, self.tgt_tok, self.data.valid_src[:n],
                                 beam=tc.eval_beam, max_tokens=tc.max_tokens, device=self.device)
            scores = score(hyps, self.data.valid_ref[:n], tgt_lang=self.cfg.data.tgt_lang)
            bleu, chrf = scores["bleu"], scores["chrf"]
            self.bleu_signature = scores["bleu_signature"]
        return total / max(1, tokens), total / max(1, self.valid_chars), bleu, chrf

    def _record(self, result: EvalResult) -> bool:
        """Update self.best with an evaluation; True when keep_best_by improved."""
        improved = False
        for metric, lower in LOWER_IS_BETTER.items():
            value = getattr(result, metric)
            if value is None:
                continue
            old = self.best.get(metric)
            if old is None or (value < old[0] if lower else value > old[0]):
                self.best[metric] = (value, result.step)
                improved |= metric == self.cfg.train.keep_best_by
        return improved

    # --- the loop -------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Train until max_steps, max_minutes or a hook's StopTraining."""
        try:
            return self._fit()
        except torch.cuda.OutOfMemoryError as e:
            # Keep only the text: the exception's traceback holds the frames of the failed
            # step, and with them its activations.
            reason = str(e).splitlines()[0] if str(e) else "out of memory"
        finally:
            self.batches.close()  # the batch thread ends with the run, however it ends
            distributed.close(self.dist)
        # Raised outside the handler, so the new error has no __context__ that would keep
        # the failed step's tensors alive; freed before it goes up to the caller.
        from mt_tune.memory import estimate_memory

        self.optimizer.zero_grad(set_to_none=True)
        free_device_memory(self.device)
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype)
        estimate = int(estimate_memory(self.cfg.model, self.cfg.train, amp_dtype=amp)["total"])
        raise OutOfMemoryError(f"CUDA out of memory at step {self.step} (estimated need "
                               f"{estimate / 2**30:.2f} GiB): {reason}", self.step, estimate)

    def _fit(self) -> RunResult:
        tc = self.cfg.train
        start = self._started = time.perf_counter()
        budget_s = tc.max_minutes * 60 if tc.max_minutes > 0 else None
        self.log(f"run config:\n{yaml.safe_dump(to_dict(self.cfg), sort_keys=False).rstrip()}")
        self.log(f"model: {self.n_params:,} parameters | device {self.device}"
                 f"{f' x{self.dist.world_size} processes' if self.dist.enabled else ''} | "
                 f"amp {self.amp_dtype or 'off'} | {len(self.data.train):,} training pairs")
        first_step = self.step
        tokens = src_tokens = 0
        eval_s = 0.0  # time spent evaluating and checkpointing, excluded from throughput
        window_tokens, window_start = 0, start
        window_losses: list[float] = []
        info: dict[str, Any] = {"loss": None, "lr": None, "tok_s": None, "val_loss": None}
        stop_reason = "max_steps"

        while self.step < tc.max_steps:
            n_tgt, n_src = self._update()
            self.step += 1
            tokens, src_tokens, window_tokens = tokens + n_tgt, src_tokens + n_src, window_tokens + n_tgt
            at_eval = self.step % tc.eval_every == 0 or self.step >= tc.max_steps
            at_log = self.step % tc.log_every == 0
            time_up = False
            if budget_s is not None and (at_log or at_eval or not self.dist.enabled):
                time_up = self._check_time(budget_s)
            if at_log or at_eval or time_up:
                window_losses.append(self._mean_train_loss())
                train_s = time.perf_counter() - start - eval_s
                info.update(loss=window_losses[-1], lr=lr_at(self.step, tc, self.end_step), tok_s=tokens / max(train_s, 1e-9))
                if at_log:
                    self.log(f"step {self.step:>6} | loss {info['loss']:.3f} | lr {info['lr']:.2e} | "
                             f"{info['tok_s']:,.0f} tok/s | {(self.step - first_step) / max(train_s, 1e-9):.2f} upd/s")
            if self.on_step is not None and self.dist.is_main:
                self.on_step(self.step, info)
            if at_eval or time_up:
                t_eval = time.perf_counter()
                window_s = t_eval - window_start
                stop = None
                if self.dist.is_main:
                    val_loss, per_char, bleu, chrf = self.evaluate()
                    result = EvalResult(step=self.step, val_loss=val_loss, val_loss_per_char=per_char,
                                        bleu=bleu, chrf=chrf, lr=lr_at(self.step, tc, self.end_step),
                                        train_loss=float(np.mean(window_losses)),
                                        tokens_per_s=window_tokens / max(window_s, 1e-9),
                                        elapsed_s=t_eval - start)
                    self.history.append(result)
                    self._save(self._record(result))
                    info["val_loss"] = val_loss
                    self.log(f"eval {self.step:>6} | val loss {val_loss:.3f} | per char {per_char:.4f}"
                             + (f" | BLEU {bleu:.2f} | chrF {chrf:.2f}" if bleu is not None else ""))
                    try:
                        for hook in self.hooks:
                            hook(self, result)
                    except StopTraining as s:
                        stop = s.reason
                eval_s += time.perf_counter() - t_eval
                if self._agree(stop is not None):
                    stop_reason = stop or "stopped"
                    break
                window_tokens, window_start, window_losses = 0, time.perf_counter(), []
                # Time that ran out during this evaluation ends the run here, rather than one
                # update later with a second, near-identical evaluation.
                if time_up or (budget_s is not None and self._check_time(budget_s)):
                    stop_reason = "max_minutes"
                    break

        wall = time.perf_counter() - start
        train_s = max(wall - eval_s, 1e-9)
        updates = self.step - first_step
        flops = peak_flops(self.device)
        # Training FLOPs ~ 6 x parameters x tokens; each token passes through about half of an
        # encoder-decoder's parameters (the encoder's or the decoder's).
        mfu = (6 * self.n_params * (tokens + src_tokens) / 2 / train_s / (flops * self.dist.world_size)
               if flops else None)
        return RunResult(stop_reason=stop_reason, steps=self.step, history=list(self.history),
                         best=dict(self.best), tokens_per_s=tokens / train_s, updates_per_s=updates / train_s,
                         peak_memory_bytes=peak_memory_bytes(self.device), n_params=self.n_params,
                         wall_s=wall, mfu=mfu, tokens_per_update=tokens / max(1, updates),
                         bleu_signature=self.bleu_signature, out_dir=self.out_dir)
