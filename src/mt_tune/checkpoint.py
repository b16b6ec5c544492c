"""Training checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is one `torch.save`d dict that holds only tensors, dicts, lists, tuples, str,
int, float, bool and None, so `torch.load(weights_only=True)` reads it. It is self-contained:

    version      format version (CHECKPOINT_VERSION)
    config       the resolved run config (config.to_dict), vocabulary sizes filled in
    model        model state dict: the weights to translate with (the moving average of the
                 weights when train.ema_decay is on)
    train_weights  with train.ema_decay only: the weights training goes on from (resume)
    optimizer    AdamW state dict
    scaler       GradScaler state dict (empty when fp16 is off)
    step         updates done
    rng          python / numpy / torch / cuda RNG states (rng_state() below)
    data_state   BatchIterator.state_dict() of the training batches
    best         metric -> [value, step] of the best evaluations so far
    history      one dict per evaluation (EvalResult fields)
    src_spm, tgt_spm   the sentencepiece models' bytes as uint8 tensors

    elapsed_s    wall time of training so far (max_minutes counts over resumes)

The learning-rate schedule is a function of `step` and, under a time limit, of `elapsed_s`.
`training_checkpoint` builds this dict from a run, `restore_training` puts a run back in it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mt_tune.errors import UserError

CHECKPOINT_VERSION = 1
REQUIRED_KEYS = ("version", "config", "model", "step", "src_spm", "tgt_spm")


# --- RNG state as plain data ----------------------------------------------------------------


def rng_state() -> dict:
    """Every RNG a training step touches, as weights_only-loadable data."""
    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": {"version": py_version, "state": list(py_internal), "gauss_next": py_gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


# --- tokenizers as tensors ------------------------------------------------------------------


def bytes_to_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8).clone()


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    return t.numpy().tobytes()


# --- save / load --------------------------------------------------------------------------


def save_atomic(obj: dict, path: Path) -> None:
    """torch.save to a temp file in the same directory, then rename: a crash never leaves a
    half-written file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with interrupts_deferred():
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def interrupts_deferred():
    """SIGINT and SIGTERM held back until the block ends, then delivered as they would have
    been.

    torch.save writes through a Python file object from C++: a KeyboardInterrupt raised by a
    signal handler inside one of those writes comes out as a RuntimeError ("unexpected pos"),
    so a Ctrl-C'd search trial would be recorded as failed instead of interrupted. Held back,
    the interrupt arrives just after the checkpoint is whole. (Masking the signal would not
    do: the kernel hands a process's signal to any thread that does not mask it, torch's
    among them.) Handlers can only be set from the main thread; elsewhere nothing is held.
    """
    on_main_thread = threading.current_thread() is threading.main_thread()
    signals = [s for s in (signal.SIGINT, signal.SIGTERM) if on_main_thread and signal.getsignal(s) is not None]
    held: list[int] = []
    previous = {s: signal.signal(s, lambda signum, _frame: held.append(signum)) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint dict safely, every tensor on the CPU; anything that is not one of ours
    is a UserError.

    Always to the CPU: the RNG states must be CPU tensors for torch.set_rng_state, and the
    tokenizer bytes are read through .numpy(). The caller moves what belongs on a device (a
    model's load_state_dict copies into parameters wherever they live; the optimizer's
    load_state_dict moves its state to its parameters' device)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: no such checkpoint file")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or damaged file fails in many ways inside the unpickler
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{p}: not a readable mt-tune checkpoint ({first_line})") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise UserError(f"{p}: not an mt-tune checkpoint (missing {', '.join(missing)})")
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise UserError(f"{p}: checkpoint format version {ckpt['version']!r}, this mt-tune reads "
                        f"version {CHECKPOINT_VERSION}")
    return ckpt


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any, Any, Any]:
    """(model, run_cfg, src_tok, tgt_tok) from a checkpoint, the model in eval mode on `device`:
    what translate and evaluate need."""
    from mt_tune.config import build_run_config
    from mt_tune.data import Tokenizer
    from mt_tune.errors import ConfigError
    from mt_tune.model import Seq2SeqTransformer

    ckpt = read_checkpoint(path)
    try:
        run_cfg = build_run_config(ckpt["config"])
    except ConfigError as e:
        raise UserError(f"{path}: the checkpoint's config is invalid: {e}") from None
    src_bytes, tgt_bytes = tensor_to_bytes(ckpt["src_spm"]), tensor_to_bytes(ckpt["tgt_spm"])
    src_tok = Tokenizer.from_bytes(src_bytes)
    tgt_tok = src_tok if tgt_bytes == src_bytes else Tokenizer.from_bytes(tgt_bytes)  # joint vocabulary
    model = Seq2SeqTransformer(run_cfg.model)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise UserError(f"{path}: the weights do not fit the checkpoint's model config: "
                        f"{str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return model, run_cfg, src_tok, tgt_tok


# --- a training run's state -------------------------------------------------------------------


def training_checkpoint(*, config: dict, weights: dict[str, torch.Tensor],
                        train_weights: dict[str, torch.Tensor] | None, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler, step: int, data_state: dict,
                        best: dict[str, tuple[float, int]], history: list[dict], elapsed_s: float,
                        src_spm: bytes, tgt_spm: bytes) -> dict:
    """The checkpoint dict of a run (the format above). `weights`: the state dict to translate
    with; `train_weights`: the one training goes on from, where that differs (train.ema_decay)."""
    extra = {"train_weights": train_weights} if train_weights is not None else {}
    return {
        **extra,
        "version": CHECKPOINT_VERSION,
        "config": config,
        "model": weights,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "step": step,
        "rng": rng_state(),
        "data_state": data_state,
        "best": {k: [v, s] for k, (v, s) in best.items()},
        "elapsed_s": elapsed_s,
        "history": history,
        "src_spm": bytes_to_tensor(src_spm),
        "tgt_spm": bytes_to_tensor(tgt_spm),
    }


def save_run_checkpoints(ckpt: dict, out_dir: Path, improved: bool) -> None:
    """OUT/last.pt, and OUT/best.pt too when the kept metric `improved`."""
    last = out_dir / "last.pt"
    save_atomic(ckpt, last)
    if improved:  # same content: copy the file rather than serialise again
        tmp = out_dir / ".best.pt.tmp"
        shutil.copyfile(last, tmp)
        tmp.replace(out_dir / "best.pt")


@dataclass
class RestoredRun:
    """What restore_training hands back to the loop (the rest it loads in place)."""

    step: int
    best: dict[str, tuple[float, int]]
    history: list[dict]  # one dict per evaluation (EvalResult fields)
    elapsed_s: float
    weights: dict[str, torch.Tensor]  # the checkpoint's "model": with train.ema_decay, the average


def restore_training(out_dir: Path, *, model_config: dict, model: torch.nn.Module,
                     optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batches: Any) -> RestoredRun:
    """Load OUT/last.pt into a freshly built run: weights, optimizer, scaler, the training
    batches' position (`batches.load_state_dict`) and every RNG; a missing checkpoint or one
    of another model config is a UserError."""
    path = out_dir / "last.pt"
    if not path.is_file():
        raise UserError(f"{path}: no checkpoint to resume from")
    ckpt = read_checkpoint(path)  # on the CPU: the RNG states must stay there
    if ckpt["config"]["model"] != model_config:
        raise UserError(f"{path}: the checkpoint's model config differs from this run's; "
                        f"resume with the same model settings")
    model.load_state_dict(ckpt.get("train_weights", ckpt["model"]))
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    try:
        batches.load_state_dict(ckpt["data_state"])
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None
    set_rng_state(ckpt["rng"])
    return RestoredRun(step=int(ckpt["step"]), best={k: (v, s) for k, (v, s) in ckpt["best"].items()},
                       history=list(ckpt["history"]), elapsed_s=float(ckpt.get("elapsed_s", 0.0)),
                       weights=ckpt["model"])
