"""The U-Net of pix2pix: the mask runs' pix2pix generator and the segmentation network of
histosynth.evaluate.segnet (a neutral layer, so that neither imports the other's stage)."""
from __future__ import annotations

import math

import torch
import torch.nn as nn


class UNetGenerator(nn.Module):
    """pix2pix's U-Net, down to 2x2 (instance norm needs more than one pixel). With
    ``out_ch=K, tanh=False`` it is the segmentation network of histosynth.evaluate.segnet."""

    def __init__(self, label_nc, resolution, ngf=64, dropout=0.5, out_ch=3, tanh=True):
        super().__init__()
        self.label_nc, self.z_dim, self.resolution = label_nc, 0, resolution
        depth = int(math.log2(resolution)) - 1
        chs = [min(ngf * 2 ** i, ngf * 8) for i in range(depth)]
        self.down = nn.ModuleList()
        cin = label_nc
        for i, c in enumerate(chs):
            norm = [nn.InstanceNorm2d(c, affine=True)] if 0 < i < depth - 1 else []
            self.down.append(nn.Sequential(nn.Conv2d(cin, c, 4, 2, 1), *norm, nn.LeakyReLU(0.2)))
            cin = c
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            cout = chs[i - 1] if i > 0 else 64
            cin_up = chs[i] if i == depth - 1 else chs[i] * 2
            if i == 0:
                self.up.append(nn.Sequential(nn.ConvTranspose2d(cin_up, out_ch, 4, 2, 1), *([nn.Tanh()] if tanh else [])))
            else:
                drop = [nn.Dropout(dropout)] if i >= depth - 3 and dropout > 0 else []
                self.up.append(nn.Sequential(nn.ConvTranspose2d(cin_up, cout, 4, 2, 1), nn.InstanceNorm2d(cout, affine=True),
                                             *drop, nn.ReLU()))

    def forward(self, seg, z=None):
        skips, x = [], seg
        for d in self.down:
            x = d(x)
            skips.append(x)
        skips.pop()
        for i, u in enumerate(self.up):
            x = u(x if i == 0 else torch.cat([x, skips.pop()], 1))
        return x
