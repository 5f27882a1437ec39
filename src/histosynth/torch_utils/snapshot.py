"""Weights over time: the EMA generator, every random-number state as plain data, and the
consistency check of the ranks' weights at a snapshot."""
from __future__ import annotations

import random

import numpy as np
import torch

from histosynth.torch_utils.distributed import all_gather


@torch.no_grad()
def ema_update(G_ema, G, cur_nimg: int, batch: int, ema_kimg: float, ema_rampup: float | None) -> None:
    """G_ema <- EMA of G with a half-life of ema_kimg (ramped up over the first images)."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup:
        ema_nimg = min(ema_nimg, (cur_nimg + batch) * ema_rampup)
    beta = 0.5 ** (batch / max(ema_nimg, 1e-8))
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.copy_(p.detach().lerp(pe, beta))
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def rng_state() -> dict:
    """Every generator's state as tensors and plain data (numpy's key array as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                       int(has_gauss), float(cached)),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(s["python"]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def gather_snapshot_state(modules, sampler_state: torch.Tensor, world: int):
    """(checksum, every rank's checksum, every rank's RNG states, every rank's batch-sampler
    state) at a snapshot; raises if the ranks' weights diverged."""
    checksum = float(sum(p.detach().double().sum() for m in modules for p in m.parameters()))
    sums = all_gather(checksum, world)
    if len(set(sums)) != 1:
        raise RuntimeError(f"ranks diverged: parameter checksums {sums}")
    return checksum, sums, all_gather(rng_state(), world), all_gather(sampler_state, world)
