"""Processes and devices: one process, or several under ``torchrun`` (gradients averaged by
all-reduce, so every rank keeps identical weights)."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from histosynth.utils import UserError


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) from torchrun's environment (1, 0, 0 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def select_device(want: str, local_rank: int = 0) -> torch.device:
    """The device for ``want`` (auto | cuda | cpu): auto picks CUDA when a GPU is visible."""
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise UserError("gan.device is cuda but no CUDA GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def default_device() -> str:
    """'cuda' when a GPU is visible, else 'cpu' (the stages that run networks outside training)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def init_process_group(device: torch.device, world: int) -> None:
    """Join the process group (NCCL on GPUs, else gloo) once the device is chosen, so each
    rank's communicator binds its own GPU."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def broadcast_tensors(tensors, world: int) -> None:
    """Rank 0's values into every rank's tensors (identical initial weights)."""
    if world > 1:
        for t in tensors:
            dist.broadcast(t.data, 0)


def allreduce_grads(module, world: int) -> None:
    """Average `module`'s gradients over the processes, in one flat all-reduce."""
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        g.copy_(flat[off: off + g.numel()].view_as(g))
        off += g.numel()


def mean_over_ranks(device, world: int):
    """A function averaging a 0-d tensor over all processes (None with one process)."""
    if world == 1:
        return None

    def reduce(t):
        t = t.detach().to(device, torch.float32).clone()
        dist.all_reduce(t)
        return t / world
    return reduce


def barrier(world: int) -> None:
    if world > 1:
        dist.barrier()


def all_gather(value, world: int) -> list:
    """Every rank's `value` (a picklable object of plain data), in rank order."""
    if world == 1:
        return [value]
    out = [None] * world
    dist.all_gather_object(out, value)
    return out


def fused_adam(device) -> dict:
    """Adam's fused CUDA kernel (one launch for all parameters) where there is a GPU."""
    return {"fused": True} if device.type == "cuda" else {}


# Where gan.precision bf16 takes effect: on GPUs (tensor cores). The test suite adds "cpu" to
# run the same mixed-precision training path on the CPU's bf16 autocast.
BF16_DEVICES = ("cuda",)


def uses_bf16(precision: str, device) -> bool:
    """Whether `precision` means bf16 autocast on `device`."""
    return precision == "bf16" and device.type in BF16_DEVICES


def autocast(precision: str, device):
    """A context factory: bf16 autocast on GPU when precision is bf16, else a no-op."""
    if uses_bf16(precision, device):
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return lambda: torch.autocast("cpu", enabled=False)
