"""Tensors as images: network output to uint8, and the dihedral transforms (flips and 90°
rotations) a tile and its label map may take together without changing their meaning.
Grids and PNGs: histosynth.images."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def paired_dihedral(img: torch.Tensor, seg: torch.Tensor, gen: torch.Generator):
    """The same random flip / 90° rotation for each (C, H, W) tile and its (H, W) label map."""
    k = torch.randint(0, 4, (img.shape[0],), generator=gen)
    f = torch.randint(0, 2, (img.shape[0],), generator=gen).bool()
    oi, os_ = torch.empty_like(img), torch.empty_like(seg)
    for i in range(img.shape[0]):
        a, b = img[i].rot90(int(k[i]), dims=(1, 2)), seg[i].rot90(int(k[i]), dims=(0, 1))
        oi[i], os_[i] = (a.flip(2), b.flip(1)) if f[i] else (a, b)
    return oi, os_
