"""Several processes for one training run: DDP launched through PyTorch's own launcher.

`mt-tune train CONFIG --devices 0,1` re-runs the same command under `torch.distributed.run`
(torchrun) with one process per device; each process finds RANK / WORLD_SIZE / LOCAL_RANK in
its environment and the Trainer joins the process group (NCCL on CUDA, gloo on CPU).
`--devices cpu:N` runs N gloo processes on the CPU, which is how DDP is tested without GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from mt_tune.errors import UserError


@dataclass
class DeviceSpec:
    """What `--devices` asked for: the device type, how many processes, which GPUs."""

    kind: str  # "cpu" or "cuda"
    n_procs: int
    gpu_ids: list[str]


DEVICES_GRAMMAR = "cpu, cpu:N (N processes), cuda (GPU 0), all (every GPU) or GPU indices like 0,1,2"


def parse_devices(spec: str, gpu_count: int | None = None) -> DeviceSpec:
    """`--devices` of `mt-tune train` and `mt-tune worker`, one grammar for both:
    'cpu' | 'cpu:N' | 'cuda' | 'all' | '0,1,2' -> DeviceSpec; anything else is a UserError.
    gpu_count: GPUs on this machine (asked of torch when None)."""
    text = spec.strip().lower()
    if text == "cpu":
        return DeviceSpec("cpu", 1, [])
    if text.startswith("cpu:"):
        n = text[4:]
        if not n.isdigit() or int(n) < 1:
            raise UserError(f"--devices {spec!r}: expected cpu:N with N >= 1 processes")
        return DeviceSpec("cpu", int(n), [])
    if text in ("all", "cuda"):
        count = torch.cuda.device_count() if gpu_count is None else gpu_count
        if count == 0:
            raise UserError(f"--devices {spec!r}: no CUDA GPU is visible on this machine (use cpu or cpu:N)")
        ids = [str(i) for i in range(count)] if text == "all" else ["0"]
        return DeviceSpec("cuda", len(ids), ids)
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids):
        raise UserError(f"--devices {spec!r}: expected {DEVICES_GRAMMAR}")
    if len(set(ids)) != len(ids):
        raise UserError(f"--devices {spec!r}: a GPU is listed twice")
    count = torch.cuda.device_count() if gpu_count is None else gpu_count
    missing = [i for i in ids if int(i) >= count]
    if missing:
        raise UserError(f"--devices {spec!r}: no GPU {', '.join(missing)} on this machine (it has {count})")
    return DeviceSpec("cuda", len(ids), ids)


def launch(devices: DeviceSpec, module_args: list[str]) -> int:
    """Run `python -m mt_tune.cli <module_args>` once per device under torchrun; return its exit code.

    The workers see only their GPUs (CUDA_VISIBLE_DEVICES), so worker k uses cuda:k."""
    env = dict(os.environ)
    if devices.kind == "cuda":
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices.gpu_ids)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={devices.n_procs}", "-m", "mt_tune.cli", *module_args]
    return subprocess.call(cmd, env=env)


# --- inside a worker ------------------------------------------------------------------------


@dataclass
class DistContext:
    """This process's place in the run; world_size 1 means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this process created the group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_env(device_type: str) -> DistContext:
    """Join the process group torchrun set up in the environment (if any)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        if device_type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        owns = True
    return DistContext(rank=rank, local_rank=local_rank, world_size=world_size, owns_group=owns)


def close(ctx: DistContext) -> None:
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def from_rank_0(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Process 0's `values`, in every process (the values themselves without a process group):
    where one clock or one decision must hold for all processes."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def mean_over_processes(ctx: DistContext, t: torch.Tensor) -> torch.Tensor:
    """The mean of `t` over all processes (a copy of `t` without a process group)."""
    total = t.clone()
    if ctx.enabled:
        dist.all_reduce(total)
        total /= ctx.world_size
    return total
