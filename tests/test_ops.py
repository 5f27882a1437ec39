"""The twice-differentiable grid sampler (gan/ops.py) and the R1-through-ADA path it exists for.

PyTorch's CUDA grid sampler has no second derivative, while its CPU one does, so CPU tests of
F.grid_sample would pass while the GPU crashes. These tests pin the maths of our sampler to
F.grid_sample's (values, first and second derivatives, in float64) and check that the training
path reaches only our sampler, which runs the same code on every device."""
import json

import pytest
import torch
import torch.nn.functional as F

from histosynth.gan.augment import AdaptiveAugment, ada_augment
from histosynth.gan.loss import r1_penalty
from histosynth.gan.networks import Discriminator
from histosynth.gan.ops import grid_sample


def _warp(n, h, w, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.eye(2, 3, dtype=dtype).repeat(n, 1, 1) + 0.3 * torch.randn(n, 2, 3, generator=g, dtype=dtype)
    return F.affine_grid(theta, [n, 1, h, w], align_corners=False)


def _node_names(t):
    seen, names, stack = set(), set(), [t.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return names


@pytest.mark.parametrize("padding", ["reflection", "zeros", "border"])
@pytest.mark.parametrize("align", [False, True])
def test_values_and_gradients_match_native(padding, align):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    grid = _warp(2, 4, 7).requires_grad_(True)
    ours = grid_sample(x, grid, padding, align)
    ref = F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=align)
    assert torch.allclose(ours, ref, atol=1e-12)
    fn = lambda a, b: grid_sample(a, b, padding, align)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, grid))
    # second order with respect to the image (and the incoming gradient); the grid is constant
    assert torch.autograd.gradgradcheck(lambda a: grid_sample(a, grid.detach(), padding, align), (x,))


def test_second_derivative_equals_native_cpu():
    """On the CPU, PyTorch's own sampler has a second derivative: ours must give the same
    R1-style gradient (a Hessian-vector product) to float64 precision."""
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    grid = _warp(3, 8, 8, seed=1)
    grads = []
    for sample in (lambda a: grid_sample(a, grid), lambda a: F.grid_sample(a, grid, padding_mode="reflection",
                                                                           align_corners=False)):
        out = F.conv2d(torch.tanh(sample(x)), w).square().sum()
        (g,) = torch.autograd.grad(out, x, create_graph=True)
        grads.append(torch.autograd.grad(g.square().sum(), [x, w]))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10)


def test_grid_second_order_is_refused_not_dropped():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    grid = _warp(1, 4, 4).requires_grad_(True)
    out = grid_sample(x, grid).square().sum()
    torch.autograd.grad(out, [x, grid], retain_graph=True)  # first order through the grid: fine
    with pytest.raises(RuntimeError, match="sampling grid"):  # a graph for second order: refused
        torch.autograd.grad(out, [x, grid], create_graph=True)


def test_low_precision_is_sampled_in_float32():
    x = torch.randn(2, 3, 8, 8)
    grid = _warp(2, 8, 8, dtype=torch.float32)
    out = grid_sample(x.bfloat16(), grid.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.allclose(out.float(), grid_sample(x, grid.bfloat16().float()), atol=0.05)


def test_r1_through_ada_uses_only_our_sampler():
    """R1 through ADA at p=1 (every warp fires) backpropagates, and the autograd graph of the
    penalty holds our sampler's nodes and none of PyTorch's grid sampler (whose backward has
    no derivative on CUDA)."""
    torch.manual_seed(0)
    D = Discriminator(2, 16, 256, 32)
    aug = AdaptiveAugment("ada", fixed_p=1.0)
    real = torch.rand(8, 3, 16, 16) * 2 - 1
    c = torch.eye(2)[torch.arange(8) % 2]
    r1 = r1_penalty(D, real, c, aug)
    names = _node_names(r1)
    assert "_GridSampleAdjointBackward" in names and "_GridSampleBackward" in names
    assert not any("GridSampler" in n for n in names), names
    r1.backward()
    grads = [p.grad for p in D.parameters() if p.grad is not None]  # an output bias has no R1 gradient
    assert len(grads) > len(list(D.parameters())) // 2 and all(torch.isfinite(g).all() for g in grads)
    assert float(D.b16.fromrgb.weight.grad.abs().sum()) > 0


def test_ada_output_unchanged_by_the_new_sampler():
    """Same draws, same pixels as F.grid_sample would give (float32)."""
    x = torch.rand(16, 3, 16, 16) * 2 - 1
    torch.manual_seed(3)
    ours = ada_augment(x, 0.7)
    torch.manual_seed(3)
    import histosynth.gan.augment as A

    native = lambda a, g, padding_mode, align_corners: F.grid_sample(  # noqa: E731
        a, g, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)
    saved, A.grid_sample = A.grid_sample, native
    try:
        ref = ada_augment(x, 0.7)
    finally:
        A.grid_sample = saved
    assert torch.allclose(ours, ref, atol=1e-6)


def test_training_with_ada_never_calls_native_grid_sample(tmp_path, monkeypatch):
    """The StyleGAN2 loop with ADA held at p=0.5 and R1 at every step: F.grid_sample is never
    called (it is patched to fail), R1 is taken through the warp, and p stays at 0.5."""
    from toydata import toy_index

    from histosynth.config import validate
    from histosynth.gan.training.loop import train

    def forbidden(*a, **k):
        raise AssertionError("the training path reached F.grid_sample")

    monkeypatch.setattr(F, "grid_sample", forbidden)
    index, _, _ = toy_index(tmp_path, 16)
    opts = validate({"gan": dict(resolution=16, z_dim=16, w_dim=32, mapping_layers=2, channel_base=256,
                                 channel_max=32, batch=8, kimg=0.048, snap_kimg=0.048, tick_kimg=0.016,
                                 augment="ada", ada_p=0.5, r1_interval=1, pl_weight=2.0, pl_interval=2,
                                 device="cpu", grid_per_class=2)})["gan"]
    train(index, tmp_path / "run", opts, progress=False)
    stats = [json.loads(x) for x in open(tmp_path / "run" / "stats.jsonl")]
    assert all(s["augment_p"] == 0.5 for s in stats)
    assert all(s["r1"] is not None and s["r1"] > 0 for s in stats)
    assert all(s["pl"] is not None for s in stats)
