"""Automatic label maps by colour deconvolution: background / stroma / nuclei.

Pixels are converted to optical density and unmixed into haematoxylin and eosin
(Ruifrok & Johnston's stain vectors, scikit-image's ``rgb2hed``). A pixel is **background**
when its total optical density is below ``background_od`` (glass, lumen, fat); among the
others, **nuclei** are those whose haematoxylin exceeds a threshold fitted by Otsu's method
on tissue pixels of the cohort's training tiles, and the rest is **stroma**. A median filter
removes single-pixel noise.

The thresholds are fitted once (``fit``) and saved; the same segmenter then labels real
tiles (the training maps) and generated tiles (layout fidelity), so both are judged by the
identical rule.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from histosynth.utils import UserError, atomic_path


def _od(tiles):
    return -np.log((np.asarray(tiles, np.float32) + 1.0) / 256.0)


def _hed(tiles):
    from skimage.color import rgb2hed

    t = np.asarray(tiles)
    flat = t.reshape(-1, t.shape[-2], 3) if t.ndim > 2 else t
    return rgb2hed(flat).reshape(t.shape).astype(np.float32)


@dataclass
class ColourSegmenter:
    background_od: float = 0.25
    nuclei_h: float | None = None
    median: int = 3
    n_fit_pixels: int = 0

    def fit(self, tiles: np.ndarray, max_pixels: int = 2_000_000, seed: int = 0) -> ColourSegmenter:
        """Fit the haematoxylin threshold on (N, H, W, 3) uint8 training tiles."""
        from skimage.filters import threshold_otsu

        px = np.asarray(tiles, np.uint8).reshape(-1, 3)
        if len(px) > max_pixels:
            px = px[np.random.default_rng(seed).choice(len(px), max_pixels, replace=False)]
        tissue = px[_od(px).sum(-1) >= self.background_od]
        if len(tissue) < 100:
            raise UserError(f"the colour segmenter found only {len(tissue)} tissue pixels in {len(px)} (optical density "
                            f"below masks.auto.background_od {self.background_od}): are these H&E tiles?")
        h = _hed(tissue[None])[0, :, 0]
        self.nuclei_h = float(threshold_otsu(h))
        self.n_fit_pixels = int(len(tissue))
        return self

    def segment(self, tiles: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, H, W) uint8 maps: 0 background, 1 stroma, 2 nuclei."""
        if self.nuclei_h is None:
            raise RuntimeError("fit() or load() the segmenter first")
        tiles = np.asarray(tiles, np.uint8)
        out = np.ones(tiles.shape[:-1], np.uint8)
        out[_hed(tiles)[..., 0] > self.nuclei_h] = 2
        out[_od(tiles).sum(-1) < self.background_od] = 0
        if self.median > 1:
            from scipy.ndimage import median_filter

            out = median_filter(out, size=(1, self.median, self.median) if out.ndim == 3 else self.median, mode="nearest")
        return out

    def save(self, path) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps({"method": "colour-deconvolution", **asdict(self)}, indent=1))

    @classmethod
    def load(cls, path) -> ColourSegmenter:
        d = json.loads(open(path).read())
        d.pop("method", None)
        return cls(**d)
