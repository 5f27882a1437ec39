"""Differentiable image operations whose gradients are differentiable again, on every device.

``grid_sample``: bilinear sampling of a 4-D image at a grid of points (``F.grid_sample``
semantics), built so that R1 and path-length penalties can be taken *through* it.

Why: on CUDA, PyTorch's ``grid_sampler_2d_backward`` has no derivative of its own, so any
second-order penalty taken through ``F.grid_sample`` (R1 through ADA's geometric warp) fails
there with "derivative for aten::grid_sampler_2d_backward is not implemented", while the CPU
kernel has one, so CPU tests pass. Sampling is linear in the
image, so the gradient with respect to the image is the adjoint (transpose) of sampling applied
to the incoming gradient, and the derivative of that adjoint with respect to the incoming
gradient is sampling again. Two autograd functions that call each other as their backward
give every order of derivative with respect to the image and the incoming gradient. The grid
gets a first-order gradient (from the native kernel); second-order gradients through the grid
are refused, not silently dropped: ADA's grids are constants and never need them.

The same functions run on the CPU and on CUDA, so the CPU tests exercise exactly the code a GPU
runs. Sampling is done in float32 (bf16 images under autocast are upcast and the result cast
back), which every device's native kernel supports.
"""
from __future__ import annotations

import torch

_PADDING = {"zeros": 0, "border": 1, "reflection": 2}
_BILINEAR = 0


def grid_sample(x: torch.Tensor, grid: torch.Tensor, padding_mode: str = "reflection",
                align_corners: bool = False) -> torch.Tensor:
    """``F.grid_sample(x, grid, mode="bilinear", padding_mode=..., align_corners=...)`` for
    (N, C, H, W) images and (N, H', W', 2) grids, twice differentiable with respect to ``x``."""
    if x.dim() != 4 or grid.dim() != 4 or grid.shape[-1] != 2 or grid.shape[0] != x.shape[0]:
        raise ValueError(f"grid_sample takes (N, C, H, W) images and (N, H, W, 2) grids; got {tuple(x.shape)} and "
                         f"{tuple(grid.shape)}")
    dtype = x.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    out = _GridSample.apply(x.to(compute), grid.to(compute), _PADDING[padding_mode], bool(align_corners))
    return out.to(dtype)


def _native_backward(g, x, grid, padding, align, mask):
    return torch.ops.aten.grid_sampler_2d_backward(g, x, grid, _BILINEAR, padding, align, mask)


class _GridSample(torch.autograd.Function):
    """out = S(grid) x; backward: S(grid)^T g (via _GridSampleAdjoint, itself differentiable)."""

    @staticmethod
    def forward(ctx, x, grid, padding, align):
        ctx.save_for_backward(x, grid)
        ctx.padding, ctx.align = padding, align
        return torch.grid_sampler_2d(x, grid, _BILINEAR, padding, align)

    @staticmethod
    def backward(ctx, g):
        x, grid = ctx.saved_tensors
        gx = ggrid = None
        if ctx.needs_input_grad[1]:
            if torch.is_grad_enabled():
                raise RuntimeError("histosynth.gan.ops.grid_sample: second-order gradients through the sampling grid "
                                   "are not supported (detach the grid, as ADA's constant warps are)")
            ggrid = _native_backward(g, x, grid, ctx.padding, ctx.align, [False, True])[1]
        if ctx.needs_input_grad[0]:
            gx = _GridSampleAdjoint.apply(g, x, grid, ctx.padding, ctx.align)
        return gx, ggrid, None, None


class _GridSampleAdjoint(torch.autograd.Function):
    """gx = S(grid)^T g; its derivative with respect to g is S(grid) again (via _GridSample)."""

    @staticmethod
    def forward(ctx, g, x, grid, padding, align):
        ctx.save_for_backward(grid)
        ctx.padding, ctx.align = padding, align
        return _native_backward(g, x, grid, padding, align, [True, False])[0]

    @staticmethod
    def backward(ctx, ggx):
        (grid,) = ctx.saved_tensors
        if ctx.needs_input_grad[2]:
            raise RuntimeError("histosynth.gan.ops.grid_sample: second-order gradients through the sampling grid "
                               "are not supported (detach the grid, as ADA's constant warps are)")
        gg = _GridSample.apply(ggx, grid, ctx.padding, ctx.align) if ctx.needs_input_grad[0] else None
        # the adjoint does not depend on the image's values (sampling is linear): no gradient for x
        return gg, None, None, None, None
