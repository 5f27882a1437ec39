"""Stain normalisation with slide-level estimates: Macenko, Vahadane and Reinhard.

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
* **Vahadane** (Vahadane et al., IEEE TMI 2016): the stain matrix is learnt by sparse
  non-negative matrix factorisation of the tissue pixels' optical densities (scikit-learn's
  ``DictionaryLearning`` with non-negative dictionary and codes, L1 weight ``VAHADANE_LAMBDA``,
  unit-norm stain vectors, haematoxylin first), on the slide sample and on the reference image
  (without one: torchstain's standard reference stain matrix and maximal concentrations).
  Each pixel's concentrations are the same sparse non-negative code, solved exactly (two
  stains: a closed form per pixel); they are scaled by the reference's 99th-percentile
  concentrations over the slide's and remixed with the reference stains.
* **Reinhard** (Reinhard et al., 2001): per-channel mean and standard deviation in CIELAB
  (OpenCV's float conversion) of the slide sample are matched to the reference image's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from histosynth.utils import UserError

IO = 240  # transmitted light intensity (torchstain's default)
BETA = 0.15  # optical density below which a pixel is background (Macenko's and torchstain's beta)
VAHADANE_LAMBDA = 0.1  # L1 weight of the sparse code (Vahadane et al.)
VAHADANE_PIXELS = 2000  # tissue pixels the dictionary is learnt on (the stains settle well before; 8 s per slide on 2 cores)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(n, 3) optical densities of RGB pixels (any shape ending in 3)."""
    return -np.log((np.asarray(rgb, np.float64).reshape(-1, 3) + 1) / IO)


def sparse_stain_code(od: np.ndarray, stains: np.ndarray, lam: float = VAHADANE_LAMBDA) -> np.ndarray:
    """(n, 2) concentrations c >= 0 minimising 1/2 ||od - c @ stains||^2 + lam * sum(c) for
    each pixel, `stains` (2, 3): the exact solution, by comparing the four active sets."""
    g = stains @ stains.T  # (2, 2)
    b = od @ stains.T - lam  # (n, 2)
    cands = [np.zeros_like(b)]
    for k in (0, 1):
        c = np.zeros_like(b)
        c[:, k] = np.maximum(b[:, k], 0) / g[k, k]
        cands.append(c)
    both = np.linalg.solve(g, b.T).T
    cands.append(np.where((both > 0).all(1, keepdims=True), both, 0.0))
    def cost(c):
        r = od - c @ stains
        return 0.5 * (r * r).sum(1) + lam * c.sum(1)
    costs = np.stack([cost(c) for c in cands], 1)
    return np.stack(cands, 1)[np.arange(len(od)), costs.argmin(1)]


def vahadane_stains(rgb: np.ndarray, lam: float = VAHADANE_LAMBDA, seed: int = 0):
    """((2, 3) unit stain vectors, haematoxylin first; (2,) 99th-percentile concentrations) of
    the tissue pixels of `rgb`, by sparse non-negative factorisation of their optical densities."""
    from sklearn.decomposition import DictionaryLearning

    od = optical_density(rgb)
    tissue = od[(od > BETA).all(1)]
    if len(tissue) < 50:
        raise ValueError(f"only {len(tissue)} stained pixels (optical density above {BETA} in every channel)")
    rng = np.random.default_rng(seed)
    fit_on = tissue[rng.choice(len(tissue), min(len(tissue), VAHADANE_PIXELS), replace=False)]
    dl = DictionaryLearning(n_components=2, alpha=lam, fit_algorithm="cd", transform_algorithm="lasso_cd",
                            positive_code=True, positive_dict=True, max_iter=200, random_state=seed)
    dl.fit(fit_on)
    w = dl.components_ / np.maximum(np.linalg.norm(dl.components_, axis=1, keepdims=True), 1e-12)
    if w[0, 0] < w[1, 0]:  # haematoxylin absorbs more red than eosin does
        w = w[::-1]
    c = sparse_stain_code(tissue, w, lam)
    return w, np.percentile(c, 99, axis=0)


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
        elif method == "vahadane":
            if reference is not None:
                try:
                    self.stains_ref, self.maxc_ref = vahadane_stains(_as_image(reference))
                except ValueError as exc:
                    raise UserError(f"tiles.stain_reference: Vahadane cannot learn stains from it ({exc}); give an "
                                    f"image of well-stained H&E tissue") from None
            else:
                from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

                ref = NumpyMacenkoNormalizer()
                self.stains_ref = np.asarray(ref.HERef, np.float64).T
                self.maxc_ref = np.asarray(ref.maxCRef, np.float64)
        elif method == "reinhard":
            if reference is None:
                raise UserError("tiles.stain_norm reinhard needs tiles.stain_reference (an RGB image to match)")
            self.ref_mean, self.ref_std = _lab_stats(reference)
        else:
            raise UserError(f"tiles.stain_norm: unknown method {method!r} (use none, macenko, vahadane or reinhard)")
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
        elif self.method == "vahadane":
            try:
                self.stains_src, maxc = vahadane_stains(px)
            except ValueError as exc:
                raise UserError(f"slide {slide_id}: Vahadane stain estimation failed ({exc}); too little stained "
                                f"tissue? Use tiles.stain_norm none or reinhard for this cohort") from None
            self.scale = self.maxc_ref / np.maximum(maxc, 1e-6)
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
        if self.method == "vahadane":
            h, w, _ = tile.shape
            c = sparse_stain_code(optical_density(tile), self.stains_src) * self.scale
            out = IO * np.exp(-c @ self.stains_ref)
            return np.clip(out, 0, 255).reshape(h, w, 3).astype(np.uint8)
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
