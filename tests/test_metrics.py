import numpy as np
import pytest
from scipy import linalg

from histosynth.evaluate import metrics as M


def _fid_direct(a, b):
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * linalg.sqrtm(s1 @ s2).real))


def test_fid_matches_direct_computation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16))
    b = rng.normal(0.3, 1.2, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.3
    assert M.fid(a, b) == pytest.approx(_fid_direct(a, b), rel=1e-6)


def test_fid_reference_value_for_gaussians():
    # two Gaussians with diagonal covariances: FID = |mu1-mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2
    mu1, mu2 = np.zeros(4), np.array([1.0, 0, 0, 2])
    s1, s2 = np.diag([1.0, 2, 3, 4]), np.diag([4.0, 2, 1, 1])
    expected = 1 + 4 + (1 - 2) ** 2 + 0 + (np.sqrt(3) - 1) ** 2 + (2 - 1) ** 2
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_identical_sets_give_zero_and_planted_shift_moves_it():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 8))
    assert abs(M.fid(a, a)) < 1e-6
    b = rng.normal(size=(2000, 8))
    shifted = [M.fid(a, b + d) for d in (0.0, 0.5, 1.0)]
    assert shifted[0] < shifted[1] < shifted[2]
    k0, _ = M.kid(a, b)
    k1, _ = M.kid(a, b + 1.0)
    assert abs(k0) < 0.01 < k1


def test_kid_subset_never_exceeds_samples():
    rng = np.random.default_rng(2)
    m, s = M.kid(rng.normal(size=(50, 4)), rng.normal(size=(30, 4)), subsets=10, subset_size=1000)
    assert np.isfinite(m) and np.isfinite(s)


def test_precision_recall_separate_quality_from_coverage():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(600, 2))
    collapsed = rng.normal(size=(600, 2)) * 0.1  # inside the real manifold, covers little of it
    p, r = M.precision_recall(real, collapsed, k=3)
    assert p > 0.9 and r < 0.5
    far = rng.normal(size=(600, 2)) + 10
    p, r = M.precision_recall(real, far, k=3)
    assert p == 0 and r == 0
