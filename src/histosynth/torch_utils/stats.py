"""Training statistics: one JSON line per tick in ``stats.jsonl`` and, when enabled and
installed, the same numbers as TensorBoard scalars."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


class StatsLog:
    """Tick statistics: appended to ``stats.jsonl`` (always) and written as TensorBoard scalars
    under ``tensorboard/`` when `enabled` and the tensorboard package is installed
    (``pip install tensorboard``; then ``tensorboard --logdir results/gan``)."""

    def __init__(self, outdir, enabled: bool, rank: int):
        self.path = Path(outdir) / "stats.jsonl"
        self.rank, self.tb = rank, None
        if rank == 0:  # exists even when a run resumed at its end has no tick left to write
            self.path.touch()
        if rank == 0 and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: statistics go to stats.jsonl only")
            else:
                self.tb = SummaryWriter(str(Path(outdir) / "tensorboard"))

    def write(self, stats: dict) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.tb is not None:
            step = int(round(stats["kimg"] * 1000))
            for k, v in stats.items():
                if k not in ("kimg", "step", "time") and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, global_step=step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


def mean_of(values) -> float | None:
    """Mean of floats or 0-d tensors. Training keeps each step's losses as device tensors and
    reads them here, once per tick, so no step waits for the GPU to report a number."""
    if not values:
        return None
    return float(np.mean([float(v) for v in values]))


def tick_stats(acc: dict, cur_nimg: int, step: int, n_tick: int, t_tick: float, device, **extra) -> dict:
    """One stats.jsonl line: the mean of each accumulated value since the last tick, and speed."""
    dt = time.time() - t_tick
    stats = {"kimg": cur_nimg / 1000, "step": step, **{k: mean_of(v) for k, v in acc.items()},
             **extra, "sec_per_kimg": dt / max((cur_nimg - n_tick) / 1000, 1e-9),
             "img_per_sec": (cur_nimg - n_tick) / max(dt, 1e-9), "time": time.time()}
    if device.type == "cuda":
        stats["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return stats
