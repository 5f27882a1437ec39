"""Training tiles for the GAN: read from tile stores, training patients only, as [-1, 1] tensors.

Batches are drawn by index lists from a seeded generator the trainer owns (and checkpoints),
so a resumed run sees exactly the batches an uninterrupted run would. Tiles that do not fit in
memory are read ahead (:class:`ReadAhead`): the draws of the next batches are made early, in the
seeded order, and their tiles decoded by threads while the training step runs."""
from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from histosynth.slides.store import TileStore, load_tiles
from histosynth.utils import UserError


class TileSource:
    """Training tiles by row number. Tiles that fit in ``preload_max_mb`` are held in memory, on
    the training device itself when that is a GPU (batches are then gathered there, with no
    host-to-device copy per step); larger sets are read from the stores by worker threads."""

    def __init__(self, index: pd.DataFrame, resolution: int, preload_max_mb: float = 4096, threads: int = 2,
                 device="cpu"):
        self.index = index.reset_index(drop=True)
        if len(self.index) == 0:
            raise UserError("the GAN has no training tiles: no kept tiles of training patients (see the tiling QC)")
        px = int(self.index["tile_px"].iloc[0])
        if px != resolution:
            raise UserError(f"gan.resolution is {resolution} but the tiles are {px} px; set gan.resolution to tiles.tile_px")
        self.resolution = resolution
        nbytes = len(self.index) * px * px * 3
        self.preloaded = None
        if nbytes <= preload_max_mb * 2**20:
            self.preloaded = torch.from_numpy(load_tiles(self.index)).permute(0, 3, 1, 2).contiguous().to(device)
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max(1, threads)) if self.preloaded is None else None

    def __len__(self):
        return len(self.index)

    def _read(self, i):
        stores = getattr(self._local, "stores", None)
        if stores is None:
            stores = self._local.stores = {}
        row = self.index.iloc[int(i)]
        ts = stores.get(row["store"]) or stores.setdefault(row["store"], TileStore(row["store"]))
        return ts[int(row["page"])]

    def get(self, idx) -> torch.Tensor:
        """uint8 (B, 3, H, W) tiles for the given row numbers."""
        if self.preloaded is not None:
            return self.preloaded[torch.as_tensor(idx).to(self.preloaded.device, non_blocking=True)]
        tiles = list(self._pool.map(self._read, list(idx)))
        # contiguous as the preloaded tiles are: a channels-last batch would take other conv kernels
        return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).contiguous()


class ReadAhead:
    """Batches drawn `depth` steps ahead and read from the stores by a background thread (whose
    reads fan out over the source's decode threads) while the training step runs; pinned when
    they go to a GPU. Every random draw of a batch (`draw(n, gen)`: tile rows, flips, the fake
    conditions...) is made from the trainer's generator in the same order as without read-ahead,
    only earlier, so the batches are the same; :meth:`state` is the generator's state before the
    first batch drawn and not yet used, which is what a checkpoint must record for a resume to
    continue with that batch. With `depth` 0 (tiles in memory) batches are drawn and read when
    asked for."""

    def __init__(self, source: TileSource, draw, depth: int, pin: bool = False):
        self.source, self.draw, self.depth, self.pin = source, draw, max(0, depth), pin
        self.queue: deque = deque()
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="read-ahead") if self.depth else None

    def _read(self, idx) -> torch.Tensor:
        x = self.source.get(idx)
        return x.pin_memory() if self.pin else x

    def next(self, n: int, gen: torch.Generator):
        """(the draws, the uint8 tiles) of the next batch of n."""
        while len(self.queue) <= self.depth:
            state = gen.get_state()
            d = self.draw(n, gen)
            self.queue.append((state, d, self._thread.submit(self._read, d["idx"]) if self._thread else None))
        _, d, fut = self.queue.popleft()
        return d, fut.result() if fut is not None else self._read(d["idx"])

    def state(self, gen: torch.Generator) -> torch.Tensor:
        return self.queue[0][0] if self.queue else gen.get_state()


def to_float(x_uint8: torch.Tensor, device) -> torch.Tensor:
    return x_uint8.to(device, non_blocking=True).float() / 127.5 - 1


def sampling_weights(index: pd.DataFrame, balance_column: str | None) -> torch.Tensor:
    if not balance_column:
        return torch.ones(len(index), dtype=torch.float64)
    counts = index[balance_column].map(index[balance_column].value_counts())
    return torch.as_tensor(1.0 / counts.to_numpy(np.float64))
