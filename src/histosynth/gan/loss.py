"""StyleGAN2 losses: non-saturating logistic, lazy R1 on reals, optional path-length penalty."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def g_main_loss(D, fake, c, aug):
    return F.softplus(-D(aug(fake), c)).mean()


def d_main_loss(D, real, fake, c_real, c_fake, aug):
    d_fake = D(aug(fake.detach()), c_fake)
    d_real = D(aug(real), c_real)
    return F.softplus(d_fake).mean() + F.softplus(-d_real).mean(), d_real


def r1_penalty(D, real, c, aug):
    real = real.detach().requires_grad_(True)
    d_real = D(aug(real), c)
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]).mean()


def path_length_penalty(G, z, c, pl_mean: torch.Tensor, decay=0.01):
    ws = G.mapping(z, c)
    img = G.synthesis(ws)
    noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square().mean(), new_mean
