"""Generative metrics as pure functions of feature arrays (features -> statistics -> metric).

* FID (Heusel et al.): Fréchet distance between Gaussians fitted to the two feature sets.
* KID (Bińkowski et al.): unbiased MMD² with the cubic polynomial kernel, averaged over
  random subsets; the subset size never exceeds half of the smaller set.
* Precision / recall (Kynkäänniemi et al. 2019): k-NN manifold membership.
"""
from __future__ import annotations

import numpy as np
from scipy import linalg


def statistics(feats: np.ndarray):
    feats = np.asarray(feats, np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6) -> float:
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
    covmean = covmean.real
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(real_feats, fake_feats) -> float:
    return frechet_distance(*statistics(real_feats), *statistics(fake_feats))


def kid(real_feats, fake_feats, subsets=100, subset_size=1000, seed=0):
    """(mean, std) of the unbiased polynomial-kernel MMD² over random subsets."""
    x = np.asarray(real_feats, np.float64)
    y = np.asarray(fake_feats, np.float64)
    # Subsets of at most half the smaller set, so that they differ and the std means something.
    m = min(subset_size, min(len(x), len(y)) // 2)
    if m < 2:
        raise ValueError("KID needs at least 2 samples on each side")
    d = x.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        a = x[rng.choice(len(x), m, replace=False)]
        b = y[rng.choice(len(y), m, replace=False)]
        kxx = (a @ a.T / d + 1) ** 3
        kyy = (b @ b.T / d + 1) ** 3
        kxy = (a @ b.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))


def _kth_radii(feats, k):
    from scipy.spatial.distance import cdist

    dist = cdist(feats, feats)
    return np.sort(dist, axis=1)[:, k]  # column 0 is the point itself


def precision_recall(real_feats, fake_feats, k=3):
    """Precision: share of fakes inside the real manifold; recall: share of reals inside the fake manifold."""
    from scipy.spatial.distance import cdist

    real = np.asarray(real_feats, np.float64)
    fake = np.asarray(fake_feats, np.float64)
    r_real, r_fake = _kth_radii(real, k), _kth_radii(fake, k)
    d = cdist(fake, real)
    precision = float((d <= r_real[None, :]).any(1).mean())
    recall = float((d.T <= r_fake[None, :]).any(1).mean())
    return precision, recall
