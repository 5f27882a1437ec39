"""Training tiles for the GAN: read from tile stores, training patients only, as [-1, 1] tensors.

Batches are drawn by index lists from a seeded generator the trainer owns (and checkpoints),
so a resumed run sees exactly the batches an uninterrupted run would."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from histosynth.slides.store import TileStore, load_tiles
from histosynth.torch_utils.images import dihedral, dihedral_draws
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
        return torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)


def to_float(x_uint8: torch.Tensor, device) -> torch.Tensor:
    return x_uint8.to(device, non_blocking=True).float() / 127.5 - 1


def random_dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flip / 90° rotation per image (histology has no orientation). The draws come from
    `gen` (a CPU generator the trainer checkpoints); square batches are transformed on their
    own device with no per-image loop and no host sync."""
    return dihedral(x, *dihedral_draws(x.shape[0], gen))


def sampling_weights(index: pd.DataFrame, balance_column: str | None) -> torch.Tensor:
    if not balance_column:
        return torch.ones(len(index), dtype=torch.float64)
    counts = index[balance_column].map(index[balance_column].value_counts())
    return torch.as_tensor(1.0 / counts.to_numpy(np.float64))
