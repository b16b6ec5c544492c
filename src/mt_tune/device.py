"""Where a training process computes: device, process group, precision, memory and speed.

    placement = place_training(cfg.train)    # device, DDP context, autocast dtype
    with placement.autocast(): ...

Batches come from the data pipeline as numpy arrays; `batch_tensors` turns them into torch
tensors (pinned for CUDA, in the batch thread) and `to_device` moves them onto the device.
"""

from __future__ import annotations

import gc
import resource
import sys
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch

from mt_tune import distributed
from mt_tune.config import TrainConfig
from mt_tune.data.batching import Batch
from mt_tune.errors import ConfigError

# The names train.amp and the memory estimate use for each autocast dtype.
AMP_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16"}

# Dense bf16 peak FLOP/s by GPU name, for MFU; first matching substring wins.
PEAK_BF16_FLOPS = [("H200", 989e12), ("H100 PCIe", 756e12), ("H100", 989e12), ("A100", 312e12),
                   ("L40S", 362e12), ("A10G", 70e12), ("RTX 4090", 165e12)]


# --- choosing -------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """train.device -> torch.device: auto is CUDA where there is one; a device that is not
    there is a ConfigError."""
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


def amp_name(dtype: torch.dtype | None) -> str | None:
    """"bf16" / "fp16" for an autocast dtype, None without AMP."""
    return AMP_NAMES.get(dtype)


@dataclass
class Placement:
    """Where one training process computes: its device, its place in the DDP process group,
    and the autocast dtype (None: full fp32)."""

    device: torch.device
    dist: distributed.DistContext
    amp_dtype: torch.dtype | None

    def autocast(self):
        """A fresh autocast context for the chosen dtype (a no-op without AMP)."""
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)


def place_training(tc: TrainConfig) -> Placement:
    """Device, process group (when torchrun started this process), threads and precision
    for a run with train config `tc`."""
    device = resolve_device(tc.device)
    dist = distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)  # torchrun's processes: one GPU each
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    amp_dtype = pick_amp_dtype(tc.amp, device)
    if device.type == "cuda" and amp_dtype is None:
        # fp32 matmuls on tensor cores (TF32): several times faster on Ampere and later,
        # within training noise for a Transformer.
        torch.set_float32_matmul_precision("high")
    return Placement(device, dist, amp_dtype)


# --- batches onto the device ------------------------------------------------------------------


def batch_tensors(batch: Batch, pin: bool = False) -> Batch:
    """The batch with torch tensors for its numpy arrays (sharing their memory); with `pin`,
    copied into page-locked memory, from which `to_device(..., non_blocking=True)` copies to
    CUDA asynchronously. The trainer runs this in the batch thread, off the training loop."""
    def tensor(a):
        t = torch.from_numpy(a)
        return t.pin_memory() if pin else t

    return replace(batch, src=tensor(batch.src), tgt_in=tensor(batch.tgt_in), tgt_out=tensor(batch.tgt_out))


def to_device(batch: Batch, device: torch.device | str, non_blocking: bool = False) -> Batch:
    """The batch's tensors (or numpy arrays) as tensors on `device`. non_blocking: copy
    asynchronously, for batches pinned by batch_tensors."""
    def move(a):
        return torch.as_tensor(a).to(device, non_blocking=non_blocking)

    return replace(batch, src=move(batch.src), tgt_in=move(batch.tgt_in), tgt_out=move(batch.tgt_out))


# --- memory and speed -----------------------------------------------------------------------


def free_device_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage, return the CUDA allocator's cached blocks to the driver and reset its
    peak statistics: what a worker does between trials, so each trial starts from a clean
    allocator (and reports its own peak), and after an OOM, once nothing refers to the failed
    run's tensors any more. A no-op for the allocator on CPU."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak CUDA memory allocated on `device`; on CPU, the process's peak resident size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss_kb if sys.platform == "darwin" else rss_kb * 1024)  # macOS reports bytes, Linux KiB


def peak_flops(device: torch.device) -> float | None:
    """Dense bf16 peak FLOP/s of the GPU, for MFU; None on CPU and for GPUs not in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)
