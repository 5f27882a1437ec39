"""FIR resampling as StyleGAN2 does it, in plain PyTorch (no custom kernels).

``upfirdn2d``: upsample by inserting zeros, pad (or crop), convolve with a 2-D FIR filter,
downsample by keeping every n-th sample; the filter is the outer product of [1, 3, 3, 1] with
itself, normalised to sum 1, applied as a depthwise convolution. ``conv2d_resample`` fuses a
convolution with 2x up- or downsampling the way StyleGAN2's layers compose them (padding once,
at the start), so networks trained with NVIDIA's stylegan2-ada-pytorch give the same outputs
here. The maths: Karras et al. 2020 (StyleGAN2), appendix B; the padding arithmetic places the
filter's centre on the sample grid for a filter of even length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

FIR = (1.0, 3.0, 3.0, 1.0)


def setup_filter(taps=FIR) -> torch.Tensor:
    """The 2-D low-pass filter (outer product of `taps`), normalised to sum 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f) if f.ndim == 1 else f
    return f / f.sum()


def _pads(padding) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, down: int = 1, padding=0, gain: float = 1.0):
    """Upsample (zeros), pad by `padding` = (x0, x1, y0, y1) (negative values crop), convolve
    with the 2-D filter `f` (true convolution, times `gain`), keep every `down`-th sample."""
    n, c, h, w = x.shape
    px0, px1, py0, py1 = _pads(padding)
    if up > 1:
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0):x.shape[2] - max(-py1, 0), max(-px0, 0):x.shape[3] - max(-px1, 0)]
    k = (f * gain).flip([0, 1]).to(x.dtype)
    return F.conv2d(x, k[None, None].expand(c, 1, *k.shape), groups=c, stride=down)


def upsample2d(x, f, up=2):
    """2x upsampling by the FIR filter (image skips of the generator)."""
    fw = f.shape[-1]
    p0, p1 = (fw + up - 1) // 2, (fw - up) // 2
    return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)


def downsample2d(x, f, down=2):
    fw = f.shape[-1]
    p0, p1 = (fw - down + 1) // 2, (fw - down) // 2
    return upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1))


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, flip_weight=True):
    """Convolution (`flip_weight` False) or correlation (True, as ``F.conv2d``) of `x` with `w`
    and optional 2x FIR up- or downsampling, padded once, as StyleGAN2's layers do.

    * no resampling: one ``conv2d`` with `padding`;
    * downsampling: FIR-filter with the combined padding, then a strided convolution (a 1x1
      kernel filters and decimates first);
    * upsampling: a transposed strided convolution (zeros inserted between samples, kernel
      applied) followed by the FIR filter with gain up**2.
    """
    kw = w.shape[-1]
    fw = f.shape[-1] if f is not None else 1
    p0 = p1 = padding
    if up > 1:
        p0, p1 = p0 + (fw + up - 1) // 2, p1 + (fw - up) // 2
    if down > 1:
        p0, p1 = p0 + (fw - down + 1) // 2, p1 + (fw - down) // 2
    if not flip_weight and up == 1:
        w = w.flip([2, 3])
    if down > 1 and up == 1:
        if kw == 1:
            return F.conv2d(upfirdn2d(x, f, down=down, padding=(p0, p1, p0, p1)), w)
        return F.conv2d(upfirdn2d(x, f, padding=(p0, p1, p0, p1)), w, stride=down)
    if up > 1:
        if kw == 1:
            x = F.conv2d(x, w)
            return upfirdn2d(x, f, up=up, padding=(p0, p1, p0, p1), gain=up * up)
        # conv_transpose2d computes a true convolution of the zero-stuffed input, so a
        # correlation (flip_weight) needs the kernel flipped first
        wt = (w.flip([2, 3]) if flip_weight else w).transpose(0, 1)
        p0, p1 = p0 - (kw - 1), p1 - (kw - up)
        t = max(min(-p0, -p1), 0)
        x = F.conv_transpose2d(x, wt, stride=up, padding=t)
        return upfirdn2d(x, f, padding=(p0 + t, p1 + t, p0 + t, p1 + t), gain=up * up)
    return F.conv2d(x, w, padding=padding)
