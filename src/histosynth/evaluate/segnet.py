"""A segmentation network for label sets the colour segmenter cannot produce (GeoJSON and
PanNuke classes): a U-Net (the pix2pix architecture with K output channels) trained with
cross-entropy on **real training** tiles and their maps. Layout fidelity then segments real
held-out tiles (the ceiling) and generated tiles with the same network."""
from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from histosynth import torchio

log = logging.getLogger(__name__)


class SegNet:
    def __init__(self, n_classes: int, resolution: int, ngf: int = 32, device="cpu"):
        from histosynth.torch_utils.unet import UNetGenerator

        self.n_classes, self.resolution, self.ngf, self.device = n_classes, resolution, ngf, device
        self.net = UNetGenerator(3, resolution, ngf, dropout=0.0, out_ch=n_classes, tanh=False).to(device)

    def fit(self, tiles: np.ndarray, maps: np.ndarray, steps=2000, batch=16, lr=2e-3, seed=0, progress=True):
        from tqdm import tqdm

        from histosynth.torch_utils.images import paired_dihedral

        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        x_all, y_all = torch.from_numpy(tiles).permute(0, 3, 1, 2), torch.from_numpy(maps)
        # class weights: rare classes (nuclei) count as much as common ones
        freq = np.bincount(maps.ravel(), minlength=self.n_classes).astype(np.float64)
        w = torch.tensor(np.where(freq > 0, freq.sum() / np.maximum(freq, 1) / self.n_classes, 0), dtype=torch.float32)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        self.net.train()
        for _ in tqdm(range(steps), desc="segmentation network", disable=not progress):
            idx = torch.randint(0, len(x_all), (batch,), generator=gen)
            x, y = paired_dihedral(x_all[idx], y_all[idx], gen)
            logits = self.net(x.to(self.device).float() / 127.5 - 1)
            loss = F.cross_entropy(logits, y.long().to(self.device), weight=w.clamp(max=20).to(self.device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def segment(self, tiles: np.ndarray, batch=64) -> np.ndarray:
        out = []
        for i in range(0, len(tiles), batch):
            x = torch.from_numpy(np.ascontiguousarray(tiles[i:i + batch])).permute(0, 3, 1, 2).to(self.device).float()
            out.append(self.net(x / 127.5 - 1).argmax(1).to(torch.uint8).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0,) + tiles.shape[1:3], np.uint8)

    def save(self, path):
        torchio.save(path, {"state": self.net.state_dict(), "n_classes": self.n_classes,
                            "resolution": self.resolution, "ngf": self.ngf})

    @classmethod
    def load(cls, path, device="cpu"):
        d = torchio.load(path, "segmentation network", "re-run the train_segnet rule")
        s = cls(d["n_classes"], d["resolution"], d["ngf"], device)
        s.net.load_state_dict(d["state"])
        s.net.eval()
        return s


def load_segmenter(path, device="cpu"):
    """The segmenter saved at `path`: colour-deconvolution (.json) or the U-Net (.pt)."""
    if str(path).endswith(".json"):
        from histosynth.masks.colour import ColourSegmenter

        return ColourSegmenter.load(path)
    return SegNet.load(path, device)
