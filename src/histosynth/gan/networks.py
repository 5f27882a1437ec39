"""StyleGAN2(-ADA) generator and discriminator in plain PyTorch, with NVIDIA's layout.

The architecture of Karras et al. (StyleGAN2, and -ADA's "config F" as its training code builds
it): a mapping network (z normalised, the condition's embedding normalised and concatenated,
``mapping_layers`` lrelu layers at learning-rate multiplier 0.01, a tracked mean w for
truncation); a skip generator of ``b4 .. b<res>`` blocks, each with modulated and demodulated
3x3 convolutions (the first of a block upsampling 2x through the [1, 3, 3, 1] FIR filter),
per-layer noise with a learned strength, and an RGB output added to the FIR-upsampled image of
the block below; a residual discriminator of ``b<res> .. b8`` blocks (FIR downsampling), a
minibatch-standard-deviation epilogue ``b4`` and, for conditional networks, projection of the
output on a mapping of the condition (``cmap``). Equalised learning rate everywhere and
activations clamped to +-``conv_clamp``.

Module and parameter names, shapes, buffers and the order of w inputs are those of
stylegan2-ada-pytorch's ``training/networks.py``, so its networks load with a plain
``load_state_dict`` (``histosynth import-stylegan2``). The code is our own: modulation is
applied by scaling activations around one shared convolution (the "non-fused" form, which
stylegan2-ada uses for training; its grouped-convolution form computes the same numbers), and
no custom CUDA kernel is needed. Mixed precision is bf16 autocast instead of fp16 layers.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.gan.resample import conv2d_resample, setup_filter, upsample2d

SQRT2 = math.sqrt(2.0)
SQRT_HALF = math.sqrt(0.5)  # python floats: a numpy scalar would be traced as a tensor and break torch.compile graphs


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def channels(res: int, channel_base: int, channel_max: int) -> int:
    return int(min(channel_base // res, channel_max))


def bias_act(x, b=None, act="linear", gain=1.0, clamp=None):
    """x + b, then lrelu(0.2) with gain sqrt(2) (or identity), times `gain`, clamped to +-clamp."""
    if b is not None:
        x = x + b.to(x.dtype).reshape(1, -1, *([1] * (x.ndim - 2)))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
        gain = gain * SQRT2
    if gain != 1:
        x = x * gain
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Equalised-learning-rate linear layer."""

    def __init__(self, in_features, out_features, bias=True, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.activation == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, act=self.activation)


class Conv2dLayer(nn.Module):
    """Equalised-learning-rate convolution with optional FIR 2x resampling, bias, lrelu, clamp."""

    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear", up=1, down=1,
                 conv_clamp=None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x, gain=1.0):
        w = (self.weight * self.weight_gain).to(x.dtype)
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding,
                            flip_weight=self.up == 1)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=gain, clamp=clamp)


class MappingNetwork(nn.Module):
    """z (and the condition's embedding) to w, broadcast to `num_ws` inputs; tracks the mean w."""

    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01, w_avg_beta=0.995):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.num_layers, self.w_avg_beta = num_layers, w_avg_beta
        embed = w_dim if c_dim > 0 else 0
        feats = [z_dim + embed] + [w_dim] * num_layers
        if c_dim > 0:
            self.embed = FullyConnectedLayer(c_dim, embed)
        for i in range(num_layers):
            setattr(self, f"fc{i}", FullyConnectedLayer(feats[i], feats[i + 1], activation="lrelu",
                                                       lr_multiplier=lr_multiplier))
        if num_ws is not None and w_avg_beta is not None:
            self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, c, psi=1.0, update_w_avg=False, w_center=None, truncation_cutoff=None):
        x = None
        if self.z_dim > 0:
            x = normalize_2nd_moment(z.float())
        if self.c_dim > 0:
            y = normalize_2nd_moment(self.embed(c.float()))
            x = torch.cat([x, y], dim=1) if x is not None else y
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        if update_w_avg:
            self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.w_avg_beta))
        if self.num_ws is None:
            return x
        x = x.unsqueeze(1).repeat(1, self.num_ws, 1)
        if psi != 1:
            center = self.w_avg if w_center is None else w_center
            center = center.unsqueeze(1) if center.dim() == 2 else center
            cut = self.num_ws if truncation_cutoff is None else truncation_cutoff
            x = torch.cat([center.lerp(x[:, :cut], psi), x[:, cut:]], dim=1)
        return x


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None, demodulate=True,
                     flip_weight=True):
    """Modulate the input channels by `styles`, convolve with the shared `weight`, demodulate
    each sample's output channels by the norm of its modulated weight, add noise."""
    b = x.shape[0]
    x = x * styles.to(x.dtype).reshape(b, -1, 1, 1)
    x = conv2d_resample(x, weight.to(x.dtype), resample_filter, up=up, padding=padding, flip_weight=flip_weight)
    if demodulate:  # sum_i s_i^2 sum_k w_oik^2, without the (B, O, I, k, k) weight tensor, in fp32 at least
        dt = torch.promote_types(styles.dtype, torch.float32)
        with torch.autocast(x.device.type, enabled=False):
            dcoefs = (styles.to(dt).square() @ weight.to(dt).square().sum(dim=[2, 3]).t() + 1e-8).rsqrt()
        x = x * dcoefs.to(x.dtype).reshape(b, -1, 1, 1)
    if noise is not None:
        x = x + noise.to(x.dtype)
    return x


class SynthesisLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, kernel_size=3, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, w, noise_mode="random", gain=1.0):
        styles = self.affine(w)
        noise = None
        if isinstance(noise_mode, SeededNoise):
            noise = noise_mode.draw(self.resolution, x.device) * self.noise_strength
        elif noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.resolution, self.resolution, device=x.device) * self.noise_strength
        elif noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        x = modulated_conv2d(x, self.weight, styles, noise, up=self.up, padding=self.padding,
                             resample_filter=self.resample_filter, flip_weight=self.up == 1)
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act="lrelu", gain=gain, clamp=clamp)


class SeededNoise:
    """``noise_mode`` for images reproducible by seed that still differ in their stochastic detail:
    each sample's per-layer noise maps are drawn, layer after layer, from a generator seeded by
    the sample's own seed, so an image depends on its seed alone (not on the batch it is made in),
    and two seeds get independent noise, as every image does in training (``"random"``).
    ``"const"`` (NVIDIA's generate.py default) instead gives every image the same stored maps:
    the same fine detail at the same places in every tile. One instance serves one forward pass."""

    def __init__(self, seeds):
        # torch's CPU generator keeps 32 bits of its seed: a bijection of the seed's low 32 bits
        # (Knuth's multiplicative hash and a fixed offset), a stream apart from torch.manual_seed(seed)
        self.gens = [torch.Generator().manual_seed((int(s) * 2654435761 + 0x6E6F6973) % 2 ** 32) for s in seeds]

    def draw(self, resolution: int, device) -> torch.Tensor:
        return torch.stack([torch.randn(1, resolution, resolution, generator=g) for g in self.gens]).to(device)


class ToRGBLayer(nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, kernel_size=1, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size ** 2)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: (const | 2x-up conv0), conv1, toRGB."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def forward(self, x, img, ws, noise_mode="random"):
        if self.in_channels == 0:
            x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)
            x = self.conv1(x, ws[:, 1], noise_mode)
        y = self.torgb(x, ws[:, self.num_conv]).float()
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels=3, channel_base=32768, channel_max=512, conv_clamp=None):
        super().__init__()
        if img_resolution < 4 or img_resolution & (img_resolution - 1):
            raise ValueError(f"resolution must be a power of two >= 4, not {img_resolution}")
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(2, int(math.log2(img_resolution)) + 1)]
        self.num_ws = 0
        for res in self.block_resolutions:
            cin = channels(res // 2, channel_base, channel_max) if res > 4 else 0
            block = SynthesisBlock(cin, channels(res, channel_base, channel_max), w_dim, res, img_channels, conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1  # the last block's toRGB; the others share the next block's first w

    def forward(self, ws, noise_mode="random"):
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            x, img = block(x, img, ws[:, w_idx:w_idx + block.num_conv + block.num_torgb], noise_mode)
            w_idx += block.num_conv
        return img


class Generator(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, resolution, channel_base=16384, channel_max=512, mapping_layers=8,
                 conv_clamp=256, img_channels=3):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_channels = z_dim, c_dim, w_dim, img_channels
        self.resolution = self.img_resolution = resolution
        self.synthesis = SynthesisNetwork(w_dim, resolution, img_channels, channel_base, channel_max, conv_clamp)
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, self.num_ws, mapping_layers)

    def mix_styles(self, ws, c, prob: float):
        """Style mixing regularisation: with probability `prob`, the w inputs from a random
        cutoff on come from a second latent (one cutoff per batch, as stylegan2-ada), selected
        by a mask so that neither a host sync nor a recompilation is needed."""
        cutoff = torch.randint(1, self.num_ws, [], device=ws.device)
        cutoff = torch.where(torch.rand([], device=ws.device) < prob, cutoff, torch.full_like(cutoff, self.num_ws))
        ws2 = self.mapping(torch.randn(ws.shape[0], self.z_dim, device=ws.device), c)
        later = (torch.arange(self.num_ws, device=ws.device) >= cutoff).reshape(1, -1, 1)
        return torch.where(later, ws2, ws)

    def forward(self, z, c, psi=1.0, noise_mode="random", update_w_avg=False, w_center=None, style_mixing=0.0,
                truncation_cutoff=None):
        ws = self.mapping(z, c, psi=psi, update_w_avg=update_w_avg, w_center=w_center,
                          truncation_cutoff=truncation_cutoff)
        if style_mixing > 0:
            ws = self.mix_styles(ws, c, style_mixing)
        return self.synthesis(ws, noise_mode)


class DiscriminatorBlock(nn.Module):
    """One resolution of the residual discriminator: (fromRGB), conv0, 2x-down conv1, skip."""

    def __init__(self, in_channels, tmp_channels, out_channels, resolution, img_channels, conv_clamp=None):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", setup_filter())
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, activation="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2, conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=SQRT_HALF)
        x = self.conv1(self.conv0(x), gain=SQRT_HALF)
        return y + x


class MinibatchStdLayer(nn.Module):
    def __init__(self, group_size=4, num_channels=1):
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size or n, n)
        while n % g:  # stylegan2-ada needs the batch divisible by the group; take the largest divisor
            g -= 1
        f = self.num_channels
        y = x.float().reshape(g, -1, f, c // f, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=[2, 3, 4])
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w).to(x.dtype)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, in_channels, cmap_dim, resolution, mbstd_group_size=4, mbstd_num_channels=1, conv_clamp=None):
        super().__init__()
        self.cmap_dim = cmap_dim
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels)
        self.conv = Conv2dLayer(in_channels + mbstd_num_channels, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * resolution ** 2, in_channels, activation="lrelu")
        self.out = FullyConnectedLayer(in_channels, cmap_dim or 1)

    def forward(self, x, cmap, return_embedding=False):
        h = self.out(self.fc(self.conv(self.mbstd(x)).flatten(1)))
        x = h
        if self.cmap_dim > 0:
            x = (h * cmap.to(h.dtype)).sum(dim=1, keepdim=True) * (1 / math.sqrt(self.cmap_dim))
        return (x, h, cmap) if return_embedding else x


class Discriminator(nn.Module):
    """Residual discriminator; with c_dim > 0 its output is projected on the condition mapped by
    an 8-layer mapping network (``cmap``), as stylegan2-ada."""

    def __init__(self, c_dim, resolution, channel_base=16384, channel_max=512, cmap_dim=None, mbstd_group=4,
                 conv_clamp=256, img_channels=3):
        super().__init__()
        self.c_dim, self.img_resolution, self.img_channels = c_dim, resolution, img_channels
        self.block_resolutions = [2 ** i for i in range(int(math.log2(resolution)), 2, -1)]
        def ch(r):
            return channels(r, channel_base, channel_max)

        cmap_dim = (ch(4) if cmap_dim is None else cmap_dim) if c_dim else 0
        for res in self.block_resolutions:
            cin = ch(res) if res < resolution else 0
            setattr(self, f"b{res}", DiscriminatorBlock(cin, ch(res), ch(res // 2), res, img_channels, conv_clamp))
        if c_dim > 0:
            self.mapping = MappingNetwork(0, c_dim, cmap_dim, None, w_avg_beta=None)
        self.b4 = DiscriminatorEpilogue(ch(4), cmap_dim, 4, mbstd_group, conv_clamp=conv_clamp)

    def forward(self, img, c, return_embedding=False):
        """The score; with `return_embedding`, (score, the image's embedding before the projection,
        the mapped condition), for the conditional contrastive loss."""
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        cmap = self.mapping(None, c) if self.c_dim > 0 else None
        return self.b4(x, cmap, return_embedding)


def build_generator(opts: dict, c_dim: int) -> Generator:
    """The generator of a run's gan options for conditions of size `c_dim`."""
    return Generator(opts["z_dim"], c_dim, opts["w_dim"], opts["resolution"], opts["channel_base"],
                     opts["channel_max"], opts["mapping_layers"], opts["conv_clamp"])


def build_discriminator(opts: dict, c_dim: int) -> Discriminator:
    return Discriminator(c_dim, opts["resolution"], opts["channel_base"], opts["channel_max"],
                         mbstd_group=opts["mbstd_group"], conv_clamp=opts["conv_clamp"])
