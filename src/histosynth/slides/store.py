"""Tile stores: one multi-page TIFF per slide (one lossless page per tile) + a parquet index.

Any TIFF reader (tifffile, ImageJ/Fiji, libvips) opens a store; pages are read at random by
index. Pixels are stored losslessly (deflate). The index is the authority on which tiles a
store holds: a store whose slide yielded no tiles holds a single 1x1 page that its
description marks as empty, because a TIFF cannot have zero pages.

Index columns (real tiles): slide_id, patient_id, label, page, x, y (level-0 pixels of the
tile's top-left corner), level, downsample, mpp (µm per pixel of the stored tile), mpp0 (µm per
level-0 pixel of the slide), tile_px,
tile_um, the QC scores, kept, reject_reason. Synthetic stores add seed, condition, network.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.utils import atomic_path


class TileStoreWriter:
    """Append tiles to a store; the file appears at `path` only after `close()` succeeds."""

    def __init__(self, path, meta: dict | None = None, compression_level: int = 1):
        import tifffile

        self.path = Path(path)
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._tif = tifffile.TiffWriter(self._tmp, bigtiff=True)
        self.meta = dict(meta or {})
        self.n = 0
        self.level = compression_level

    def encode(self, tile: np.ndarray) -> bytes:
        """The page's deflate stream (thread-safe: tiling threads encode while one thread writes)."""
        import zlib

        return zlib.compress(np.ascontiguousarray(tile, dtype=np.uint8).tobytes(), self.level)

    def append(self, tile: np.ndarray) -> int:
        return self.append_encoded(self.encode(tile), tile.shape)

    def append_encoded(self, encoded: bytes, shape) -> int:
        """Append a page from `encode()`'s output: one deflate strip of an RGB uint8 tile (or, for
        label-map stores, of a single-channel uint8 map of shape (H, W))."""
        desc = json.dumps({"histosynth_tile_store": 1, **self.meta}) if self.n == 0 else None
        photometric = "rgb" if len(shape) == 3 else "minisblack"
        self._tif.write(iter([encoded]), shape=tuple(shape), dtype=np.uint8, photometric=photometric, compression="zlib",
                        rowsperstrip=int(shape[0]), description=desc, metadata=None)
        self.n += 1
        return self.n - 1

    def close(self):
        if self.n == 0:
            desc = json.dumps({"histosynth_tile_store": 1, "empty": True, **self.meta})
            self._tif.write(np.zeros((1, 1, 3), np.uint8), photometric="rgb", description=desc, metadata=None)
        self._tif.close()
        self._ctx.__exit__(None, None, None)

    def abort(self):
        self._tif.close()
        self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)
        if self._tmp.exists():
            self._tmp.unlink()

    def __enter__(self):
        return self

    def __exit__(self, et, ev, tb):
        if et is None:
            self.close()
        else:
            self.abort()


class TileStore:
    """Random read access to a store's tiles by page number."""

    def __init__(self, path):
        import tifffile

        self.path = Path(path)
        self._tif = tifffile.TiffFile(self.path)
        desc = self._tif.pages[0].description or "{}"
        try:
            self.meta = json.loads(desc)
        except json.JSONDecodeError:
            self.meta = {}
        self.empty = bool(self.meta.get("empty"))

    def __len__(self):
        return 0 if self.empty else len(self._tif.pages)

    def __getitem__(self, i: int) -> np.ndarray:
        if self.empty:
            raise IndexError(f"tile store {self.path} is empty")
        if int(i) < 0:  # page -1 marks a rejected tile in the index: never wrap around
            raise IndexError(f"tile store {self.path}: no page {i} (rejected tiles have page -1)")
        return self._tif.pages[int(i)].asarray()

    def close(self):
        self._tif.close()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def write_index(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False)


def read_index(path) -> pd.DataFrame:
    return pd.read_parquet(path)


def load_tiles(index: pd.DataFrame, store_col: str = "store") -> np.ndarray:
    """All tiles named by `index` (rows need `store` and `page`), in index order, as (N, H, W, 3) uint8."""
    if len(index) == 0:
        return np.zeros((0, 1, 1, 3), np.uint8)
    out = [None] * len(index)
    pos = {k: i for i, k in enumerate(index.index)}
    for store, grp in index.groupby(store_col, sort=False):
        with TileStore(store) as ts:
            for k, page in zip(grp.index, grp["page"]):
                out[pos[k]] = ts[page]
    return np.stack(out)
