"""Label-map-conditioned generators and their discriminator, in plain PyTorch.

* :class:`SPADEGenerator` (Park et al., CVPR 2019): a noise vector (or a style code from the
  optional :class:`StyleEncoder`, a VAE over real tiles) is projected to 4x4 and upsampled
  through residual blocks whose normalisation is **spatially adaptive**: instance-normalised
  activations are scaled and shifted per pixel by maps predicted from the label map.
* :class:`UNetGenerator` (pix2pix; Isola et al., CVPR 2017): an encoder-decoder with skip
  connections from the one-hot label map to the tile; dropout in the decoder. At generation
  time (eval mode) it is deterministic: a one-to-one baseline.
* :class:`MultiscaleDiscriminator`: PatchGAN discriminators on the image **concatenated with
  the label map**, at several scales (the input halved each time); every layer's features
  are returned for SPADE's feature-matching loss.

Spectral normalisation in the discriminator and SPADE's convolutions, as in SPADE.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.torch_utils.unet import UNetGenerator  # noqa: F401  (pix2pix's generator)

SN = nn.utils.spectral_norm


def one_hot(maps: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, H, W) integer maps -> (B, K, H, W) float one-hot."""
    return F.one_hot(maps.long(), n_classes).permute(0, 3, 1, 2).float()


def _ch(res, base, cmax):
    return int(min(base // res, cmax))


class SPADE(nn.Module):
    def __init__(self, ch, label_nc, hidden=64):
        super().__init__()
        self.norm = nn.InstanceNorm2d(ch, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, ch, 3, padding=1)
        self.beta = nn.Conv2d(hidden, ch, 3, padding=1)

    def forward(self, x, seg):
        a = self.shared(F.interpolate(seg, size=x.shape[2:], mode="nearest"))
        return self.norm(x) * (1 + self.gamma(a)) + self.beta(a)


class SPADEResBlock(nn.Module):
    def __init__(self, fin, fout, label_nc, hidden):
        super().__init__()
        mid = min(fin, fout)
        self.norm_0, self.conv_0 = SPADE(fin, label_nc, hidden), SN(nn.Conv2d(fin, mid, 3, padding=1))
        self.norm_1, self.conv_1 = SPADE(mid, label_nc, hidden), SN(nn.Conv2d(mid, fout, 3, padding=1))
        self.learned_shortcut = fin != fout
        if self.learned_shortcut:
            self.norm_s, self.conv_s = SPADE(fin, label_nc, hidden), SN(nn.Conv2d(fin, fout, 1, bias=False))

    def forward(self, x, seg):
        xs = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), 0.2))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), 0.2))
        return xs + dx


class StyleEncoder(nn.Module):
    """Real tile -> (mu, logvar) of a z_dim style code (SPADE's image encoder)."""

    def __init__(self, resolution, z_dim, channel_base, channel_max):
        super().__init__()
        layers, res, cin = [], resolution, 3
        while res > 4:
            cout = _ch(res // 2, channel_base, channel_max)
            layers += [SN(nn.Conv2d(cin, cout, 3, stride=2, padding=1)), nn.InstanceNorm2d(cout, affine=True),
                       nn.LeakyReLU(0.2)]
            cin, res = cout, res // 2
        self.net = nn.Sequential(*layers)
        self.mu = nn.Linear(cin * 16, z_dim)
        self.logvar = nn.Linear(cin * 16, z_dim)

    def forward(self, img):
        h = self.net(img).flatten(1)
        return self.mu(h), self.logvar(h)


class SPADEGenerator(nn.Module):
    def __init__(self, label_nc, resolution, z_dim=64, channel_base=16384, channel_max=512, spade_hidden=64,
                 style_encoder=False):
        super().__init__()
        if resolution < 8 or 2 ** int(math.log2(resolution)) != resolution:
            raise ValueError(f"resolution must be a power of two >= 8, got {resolution}")
        self.label_nc, self.z_dim, self.resolution = label_nc, z_dim, resolution
        self.c0 = _ch(4, channel_base, channel_max)
        self.fc = nn.Linear(z_dim, self.c0 * 16)
        self.head = SPADEResBlock(self.c0, self.c0, label_nc, spade_hidden)
        self.ups = nn.ModuleList()
        res, cin = 4, self.c0
        while res < resolution:
            res *= 2
            cout = _ch(res, channel_base, channel_max)
            self.ups.append(SPADEResBlock(cin, cout, label_nc, spade_hidden))
            cin = cout
        self.conv_img = nn.Conv2d(cin, 3, 3, padding=1)
        self.encoder = StyleEncoder(resolution, z_dim, channel_base, channel_max) if style_encoder else None

    def forward(self, seg, z):
        x = self.fc(z).view(-1, self.c0, 4, 4)
        x = self.head(x, seg)
        for blk in self.ups:
            x = blk(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        return torch.tanh(self.conv_img(F.leaky_relu(x, 0.2)))


class PatchDiscriminator(nn.Module):
    def __init__(self, in_ch, ndf=64, n_layers=3):
        super().__init__()
        blocks = [nn.Sequential(SN(nn.Conv2d(in_ch, ndf, 4, 2, 2)), nn.LeakyReLU(0.2))]
        c = ndf
        for i in range(1, n_layers):
            cn = min(c * 2, ndf * 8)
            stride = 2 if i < n_layers - 1 else 1
            blocks.append(nn.Sequential(SN(nn.Conv2d(c, cn, 4, stride, 2)), nn.InstanceNorm2d(cn), nn.LeakyReLU(0.2)))
            c = cn
        blocks.append(nn.Sequential(nn.Conv2d(c, 1, 4, 1, 2)))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        feats = []
        for b in self.blocks:
            x = b(x)
            feats.append(x)
        return feats


class MultiscaleDiscriminator(nn.Module):
    """PatchGANs on (image, one-hot label map) at ``n_scales`` scales. Returns, per scale, the
    list of layer features; the last entry is the patch logits."""

    def __init__(self, label_nc, ndf=64, n_layers=3, n_scales=2):
        super().__init__()
        self.ds = nn.ModuleList([PatchDiscriminator(3 + label_nc, ndf, n_layers) for _ in range(n_scales)])

    def forward(self, img, seg):
        x = torch.cat([img, seg], 1)
        out = []
        for i, d in enumerate(self.ds):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            out.append(d(x))
        return out


def build_mask_generator(mopts: dict, n_classes: int, resolution: int, z_dim: int):
    if mopts["method"] == "spade":
        return SPADEGenerator(n_classes, resolution, z_dim, mopts["channel_base"], mopts["channel_max"],
                              mopts["spade_hidden"], mopts["style_encoder"])
    if mopts["method"] == "pix2pix":
        return UNetGenerator(n_classes, resolution, mopts["ngf"], mopts["dropout"])
    raise ValueError(f"unknown mask method {mopts['method']!r}")


def build_mask_discriminator(mopts: dict, n_classes: int):
    return MultiscaleDiscriminator(n_classes, mopts["ndf"], mopts["d_layers"], mopts["d_scales"])
