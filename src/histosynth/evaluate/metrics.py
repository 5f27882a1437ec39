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


def _significant(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric positive semi-definite matrix with rounding noise set to 0: below
    the numerical-rank tolerance (largest x size x machine epsilon) they are indistinguishable
    from 0, and their square roots would add up to a spurious trace where a covariance is
    singular (fewer samples than dimensions)."""
    tol = max(float(np.max(np.abs(w), initial=0)), 0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). S1 S2 is similar to the symmetric
    positive semi-definite S1^(1/2) S2 S1^(1/2), so the trace of its square root is the sum of
    the square roots of that matrix's eigenvalues: two symmetric eigendecompositions instead of
    a general matrix square root (the same number, several times faster at 2048 dimensions, and
    stable where the covariances are singular)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    diff = mu1 - mu2
    w, v = linalg.eigh(sigma1)
    root1 = (v * np.sqrt(_significant(w))) @ v.T
    m = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(_significant(linalg.eigvalsh((m + m.T) / 2))).sum()
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


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
