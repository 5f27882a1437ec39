"""Tensors as images: network output to uint8, and the dihedral transforms (flips and 90°
rotations) a tile and its label map may take together without changing their meaning.
Grids and PNGs: histosynth.images."""
from __future__ import annotations

import numpy as np
import torch


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> (N, H, W, C) uint8."""
    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def dihedral(x: torch.Tensor, k: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Each (C, H, W) image x[i] turned k[i] quarter turns, then mirrored where f[i] (k, f: N
    draws on the CPU). Square batches are transformed on x's own device all at once, the draws
    copied there without a host sync; others image by image."""
    if x.shape[-1] == x.shape[-2]:
        k = k.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        f = f.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
        out = x
        for r in (1, 2, 3):
            out = torch.where(k == r, x.rot90(r, dims=(2, 3)), out)
        return torch.where(f, out.flip(3), out)
    out = torch.empty_like(x)
    for i in range(x.shape[0]):
        t = x[i].rot90(int(k[i]), dims=(1, 2))
        out[i] = t.flip(2) if f[i] else t
    return out


def dihedral_draws(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n random quarter-turn counts and mirror flags from `gen` (a CPU generator)."""
    return torch.randint(0, 4, (n,), generator=gen), torch.randint(0, 2, (n,), generator=gen).bool()


def paired_dihedral(img: torch.Tensor, seg: torch.Tensor, gen: torch.Generator):
    """The same random flip / 90° rotation for each (C, H, W) tile and its (H, W) label map."""
    k, f = dihedral_draws(img.shape[0], gen)
    return dihedral(img, k, f), dihedral(seg.unsqueeze(1), k, f).squeeze(1)
