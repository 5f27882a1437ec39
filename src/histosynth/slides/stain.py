"""Stain normalisation with slide-level estimates: Macenko and Reinhard.

Both methods map a slide's stain appearance onto a reference's. The source statistics are
estimated **once per slide** from an evenly spread sample of its tissue tiles, then applied
to every tile with the same transform. Per-tile estimation (what torchstain's ``normalize``
does) gives every tile its own colour transform: tiles of one slide drift in colour
relative to each other, and tiles with little tissue give unstable stain vectors (or fail).

* **Macenko** (Macenko et al., ISBI 2009): stain vectors and the 99th-percentile
  concentrations are estimated with torchstain's ``MacenkoNormalizer.fit`` (numpy backend)
  on the slide sample and on the reference image; each tile is unmixed with the slide's stain
  matrix and remixed with the reference's, exactly the arithmetic of torchstain's
  ``normalize``. Without a reference image, torchstain's standard reference stain matrix is used.
* **Reinhard** (Reinhard et al., 2001): per-channel mean and standard deviation in CIELAB
  (OpenCV's float conversion) of the slide sample are matched to the reference image's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from histosynth.utils import UserError

IO = 240  # transmitted light intensity (torchstain's default)


def load_reference(path) -> np.ndarray:
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise UserError(f"tiles.stain_reference {p} does not exist: give an RGB image (PNG/JPEG/TIFF) of well-stained "
                        f"H&E tissue, ideally a few tiles from a slide whose colours you like")
    return np.asarray(Image.open(p).convert("RGB"))


class StainNormalizer:
    """``fit_slide(pixels)`` on a slide's sample, then ``__call__(tile)`` for every tile."""

    def __init__(self, method: str, reference: np.ndarray | None = None):
        self.method = method
        if method == "macenko":
            from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

            ref = NumpyMacenkoNormalizer()
            if reference is not None:
                ref.fit(_as_image(reference))
            self.he_ref, self.maxc_ref = np.asarray(ref.HERef, np.float64), np.asarray(ref.maxCRef, np.float64)
        elif method == "reinhard":
            if reference is None:
                raise UserError("tiles.stain_norm reinhard needs tiles.stain_reference (an RGB image to match)")
            self.ref_mean, self.ref_std = _lab_stats(reference)
        else:
            raise UserError(f"tiles.stain_norm: unknown method {method!r} (use none, macenko or reinhard)")
        self.fitted = False

    def fit_slide(self, pixels: np.ndarray, slide_id: str = "") -> None:
        """Estimate the slide's stains from RGB `pixels` (any shape ending in 3)."""
        px = np.asarray(pixels, np.uint8).reshape(-1, 1, 3)
        if self.method == "macenko":
            from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

            src = NumpyMacenkoNormalizer()
            try:
                src.fit(px)
            except (np.linalg.LinAlgError, ValueError, IndexError) as exc:
                raise UserError(f"slide {slide_id}: Macenko stain estimation failed ({exc}); too little stained tissue? "
                                f"Use tiles.stain_norm none or reinhard for this cohort") from None
            he = np.asarray(src.HERef, np.float64)
            self.unmix = np.linalg.pinv(he)  # least-squares concentrations, as np.linalg.lstsq in torchstain
            self.scale = (np.asarray(src.maxCRef, np.float64) / self.maxc_ref)[:, None]
            self.he_src = he
        else:
            self.src_mean, self.src_std = _lab_stats(px)
        self.fitted = True

    def __call__(self, tile: np.ndarray) -> np.ndarray:
        if not self.fitted:
            raise RuntimeError("fit_slide() first")
        if self.method == "macenko":
            h, w, _ = tile.shape
            od = -np.log((tile.reshape(-1, 3).astype(np.float64) + 1) / IO).T
            c = (self.unmix @ od) / self.scale
            out = IO * np.exp(-self.he_ref @ c)
            return np.clip(out, 0, 255).T.reshape(h, w, 3).astype(np.uint8)
        import cv2

        lab = cv2.cvtColor(tile.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
        lab = (lab - self.src_mean) / self.src_std * self.ref_std + self.ref_mean
        rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
        return np.clip(rgb * 255 + 0.5, 0, 255).astype(np.uint8)


def _as_image(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.uint8)
    return a if a.ndim == 3 else a.reshape(-1, 1, 3)


def _lab_stats(rgb: np.ndarray):
    import cv2

    lab = cv2.cvtColor(_as_image(rgb).astype(np.float32) / 255, cv2.COLOR_RGB2Lab).reshape(-1, 3)
    return lab.mean(0), np.maximum(lab.std(0), 1e-6)
