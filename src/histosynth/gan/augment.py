"""Differentiable augmentation of everything the discriminator sees (real and fake alike).

* ``diffaugment`` (Zhao et al. 2020): colour (brightness, saturation, contrast), translation
  and cutout on every image.
* ``ada`` (Karras et al. 2020): the "bgc" pipeline of stylegan2-ada, each operation applied to
  each image with probability ``p``, where ``p`` is tuned during training so that the
  discriminator's overfitting heuristic r_t = E[sign(D(real))] stays near a target (0.6):
  - pixel blitting: x-flip, 90° rotation, integer translation (up to 1/8 of the size);
  - general geometric: isotropic scaling (log2-normal, sd 0.2), arbitrary rotation,
    anisotropic scaling (log2-normal, sd 0.2), fractional translation (normal, sd 1/8);
  - colour: brightness (normal, sd 0.2), contrast (log2-normal, sd 0.5), luma flip, hue
    rotation about the luma axis, saturation (log2-normal, sd 1);
  - cutout (a square of half the size), as the corruption ADA lists.
  All geometric operations are composed into one affine map per image and resampled once
  (bilinear, with ``histosynth.gan.ops.grid_sample``, which R1 can differentiate through on
  every device; reflection padding: no black borders the discriminator could learn from; the
  NVlabs code upsamples with a wavelet filter first, which this leaves out). Colour operations
  are composed into one 4x4 matrix on homogeneous RGB, as in the NVlabs code.
* ``none``.

Flips and 90° rotations never leak: histology has no orientation. Every operation is zero-mean
in its log or linear parameter, so for p < ~0.8 the generator cannot satisfy D by producing
augmented-looking tiles (the ADA paper's non-leaking condition).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from histosynth.gan.ops import grid_sample


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


def _rot2(theta):
    c, s = torch.cos(theta), torch.sin(theta)
    m = torch.zeros(theta.shape[0], 3, 3, device=theta.device, dtype=theta.dtype)
    m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1], m[:, 2, 2] = c, -s, s, c, 1
    return m


def _scale2(sx, sy):
    m = torch.zeros(sx.shape[0], 3, 3, device=sx.device, dtype=sx.dtype)
    m[:, 0, 0], m[:, 1, 1], m[:, 2, 2] = sx, sy, 1
    return m


def _trans2(tx, ty):
    m = torch.eye(3, device=tx.device, dtype=tx.dtype).repeat(tx.shape[0], 1, 1)
    m[:, 0, 2], m[:, 1, 2] = tx, ty
    return m


def ada_augment(x: torch.Tensor, p: float, cutout: bool = True) -> torch.Tensor:
    """The ADA "bgc" pipeline (+ cutout), each operation with probability `p` per image.
    `x` is (N, C, H, W) in [-1, 1]; differentiable with respect to `x`."""
    if p <= 0:
        return x
    n, _, h, w = x.shape
    dev = x.device
    f32 = dict(device=dev, dtype=torch.float32)

    def gate(v, neutral):  # v where the op fires (probability p), else the neutral value
        return torch.where(torch.rand(n, **f32) < p, v, torch.full_like(v, neutral))

    # geometric: one affine map in normalised output coordinates -> input coordinates
    G = torch.eye(3, **f32).repeat(n, 1, 1)
    flip = gate(torch.randint(0, 2, (n,), device=dev).float(), 0)
    G = G @ _scale2(1 - 2 * flip, torch.ones(n, **f32))
    rot90 = gate(torch.randint(0, 4, (n,), device=dev).float(), 0)
    G = G @ _rot2(rot90 * math.pi / 2)
    on = torch.rand(n, **f32) < p  # integer translation: whole pixels, both axes under one draw
    tx = torch.round((torch.rand(n, **f32) * 2 - 1) * 0.125 * w) / w * 2 * on
    ty = torch.round((torch.rand(n, **f32) * 2 - 1) * 0.125 * h) / h * 2 * on
    G = G @ _trans2(tx, ty)
    iso = torch.exp2(gate(torch.randn(n, **f32) * 0.2, 0))
    G = G @ _scale2(iso, iso)
    G = G @ _rot2(gate((torch.rand(n, **f32) * 2 - 1) * math.pi, 0))
    aniso = torch.exp2(gate(torch.randn(n, **f32) * 0.2, 0))
    phi = (torch.rand(n, **f32) * 2 - 1) * math.pi
    G = G @ _rot2(phi) @ _scale2(aniso, 1 / aniso) @ _rot2(-phi)
    G = G @ _trans2(gate(torch.randn(n, **f32) * 0.125 * 2, 0), gate(torch.randn(n, **f32) * 0.125 * 2, 0))
    # Every image is warped and the unmoved ones keep their pixels (torch.where): no host sync
    # on how many moved. The sampler is our twice-differentiable one (gan/ops.py), so R1 can be
    # taken through the warp on CUDA, where F.grid_sample has no second derivative.
    moved = (G - torch.eye(3, **f32)).abs().amax(dim=(1, 2)) > 1e-6
    grid = F.affine_grid(G[:, :2, :], [n, x.shape[1], h, w], align_corners=False)
    warped = grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    x = torch.where(moved.view(n, 1, 1, 1), warped, x)

    # colour: one 4x4 matrix on homogeneous RGB (ADA's luma axis)
    if x.shape[1] == 3:
        C = torch.eye(4, **f32).repeat(n, 1, 1)
        v = F.pad(torch.ones(3, **f32), (0, 1)) / math.sqrt(3)  # luma axis (made on the device: no host copy)
        b = gate(torch.randn(n, **f32) * 0.2, 0)
        T = torch.eye(4, **f32).repeat(n, 1, 1)
        T[:, :3, 3] = b[:, None]
        C = T @ C
        c = torch.exp2(gate(torch.randn(n, **f32) * 0.5, 0))
        S = torch.eye(4, **f32).repeat(n, 1, 1)
        S[:, 0, 0] = S[:, 1, 1] = S[:, 2, 2] = c
        C = S @ C
        outer = torch.outer(v, v)
        luma = gate(torch.randint(0, 2, (n,), device=dev).float(), 0)
        C = (torch.eye(4, **f32) - 2 * outer * luma.view(n, 1, 1)) @ C  # Householder reflection
        theta = gate((torch.rand(n, **f32) * 2 - 1) * math.pi, 0)
        C = _rot_axis(v[:3], theta) @ C
        sat = torch.exp2(gate(torch.randn(n, **f32) * 1.0, 0))
        C = (outer + (torch.eye(4, **f32) - outer) * sat.view(n, 1, 1)) @ C
        moved = (C - torch.eye(4, **f32)).abs().amax(dim=(1, 2)) > 1e-6
        M = C[:, :3, :3].to(x.dtype)
        t = C[:, :3, 3].to(x.dtype)
        y = torch.einsum("nij,njhw->nihw", M, x) + t.view(n, 3, 1, 1)
        x = torch.where(moved.view(n, 1, 1, 1), y, x)

    if cutout:
        m = torch.rand(n, device=dev) < p
        cy = torch.rand(n, 1, 1, device=dev) * h
        cx = torch.rand(n, 1, 1, device=dev) * w
        yy = torch.arange(h, device=dev).view(1, h, 1) + 0.5
        xx = torch.arange(w, device=dev).view(1, 1, w) + 0.5
        hole = ((yy - cy).abs() < h / 4) & ((xx - cx).abs() < w / 4) & m.view(n, 1, 1)
        x = x * (~hole).unsqueeze(1).to(x.dtype)
    return x


def _rot_axis(axis, theta):
    """(N, 4, 4) rotations by `theta` about the unit 3-vector `axis` (Rodrigues)."""
    n = theta.shape[0]
    a = axis.view(1, 3)
    K = torch.zeros(3, 3, device=axis.device, dtype=axis.dtype)
    K[0, 1], K[0, 2], K[1, 0], K[1, 2], K[2, 0], K[2, 1] = -a[0, 2], a[0, 1], a[0, 2], -a[0, 0], -a[0, 1], a[0, 0]
    s, c = torch.sin(theta).view(n, 1, 1), torch.cos(theta).view(n, 1, 1)
    R3 = torch.eye(3, device=axis.device, dtype=axis.dtype) + s * K + (1 - c) * (K @ K)
    R = torch.eye(4, device=axis.device, dtype=axis.dtype).repeat(n, 1, 1)
    R[:, :3, :3] = R3
    return R


class AdaptiveAugment:
    """ADA's probability controller."""

    def __init__(self, mode: str, target: float = 0.6, speed_kimg: float = 100.0, interval: int = 4, p: float = 0.0,
                 fixed_p: float | None = None):
        self.mode, self.target, self.speed_kimg, self.interval = mode, target, speed_kimg, interval
        self.fixed = fixed_p is not None and mode == "ada"
        self.p = 1.0 if mode == "diffaugment" else float(fixed_p if self.fixed else p)
        self._signs = []

    def __call__(self, x):
        if self.mode == "none":
            return x
        if self.mode == "ada":
            return ada_augment(x, self.p)
        return augment(x, self.p, geometric=False)

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
        if self.fixed:  # gan.ada_p: r_t is still measured and logged, p stays put
            return rt
        adjust = (1 if rt > self.target else -1) * batch_size * self.interval / (self.speed_kimg * 1000)
        self.p = min(max(self.p + adjust, 0.0), 1.0)
        return rt

    def state_dict(self):
        return {"p": self.p, "signs": [float(s) for s in self._signs]}

    def load_state_dict(self, d):
        self.p = d["p"]
        self._signs = [torch.tensor(s) for s in d.get("signs", [])]
