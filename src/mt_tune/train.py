"""The Trainer: one training run of a seq2seq Transformer from a RunConfig.

    data = mt_tune.data.prepare(cfg.data)
    result = Trainer(cfg, out_dir, data).fit()

What one update does: take `accum_steps` length-bucketed batches (times the number of DDP
processes), sum the label-smoothed cross-entropy over their target tokens and divide by the
target tokens of the whole update (so accumulation equals one bigger batch); the forward pass
and the loss run under autocast (train.amp), backward outside it (its ops follow the dtypes the
forward chose), fp16 through a GradScaler; then clip and an AdamW step with the learning rate
of `lr_at(step)` (schedule.py).

Every `eval_every` updates and at the end: validation loss per target token and per target
character, BLEU/chrF on the first `bleu_sentences` validation sentences, checkpoints (last.pt,
and best.pt when `keep_best_by` improved), then the hooks. A hook may raise StopTraining to end
the run cleanly; any other exception propagates. The Trainer knows nothing of Optuna.

Elsewhere: where and in what precision it computes (device.py), the checkpoint's contents
and resume (checkpoint.py), the averaged weights (weight_average.py), the batches
(data/batching.py), TensorBoard event files (event_files.py).
"""

from __future__ import annotations

import copy
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
import yaml

from mt_tune import distributed
from mt_tune.checkpoint import restore_training, save_run_checkpoints, training_checkpoint
from mt_tune.config import METRICS, RunConfig, to_dict
from mt_tune.data.batching import Batch, BatchIterator, TrainBatches
from mt_tune.data.vocab import PAD_ID
from mt_tune.device import (amp_name, batch_tensors, free_device_memory, peak_flops, peak_memory_bytes,
                            place_training, to_device)
from mt_tune.errors import UserError
from mt_tune.event_files import open_event_files
from mt_tune.model import Seq2SeqTransformer, optimizer_groups
from mt_tune.results import EvalResult, NaNLossError, OutOfMemoryError, RunResult, StopTraining, TrainingError
from mt_tune.schedule import lr_at, projected_end_step
from mt_tune.weight_average import WeightAverage

# The Trainer's results and errors (defined in results.py) are part of its interface.
__all__ = ["Trainer", "RunResult", "EvalResult", "StopTraining", "TrainingError", "NaNLossError",
           "OutOfMemoryError"]

# train.compile: padded lengths are rounded up to a multiple of this, and the pace of a time
# budget is measured after this many updates of each session (those that compile).
COMPILE_PAD_MULTIPLE = 8
COMPILE_WARMUP_UPDATES = 2


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    def __init__(self, cfg: RunConfig, out_dir: Path | str | None, data: Any,
                 hooks: Iterable[Callable] = (), resume: bool = False, log: Callable = print,
                 on_step: Callable[[int, dict], None] | None = None, tensorboard: bool = False):
        """`data`: the run's prepared data (mt_tune.data.prepare(cfg.data)). `on_step(step,
        info)`, if given, is called after every update (for a progress bar); info holds the
        latest logged loss, lr, tok_s and val_loss. `tensorboard`: write event files into
        out_dir (event_files.py)."""
        self.cfg = copy.deepcopy(cfg)
        tc = self.cfg.train
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.hooks = list(hooks)
        self.on_step = on_step
        self.tensorboard = tensorboard
        placement = place_training(tc)
        self.device, self.dist, self.amp_dtype = placement.device, placement.dist, placement.amp_dtype
        self.autocast = placement.autocast
        self.log = log if self.dist.is_main else (lambda *args, **kwargs: None)

        seed_everything(tc.seed)
        self.data = data
        self.src_tok, self.tgt_tok = data.src_tok, data.tgt_tok
        self.cfg.model.src_vocab_size = self.src_tok.vocab_size
        self.cfg.model.tgt_vocab_size = self.tgt_tok.vocab_size
        self.model = Seq2SeqTransformer(self.cfg.model).to(self.device)
        self.n_params = self.model.num_params()
        self.average = WeightAverage(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
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
        # Tensors are made in the batch thread, pinned for CUDA so that the copy is asynchronous.
        self.batches = TrainBatches(
            BatchIterator(data.train, tc.max_tokens, seed=tc.seed, shuffle=True,
                          pad_multiple=COMPILE_PAD_MULTIPLE if tc.compile else 1),
            tc.accum_steps, rank=self.dist.rank, world_size=self.dist.world_size,
            convert=partial(batch_tensors, pin=self.device.type == "cuda"))
        self.valid_chars = sum(len(s) for s in data.valid_ref)

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
        self._stream: Iterator[Batch] = iter(self.batches)  # this process's batches only
        # (step, elapsed s) from which the pace that projects a time budget's end is measured:
        # after the first updates of this session under torch.compile, which compile.
        self._pace_since = (0, 0.0)
        self._compile_updates_left = COMPILE_WARMUP_UPDATES if tc.compile else 0
        self._events = None  # TensorBoard event files, while fit() runs

    def valid_batches(self) -> Iterator[Batch]:
        """The validation batches, one deterministic pass, as tensors on the device."""
        tc = self.cfg.train
        for batch in BatchIterator(self.data.valid, tc.max_tokens, seed=tc.seed, shuffle=False):
            yield to_device(batch, self.device)

    # --- checkpoints ----------------------------------------------------------------------

    def _save(self, improved: bool) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        averaged = self.average is not None
        ckpt = training_checkpoint(
            config=to_dict(self.cfg), weights=self.average.state_dict() if averaged else self.model.state_dict(),
            train_weights=self.model.state_dict() if averaged else None, optimizer=self.optimizer,
            scaler=self.scaler, step=self.step, data_state=self.batches.state_dict(), best=self.best,
            history=[asdict(r) for r in self.history],
            elapsed_s=self.elapsed_before + time.perf_counter() - self._started,
            src_spm=self.src_tok.model_bytes(), tgt_spm=self.tgt_tok.model_bytes())
        save_run_checkpoints(ckpt, self.out_dir, improved)

    def _resume(self) -> None:
        if self.out_dir is None:
            raise UserError("resume: no output directory to resume from")
        restored = restore_training(self.out_dir, model_config=to_dict(self.cfg.model), model=self.model,
                                    optimizer=self.optimizer, scaler=self.scaler, batches=self.batches)
        if self.average is not None:  # the average was saved as "model" (or, without one, starts here)
            self.average.load(restored.weights)
        self.step, self.best, self.elapsed_before = restored.step, restored.best, restored.elapsed_s
        self.history = [EvalResult(**r) for r in restored.history]
        if self.dist.rank:
            torch.manual_seed(self.cfg.train.seed + 1_000_003 * self.dist.rank + self.step)
        self.log(f"resumed from {self.out_dir / 'last.pt'} at step {self.step}")

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
            batch = to_device(batch, self.device, non_blocking=non_blocking)
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
        if self.average is not None:
            self.average.update(self.step)
        self._loss_updates += 1
        if self._compile_updates_left:
            self._compile_updates_left -= 1
            if not self._compile_updates_left:
                self._pace_since = (self.step + 1, self.elapsed_before + time.perf_counter() - self._started)
        return n_tgt, n_src

    def _mean_train_loss(self) -> float:
        """Mean training loss since the last call; raises NaNLossError on NaN/inf. In DDP all
        processes call it at the same steps (it all-reduces)."""
        value = distributed.mean_over_processes(self.dist, self._loss_sum).item() / max(1, self._loss_updates)
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
        elapsed, since_s = distributed.from_rank_0(self.dist, [elapsed, since_s], self.device)
        self.end_step = projected_end_step(self.step, elapsed, self.cfg.train, since=(since_step, since_s))
        return elapsed >= budget_s

    # --- evaluation -----------------------------------------------------------------------

    def evaluate(self) -> tuple[float, float, float | None, float | None]:
        """(val loss per target token, per target character, BLEU, chrF) of the current model
        (of its averaged weights with train.ema_decay)."""
        with self.average.swapped_in() if self.average is not None else nullcontext():
            return self._evaluate()

    @torch.no_grad()
    def _evaluate(self) -> tuple[float, float, float | None, float | None]:
        tc = self.cfg.train
        self.model.eval()
        nll = torch.zeros((), dtype=torch.float64, device=self.device)
        tokens = 0
        with self.autocast():
            for batch in self.valid_batches():
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
        for metric, direction in METRICS.items():
            value, old = getattr(result, metric), self.best.get(metric)
            lower = direction == "minimize"
            if value is not None and (old is None or (value < old[0] if lower else value > old[0])):
                self.best[metric] = (value, result.step)
                improved |= metric == self.cfg.train.keep_best_by
        return improved

    # --- the loop -------------------------------------------------------------------------

    def fit(self) -> RunResult:
        """Train until max_steps, max_minutes or a hook's StopTraining."""
        if self.tensorboard and self.out_dir is not None and self.dist.is_main:
            self._events = open_event_files(self.out_dir, self.log)
        try:
            return self._fit()
        except torch.cuda.OutOfMemoryError as e:
            # Keep only the text: the exception's traceback holds the frames of the failed
            # step, and with them its activations.
            reason = str(e).splitlines()[0] if str(e) else "out of memory"
        finally:
            self.batches.close()  # the batch thread ends with the run, however it ends
            distributed.close(self.dist)
            if self._events is not None:
                self._events.close()
        # Raised outside the handler, so the new error has no __context__ that would keep
        # the failed step's tensors alive; freed before it goes up to the caller.
        from mt_tune.memory import estimate_memory

        self.optimizer.zero_grad(set_to_none=True)
        free_device_memory(self.device)
        estimate = int(estimate_memory(self.cfg.model, self.cfg.train, amp_dtype=amp_name(self.amp_dtype))["total"])
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
                    if self._events is not None:
                        self._events.train(self.step, info["loss"], info["lr"])
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
                    if self._events is not None:
                        self._events.evaluation(result)
                    try:
                        for hook in self.hooks:
                            hook(self, result)
                    except StopTraining as s:
                        stop = s.reason
                eval_s += time.perf_counter() - t_eval
                if distributed.from_rank_0(self.dist, [float(stop is not None)], self.device)[0]:  # 0 decides
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
