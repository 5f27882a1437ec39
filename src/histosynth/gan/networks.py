"""StyleGAN2-family generator and residual projection discriminator, in plain PyTorch.

Follows Karras et al. (StyleGAN2 / -ADA): equalised learning rate, a mapping network with a
conditioning embedding, modulated and demodulated 3x3 convolutions (applied as input scaling
+ shared convolution + output scaling, the "non-fused" form, which needs no grouped or
custom CUDA kernels), per-layer noise inputs, skip-connected RGB outputs; a residual
discriminator with minibatch standard deviation and projection conditioning (Miyato &
Koyama). Up/down-sampling is bilinear / average pooling instead of the FIR filters.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SQRT2 = math.sqrt(2.0)


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def channels(res: int, channel_base: int, channel_max: int) -> int:
    return int(min(channel_base // res, channel_max))


class FC(nn.Module):
    """Equalised-learning-rate linear layer with optional lrelu (gain sqrt 2)."""

    def __init__(self, cin, cout, act=False, lr_mul=1.0, bias_init=0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full([cout], float(bias_init)))
        self.w_gain = lr_mul / math.sqrt(cin)
        self.b_gain = lr_mul
        self.act = act

    def forward(self, x):
        x = F.linear(x, self.weight * self.w_gain, self.bias * self.b_gain)
        return F.leaky_relu(x, 0.2) * SQRT2 if self.act else x


class Conv(nn.Module):
    """Equalised-learning-rate conv with optional lrelu and 2x average-pool downsampling."""

    def __init__(self, cin, cout, k, act=True, down=False, bias=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain = 1 / math.sqrt(cin * k * k)
        self.act, self.down, self.pad = act, down, k // 2

    def forward(self, x, gain=1.0):
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.pad)
        if self.down:
            x = F.avg_pool2d(x, 2)
        if self.act:
            x = F.leaky_relu(x, 0.2) * SQRT2
        return x * gain if gain != 1 else x


class MappingNetwork(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_mul=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.w_avg_beta = z_dim, c_dim, w_dim, num_ws, w_avg_beta
        self.embed = FC(c_dim, w_dim) if c_dim > 0 else None
        dims = [(z_dim if z_dim else 0) + (w_dim if c_dim else 0)] + [w_dim] * num_layers
        self.layers = nn.ModuleList(FC(dims[i], dims[i + 1], act=True, lr_mul=lr_mul) for i in range(num_layers))
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, psi=1.0, update_w_avg=False, w_center=None):
        parts = [normalize_2nd_moment(z)]
        if self.embed is not None:
            parts.append(normalize_2nd_moment(self.embed(c)))
        x = torch.cat(parts, dim=1)
        for layer in self.layers:
            x = layer(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            center = self.w_avg if w_center is None else w_center
            x = center.lerp(x, psi) if center.dim() == 1 else center.unsqueeze(1).lerp(x, psi)
        return x


class ModulatedConv(nn.Module):
    def __init__(self, cin, cout, w_dim, k=3, demodulate=True, up=False):
        super().__init__()
        self.affine = FC(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.demodulate, self.up, self.pad = demodulate, up, k // 2
        self.gain = 1 / math.sqrt(cin * k * k)

    def forward(self, x, w):
        styles = self.affine(w)  # (B, cin)
        weight = self.weight * self.gain
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = x * styles.to(x.dtype)[:, :, None, None]
        out = F.conv2d(x, weight.to(x.dtype), padding=self.pad)
        if self.demodulate:
            d = (weight.unsqueeze(0) * styles[:, None, :, None, None]).square().sum(dim=[2, 3, 4]).add(1e-8).rsqrt()
            out = out * d.to(out.dtype)[:, :, None, None]
        return out


class SynthesisLayer(nn.Module):
    def __init__(self, cin, cout, w_dim, res, up=False):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.res = res
        self.register_buffer("noise_const", torch.randn(res, res))

    def forward(self, x, w, noise_mode="random"):
        x = self.conv(x, w)
        if noise_mode == "random":
            x = x + torch.randn(x.shape[0], 1, self.res, self.res, device=x.device, dtype=x.dtype) * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength.to(x.dtype)
        return F.leaky_relu(x + self.bias.to(x.dtype)[None, :, None, None], 0.2) * SQRT2


class ToRGB(nn.Module):
    def __init__(self, cin, w_dim, img_channels=3):
        super().__init__()
        self.conv = ModulatedConv(cin, img_channels, w_dim, k=1, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(img_channels))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias.to(x.dtype)[None, :, None, None]


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, resolution, channel_base, channel_max, img_channels=3):
        super().__init__()
        assert resolution >= 8 and resolution & (resolution - 1) == 0, "resolution must be a power of two >= 8"
        self.resolution = resolution
        self.res_log2 = int(math.log2(resolution))
        def ch(r):
            return channels(r, channel_base, channel_max)

        self.const = nn.Parameter(torch.randn(ch(4), 4, 4))
        self.layers = nn.ModuleList([SynthesisLayer(ch(4), ch(4), w_dim, 4)])
        self.torgbs = nn.ModuleList([ToRGB(ch(4), w_dim, img_channels)])
        for r in [2**i for i in range(3, self.res_log2 + 1)]:
            self.layers.append(SynthesisLayer(ch(r // 2), ch(r), w_dim, r, up=True))
            self.layers.append(SynthesisLayer(ch(r), ch(r), w_dim, r))
            self.torgbs.append(ToRGB(ch(r), w_dim, img_channels))
        self.num_ws = len(self.layers) + 1  # + the last ToRGB

    def forward(self, ws, noise_mode="random"):
        x = self.const.unsqueeze(0).repeat(ws.shape[0], 1, 1, 1).to(ws.dtype)
        x = self.layers[0](x, ws[:, 0], noise_mode)
        img = self.torgbs[0](x, ws[:, 1])
        li = 1
        for block in range(1, len(self.torgbs)):
            x = self.layers[li](x, ws[:, li], noise_mode)
            x = self.layers[li + 1](x, ws[:, li + 1], noise_mode)
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False) + self.torgbs[block](x, ws[:, li + 2])
            li += 2
        return img


class Generator(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, resolution, channel_base=16384, channel_max=512, mapping_layers=8):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.resolution = z_dim, c_dim, w_dim, resolution
        self.synthesis = SynthesisNetwork(w_dim, resolution, channel_base, channel_max)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers)

    def forward(self, z, c, psi=1.0, noise_mode="random", update_w_avg=False, w_center=None):
        ws = self.mapping(z, c, psi=psi, update_w_avg=update_w_avg, w_center=w_center)
        return self.synthesis(ws, noise_mode)


class DBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv0 = Conv(cin, cin, 3)
        self.conv1 = Conv(cin, cout, 3, down=True)
        self.skip = Conv(cin, cout, 1, act=False, down=True, bias=False)

    def forward(self, x):
        y = self.skip(x, gain=math.sqrt(0.5))
        x = self.conv1(self.conv0(x), gain=math.sqrt(0.5))
        return x + y


class MinibatchStd(nn.Module):
    def __init__(self, group_size=4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        while n % g:
            g -= 1
        y = x.reshape(g, -1, c, h, w).float()
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[1, 2, 3])
        y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """Residual discriminator; with c_dim > 0 the score is projected on an embedding of c."""

    def __init__(self, c_dim, resolution, channel_base=16384, channel_max=512, cmap_dim=None):
        super().__init__()
        def ch(r):
            return channels(r, channel_base, channel_max)

        self.c_dim = c_dim
        self.fromrgb = Conv(3, ch(resolution), 1)
        blocks = []
        r = resolution
        while r > 4:
            blocks.append(DBlock(ch(r), ch(r // 2)))
            r //= 2
        self.blocks = nn.Sequential(*blocks)
        self.mbstd = MinibatchStd()
        self.conv = Conv(ch(4) + 1, ch(4), 3)
        self.fc = FC(ch(4) * 16, ch(4), act=True)
        self.cmap_dim = cmap_dim or ch(4)
        self.out = FC(ch(4), self.cmap_dim if c_dim else 1)
        if c_dim:
            self.cmap = nn.Sequential(FC(c_dim, self.cmap_dim, act=True), FC(self.cmap_dim, self.cmap_dim))

    def features(self, img):
        x = self.blocks(self.fromrgb(img))
        x = self.conv(self.mbstd(x))
        return self.fc(x.flatten(1))

    def forward(self, img, c):
        x = self.out(self.features(img))
        if self.c_dim:
            x = (x * self.cmap(c).to(x.dtype)).sum(dim=1, keepdim=True) / np.sqrt(self.cmap_dim)
        return x


def build_generator(opts: dict, c_dim: int) -> Generator:
    """The generator of a run's gan options for conditions of size `c_dim`."""
    return Generator(opts["z_dim"], c_dim, opts["w_dim"], opts["resolution"], opts["channel_base"],
                     opts["channel_max"], opts["mapping_layers"])
