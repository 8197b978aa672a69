"""Where a run executes: device, dtype, DDP rank and world, and per-step seeds."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import GptvError


class DeviceError(GptvError, ValueError):
    """The requested device does not exist in this PyTorch build or on this machine."""


@dataclass
class Runtime:
    device: torch.device
    dtype: torch.dtype
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device; a one-line DeviceError when it is not there.

    The one rule for "auto", used by every command (train, eval, calibrate, targets, the API,
    serve, lm-eval): the first CUDA GPU, else Apple's MPS, else the CPU.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise DeviceError(
                f"device {name!r} asked for, but this PyTorch build ({torch.__version__}) has no CUDA support; "
                "install a CUDA build of torch or use --device cpu"
            )
        count = torch.cuda.device_count()
        if count == 0:
            raise DeviceError(
                f"device {name!r} asked for, but no CUDA GPU is visible (check the driver and "
                "CUDA_VISIBLE_DEVICES); use --device cpu"
            )
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device {name!r} asked for, but only {count} CUDA GPU(s) are visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {name!r} asked for, but MPS is not available on this machine; use --device cpu")
    return dev


def setup_runtime(cfg) -> Runtime:
    """Pick device and dtype; join the process group when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.train.device)
    if device.type == "cuda" and world > 1 and device.index is None:
        device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        backend = cfg.train.backend if cfg.train.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)
    dtype_name = cfg.train.dtype
    if dtype_name == "auto":
        if device.type == "cuda":
            dtype_name = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype_name = "float32"
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Runtime(device, getattr(torch, dtype_name), rank, world, local_rank)


def all_ranks_any(rt: Runtime, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all ranks, in one all-reduce (the flags themselves when not distributed)."""
    if not rt.distributed:
        return list(flags)
    t = torch.tensor([float(f) for f in flags], device=rt.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v > 0) for v in t.tolist()]


def step_seed(seed: int, step: int, rank: int = 0, stream: int = 0) -> int:
    """A 63-bit seed for (run seed, step, rank, stream) that is stable across processes."""
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint32).view(np.uint64)[0] >> 1)
