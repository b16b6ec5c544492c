"""The trial objective: spec + sampled params -> a training run -> the trial's value.

Per trial: the RunConfig is built from the spec and the sampled parameters, the Trainer runs
with a hook that, after every evaluation, records the validation loss and the greedy
BLEU/chrF, reports the study's metric to Optuna, asks the ranking pruner, and applies the
divergence stop. The trial's value is the best value of the metric over its evaluations; the
checkpoint best.pt (kept by that metric) is the one export uses.

How a trial ends (user attr `stop_reason`):
  max_steps / max_minutes   the budget ran out                      COMPLETE
  diverged                  neither loss nor metric improves any more COMPLETE (or PRUNED)
  pruned                    worse than its peers at the same step    PRUNED
  nan_loss, oom, predicted_oom, invalid_config                      PRUNED
  repeat                    the configuration of an earlier trial:   FAIL, untrained
                            its nearest untried neighbour is queued  (repeats.py)
A pruned trial's checkpoints are removed. A trial that retries a dead worker's trial resumes
from that trial's last.pt (same directory) and records `resumed_from_step`; so does a trial
promoted with `continue_from` (a source trial's directory), from a copy of its checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback

from mt_tune.config import METRICS, RunConfig, format_scale, to_dict
from mt_tune.errors import ConfigError, UserError
from mt_tune.search.repeats import end_if_repeat
from mt_tune.search.spec import StoppingSpec, StudySpec
from mt_tune.device import amp_name, free_device_memory, pick_amp_dtype, resolve_device
from mt_tune.train import EvalResult, NaNLossError, OutOfMemoryError, StopTraining, Trainer

# Fraction of a GPU's memory a run's estimate may take before it is pruned unstarted: the
# estimate leaves out the CUDA context and allocator fragmentation.
USABLE_GPU_FRACTION = 0.92


def error_line(e: BaseException) -> str:
    """`Type: first line of the message`: what a one-line log or attr says of an error."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def oom_reason(need: int, free: int, total: int, device: str) -> str | None:
    """The predicted_oom message when an estimate `need` exceeds the usable part of the
    memory `free` on `device` (bytes), else None."""
    if need <= USABLE_GPU_FRACTION * free:
        return None
    return (f"estimated {need / 2**30:.2f} GiB > {USABLE_GPU_FRACTION:.0%} of the {free / 2**30:.2f} GiB free "
            f"on {device} (free memory, of {total / 2**30:.2f} GiB total)")


class DivergenceStop:
    """The overfitting stop: True once neither the validation loss nor the translation metric
    has improved on its best by more than `min_delta` for `patience` evaluations in a row, or
    for `patience_fraction` of the evaluations so far if that is more.

    `on`: both (either improving keeps the trial alive), loss, metric, or none (never stops).
    Validation loss often bottoms out while BLEU still climbs, so `both` is the default.
    The patience grows with the run because plateaus do: late in training, as the learning rate
    decays, a good run goes longer between new bests than early on. On Zhang & Duh's recorded
    curves (benchmarks/nmt_tables.py) a fixed patience of 3 stopped every en-ja and ja-en run
    before its best checkpoint; a fifth of the run lets them reach it. Early in a run the fixed
    floor decides, and there the spec's default is 1: most low-resource runs overfit within a
    few evaluations, and stopping them at the first one without a new best left more of the
    budget for other configurations on all six tables.
    """

    def __init__(self, patience: int, min_delta: float = 0.0, on: str = "both", patience_fraction: float = 0.0):
        self.patience, self.min_delta, self.on = patience, min_delta, on
        self.patience_fraction = patience_fraction
        self.best_loss = math.inf
        self.best_metric = -math.inf
        self.stale = 0  # evaluations since the last improvement
        self.evaluations = 0

    def update(self, val_loss: float, metric: float | None) -> bool:
        improved = False
        if self.on in ("both", "loss") and val_loss < self.best_loss - self.min_delta:
            self.best_loss, improved = val_loss, True
        if self.on in ("both", "metric") and metric is not None and metric > self.best_metric + self.min_delta:
            self.best_metric, improved = metric, True
        self.evaluations += 1
        self.stale = 0 if improved else self.stale + 1
        return self.on != "none" and self.stale >= self.current_patience

    @classmethod
    def from_spec(cls, s: StoppingSpec) -> DivergenceStop:
        """The stop a spec's `stopping:` section describes (a trial's, and the demo's final run's)."""
        return cls(s.patience, s.min_delta, s.divergence_on, s.patience_fraction)

    @property
    def current_patience(self) -> int:
        return max(self.patience, math.ceil(self.patience_fraction * self.evaluations - 1e-9))


def metric_value(result: EvalResult, metric: str) -> float | None:
    value = getattr(result, metric)
    return None if value is None else float(value)


class TrialHook:
    """Called by the Trainer after every evaluation: record, report, prune, stop."""

    def __init__(self, trial: optuna.Trial, spec: StudySpec):
        self.trial, self.spec = trial, spec
        self.stop = DivergenceStop.from_spec(spec.stopping)
        self.history: list[list] = []  # [step, val_loss, val_loss_per_char, bleu, chrf] per evaluation

    def replay(self, history: list[EvalResult]) -> None:
        """Bring a resumed run's earlier evaluations into this trial (reports and stop state)."""
        for result in history:
            self._record(result)
            self.stop.update(result.val_loss, self._translation(result))

    def __call__(self, trainer: Trainer, result: EvalResult) -> None:
        value = self._record(result)
        if value is not None and self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.spec.metric} {value:.4g} at step {result.step} is worse than its peers")
        if self.stop.update(result.val_loss, self._translation(result)):
            raise StopTraining("diverged")

    @property
    def last_step(self) -> int:
        return self.history[-1][0] if self.history else 0

    def best(self) -> tuple[float, int] | None:
        """(best metric value, its step) over the evaluations so far."""
        column = list(METRICS).index(self.spec.metric) + 1  # history rows: step, then METRICS in order
        points = [(row[column], row[0]) for row in self.history if row[column] is not None]
        if not points:
            return None
        pick = min if METRICS[self.spec.metric] == "minimize" else max
        return pick(points, key=lambda p: p[0])

    def _translation(self, result: EvalResult) -> float | None:
        metric = self.spec.translation_metric
        return metric_value(result, metric) if metric else None

    def _record(self, result: EvalResult) -> float | None:
        self.history.append([result.step, *(_round(getattr(result, metric)) for metric in METRICS)])
        self.trial.set_user_attr("history", self.history)
        value = metric_value(result, self.spec.metric)
        if value is not None and math.isfinite(value):
            self.trial.report(value, result.step)
            return value
        return None


def _round(x: float | None) -> float | None:
    return None if x is None else round(float(x), 5)


class Objective:
    """`objective(trial) -> value` for Optuna. Prepared data is cached per data config for the
    life of the worker process, so trials after the first start training at once."""

    def __init__(self, spec: StudySpec, study_name: str, storage: optuna.storages.BaseStorage,
                 artifacts: str | Path = "mt-tune-artifacts", device: str = "auto",
                 budget_check: Callable[[optuna.Trial], None] | None = None):
        self.spec, self.study_name, self.storage = spec, study_name, storage
        self.artifacts = Path(artifacts)
        self.device = device
        self.budget_check = budget_check
        self._data: dict[str, Any] = {}
        self.last_log: Path | None = None  # train.log of the latest trial (the worker names it on failure)

    def data_for(self, cfg: RunConfig) -> Any:
        from mt_tune.data import prepare

        key = json.dumps(to_dict(cfg.data), sort_keys=True)
        if key not in self._data:
            self._data[key] = prepare(cfg.data)
        return self._data[key]

    def __call__(self, trial: optuna.Trial) -> float:
        if self.budget_check is not None:
            self.budget_check(trial)
        free_device_memory()  # each trial starts from a clean allocator, its peak counted alone
        self.last_log = None
        start = time.perf_counter()
        trial.set_user_attr("scale", format_scale(self.spec.scale))
        params = self.spec.suggest(trial)
        retried_from = self._retried_from(trial)
        if retried_from is None:  # a retry repeats its dead trial's values on purpose
            end_if_repeat(trial, self.spec.search, params)
        try:
            cfg = self.spec.run_config(params)
        except ConfigError as e:
            trial.set_user_attr("error", str(e))
            raise self._pruned(trial, "invalid_config", None, start)
        if self.device != "auto":
            cfg.train.device = self.device

        out_dir = self.artifacts / self.study_name / str(trial.number if retried_from is None else retried_from)
        resume = retried_from is not None and (out_dir / "last.pt").is_file()
        if not resume and out_dir.exists():
            shutil.rmtree(out_dir)  # left by a deleted study of the same name: not this trial's
        out_dir.mkdir(parents=True, exist_ok=True)
        source = trial.user_attrs.get("continue_from")  # a promotion at the same scale: go on, not over
        if not resume and source and (Path(source) / "last.pt").is_file():
            for name in ("last.pt", "best.pt"):
                if (Path(source) / name).is_file():
                    shutil.copyfile(Path(source) / name, out_dir / name)
            resume = True
        trial.set_user_attr("artifacts", str(out_dir))
        self.last_log = out_dir / "train.log"

        hook = TrialHook(trial, self.spec)
        with open(out_dir / "train.log", "a", encoding="utf-8") as log_file:
            def log(*parts: Any) -> None:
                print(*parts, file=log_file, flush=True)

            try:
                result, ended = self._train(trial, cfg, out_dir, hook, resume, log)
            except Exception as e:
                # A FAIL trial: the whole traceback stays in its train.log (the checkpoints
                # stay too), its first line goes into the `error` attr for `study show`.
                log(traceback.format_exc().rstrip())
                trial.set_user_attr("error", error_line(e))
                raise
        if ended is not None:
            # Outside every handler: nothing refers to the failed run's frames any more, so
            # the memory it held is free before the next trial in this process starts.
            free_device_memory()
            reason, error, steps = ended
            if error:
                trial.set_user_attr("error", error)
            raise self._pruned(trial, reason, hook, start, out_dir, steps=steps)

        best = result.best.get(self.spec.metric)
        if best is None or not math.isfinite(best[0]):
            raise self._pruned(trial, "nan_loss", hook, start, out_dir, steps=result.steps)
        value, best_step = best
        attrs = {
            "stop_reason": result.stop_reason,
            "steps": result.steps,
            "best_value": value,
            "best_step": best_step,
            "tokens_per_s": round(result.tokens_per_s, 1),
            "peak_memory": result.peak_memory_bytes,
            "wall_s": round(time.perf_counter() - start, 2),
            "n_params": result.n_params,
        }
        for metric in METRICS:
            if metric in result.best:
                attrs[metric] = result.best[metric][0]
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        if result.stop_reason == "diverged" and self.spec.stopping.on_divergence == "prune":
            shutil.rmtree(out_dir, ignore_errors=True)
            raise optuna.TrialPruned(f"diverged at step {result.steps}")
        return value

    def _train(self, trial: optuna.Trial, cfg: RunConfig, out_dir: Path, hook: TrialHook, resume: bool,
               log: Callable) -> tuple[Any, tuple[str, str | None, int | None] | None]:
        """(run result, None), or (None, (stop_reason, error, steps)) for a trial that ends
        PRUNED; other errors propagate (the trial FAILs). Only text leaves the handlers: an
        exception kept alive would keep the run's model, optimizer and activations with it."""
        try:
            data = self.data_for(cfg)
        except UserError as e:  # e.g. a searched vocab_size larger than the scale's corpus allows
            return None, ("invalid_config", str(e), 0)
        cfg.model.src_vocab_size, cfg.model.tgt_vocab_size = data.src_tok.vocab_size, data.tgt_tok.vocab_size
        oom = self._predicted_oom(cfg, trial)
        if oom is not None:
            return None, ("predicted_oom", oom, 0)
        try:
            trainer = Trainer(cfg, out_dir, data=data, hooks=[hook], resume=resume, log=log)
            trial.set_user_attr("device", str(trainer.device))
            trial.set_user_attr("n_params", trainer.n_params)
            if resume:
                trial.set_user_attr("resumed_from_step", trainer.step)
                hook.replay(trainer.history)
            return trainer.fit(), None
        except optuna.TrialPruned:
            return None, ("pruned", None, None)
        except NaNLossError as e:
            return None, ("nan_loss", str(e), e.step)
        except (OutOfMemoryError, torch.cuda.OutOfMemoryError) as e:
            log(f"out of memory: {e}")
            return None, ("oom", str(e).splitlines()[0], getattr(e, "step", None))

    # --- helpers --------------------------------------------------------------------------

    def _pruned(self, trial: optuna.Trial, reason: str, hook: TrialHook | None, start: float,
                out_dir: Path | None = None, steps: int | None = None) -> optuna.TrialPruned:
        """Record why the trial ends and remove its checkpoints; the caller raises the result."""
        trial.set_user_attr("stop_reason", reason)
        trial.set_user_attr("steps", steps if steps is not None else (hook.last_step if hook else 0))
        trial.set_user_attr("wall_s", round(time.perf_counter() - start, 2))
        best = hook.best() if hook else None
        if best is not None:
            trial.set_user_attr("best_value", best[0])
            trial.set_user_attr("best_step", best[1])
        if out_dir is not None:
            shutil.rmtree(out_dir, ignore_errors=True)
        return optuna.TrialPruned(reason)

    def _retried_from(self, trial: optuna.Trial) -> int | None:
        """The number of the dead worker's trial this one retries, or None."""
        study_id = self.storage.get_study_id_from_name(self.study_name)
        frozen = self.storage.get_trial(self.storage.get_trial_id_from_study_id_trial_number(study_id, trial.number))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)

    def _predicted_oom(self, cfg: RunConfig, trial: optuna.Trial) -> str | None:
        """On a GPU: why this config cannot fit (its estimate against the memory free on the
        device now), or None. Free, not total, memory: other processes of `--processes K`,
        or another job, may share the card."""
        device = resolve_device(cfg.train.device)
        if device.type != "cuda":
            return None
        from mt_tune.memory import estimate_memory

        amp = amp_name(pick_amp_dtype(cfg.train.amp, device))
        need = int(estimate_memory(cfg.model, cfg.train, amp_dtype=amp)["total"])
        free, total = torch.cuda.mem_get_info(device)
        trial.set_user_attr("memory_estimate", need)
        trial.set_user_attr("memory_free", int(free))
        return oom_reason(need, free, total, str(device))

