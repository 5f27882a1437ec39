"""Image grids and PNGs, shared by training (sample grids), generation (blends), drawing and
the report; needs numpy and Pillow only (no torch), so the light report environment has it."""
from __future__ import annotations

import math

import numpy as np

from histosynth.utils import atomic_path


def grid(images_uint8: np.ndarray, rows: int) -> np.ndarray:
    """(N, H, W, C) images laid out row-major in `rows` rows, white where the last row is short."""
    n, h, w, c = images_uint8.shape
    cols = math.ceil(n / rows)
    out = np.full((rows * h, cols * w, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = images_uint8[i]
    return out


def tile_rows(rows: list[list], pad: int = 2) -> np.ndarray:
    """uint8 grid: each row a list of HxWx3 tiles (rows may be ragged), `pad` white pixels apart."""
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, ncol * (w + pad) - pad, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, t in enumerate(r):
            out[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = t
    return out


def save_png(arr: np.ndarray, path) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
