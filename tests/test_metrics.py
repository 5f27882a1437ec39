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


def _write_inception_weights(path, monkeypatch):
    """A weights file in torch-fidelity's format (random values: the real file cannot be
    downloaded here) so the production loading path runs on it."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with monkeypatch.context() as m:
        m.setattr(torch, "load", lambda *a, **k: {})
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="unused")
    torch.manual_seed(0)
    torch.save(net.state_dict(), path)


def test_inception_extractor_from_a_local_weights_file(tmp_path, monkeypatch):
    from toydata import toy_tiles

    from histosynth.evaluate.features import inception_extractor, inception_features
    from histosynth.utils import UserError

    with pytest.raises(UserError, match="fetch_inception"):
        inception_extractor(tmp_path / "missing.pth")
    w = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    _write_inception_weights(w, monkeypatch)
    ext = inception_extractor(w)
    tiles, labels = toy_tiles(12, px=32)
    f = inception_features(ext, tiles, batch=16)
    assert f.shape == (24, 2048) and np.isfinite(f).all() and f.std() > 0
    assert np.allclose(inception_features(ext, tiles[:6], batch=4), f[:6], rtol=1e-4, atol=1e-6 * f.std())
    f = f / f.std()  # random weights give tiny activations; FID is compared within this scale
    dark, light = f[labels == "dark"], f[labels == "light"]
    assert M.fid(dark[:6], dark[6:]) < M.fid(dark[:6], light[:6])
