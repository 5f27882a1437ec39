"""Differentiable augmentation of everything the discriminator sees (real and fake alike).

* ``diffaugment`` (Zhao et al. 2020): colour, translation and cutout on every image.
* ``ada`` (Karras et al. 2020): the same operations plus flips/90° rotations, each applied
  with probability ``p`` that is tuned during training so that the discriminator's
  overfitting heuristic r_t = E[sign(D(real))] stays near a target (0.6).
* ``none``.

Flips and 90° rotations never leak: histology has no orientation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _where(mask, a, b):
    return torch.where(mask.view(-1, 1, 1, 1), a, b)


def augment(x: torch.Tensor, p: float, geometric: bool = True) -> torch.Tensor:
    """Apply each operation to each image with probability `p` (p=1: DiffAugment)."""
    if p <= 0:
        return x
    n = x.shape[0]
    dev = x.device

    def pick():
        return torch.rand(n, device=dev) < p

    if geometric:
        x = _where(pick(), x.flip(3), x)
        x = _where(pick(), x.rot90(1, dims=(2, 3)), x)
    # colour: brightness, saturation, contrast
    x = x + _where(pick(), (torch.rand(n, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5), torch.zeros_like(x[:, :1, :1, :1]))
    mean = x.mean(dim=1, keepdim=True)
    sat = _where(pick(), torch.rand(n, 1, 1, 1, device=dev, dtype=x.dtype) * 2, torch.ones_like(x[:, :1, :1, :1]))
    x = (x - mean) * sat + mean
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    con = _where(pick(), torch.rand(n, 1, 1, 1, device=dev, dtype=x.dtype) + 0.5, torch.ones_like(x[:, :1, :1, :1]))
    x = (x - mean) * con + mean
    # translation by up to 1/8 of the image, reflect padded
    h, w = x.shape[2:]
    sh, sw = h // 8, w // 8
    m = pick()
    ty = torch.where(m, torch.randint(-sh, sh + 1, (n,), device=dev), torch.zeros(n, dtype=torch.long, device=dev))
    tx = torch.where(m, torch.randint(-sw, sw + 1, (n,), device=dev), torch.zeros(n, dtype=torch.long, device=dev))
    xp = F.pad(x, [sw, sw, sh, sh], mode="reflect")
    gy = (torch.arange(h, device=dev).view(1, h, 1) + sh - ty.view(n, 1, 1)).clamp(0, h + 2 * sh - 1)
    gx = (torch.arange(w, device=dev).view(1, 1, w) + sw - tx.view(n, 1, 1)).clamp(0, w + 2 * sw - 1)
    bidx = torch.arange(n, device=dev).view(n, 1, 1)
    x = xp.permute(0, 2, 3, 1)[bidx, gy, gx].permute(0, 3, 1, 2)
    # cutout: a square of half the image size
    m = pick()
    cy = torch.randint(0, h, (n, 1, 1), device=dev)
    cx = torch.randint(0, w, (n, 1, 1), device=dev)
    yy = torch.arange(h, device=dev).view(1, h, 1)
    xx = torch.arange(w, device=dev).view(1, 1, w)
    hole = ((yy - cy).abs() < h // 4) & ((xx - cx).abs() < w // 4) & m.view(n, 1, 1)
    return x * (~hole).unsqueeze(1).to(x.dtype)


class AdaptiveAugment:
    """ADA's probability controller."""

    def __init__(self, mode: str, target: float = 0.6, speed_kimg: float = 100.0, interval: int = 4, p: float = 0.0):
        self.mode, self.target, self.speed_kimg, self.interval = mode, target, speed_kimg, interval
        self.p = 1.0 if mode == "diffaugment" else float(p)
        self._signs = []

    def __call__(self, x):
        if self.mode == "none":
            return x
        return augment(x, self.p, geometric=self.mode == "ada")

    def observe(self, d_real: torch.Tensor, batch_size: int, reduce=None):
        if self.mode != "ada":
            return None
        self._signs.append(torch.sign(d_real.detach().float()).mean())
        if len(self._signs) < self.interval:
            return None
        rt = torch.stack(self._signs).mean()
        if reduce is not None:
            rt = reduce(rt)
        rt = float(rt)
        self._signs = []
        adjust = (1 if rt > self.target else -1) * batch_size * self.interval / (self.speed_kimg * 1000)
        self.p = min(max(self.p + adjust, 0.0), 1.0)
        return rt

    def state_dict(self):
        return {"p": self.p, "signs": [float(s) for s in self._signs]}

    def load_state_dict(self, d):
        self.p = d["p"]
        self._signs = [torch.tensor(s) for s in d.get("signs", [])]
