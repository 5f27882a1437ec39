"""Projection of real tiles into a conditional StyleGAN2 (generate/project.py)."""
import numpy as np
import pytest
import torch

from histosynth.generate.project import (
    condition_w_stats,
    counterfactual,
    project,
    quality,
    synthesise,
    to_uint8,
)
from histosynth.utils import UserError


@pytest.fixture(scope="module")
def trained(e2e_workdir):
    from histosynth.generate.sample import stylegan2_network

    G, spec, _ = stylegan2_network(e2e_workdir / "results/gan/stylegan2-class/network.pt")
    return G, spec, e2e_workdir


def test_a_generated_tile_is_projected_back(trained):
    """A tile made from a known w with the constant noise is found again: far closer than the
    class-mean image it starts from, and the network's own noise is left untouched."""
    G, _, _ = trained
    c = torch.eye(2)[[1]]
    with torch.no_grad():
        w_true = G.mapping(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(5)), c)
        target = G.synthesis(w_true, noise_mode="const")[0].clamp(-1, 1)
    before = [b.clone() for n, b in G.named_buffers() if n.endswith("noise_const")]
    mean, _ = condition_w_stats(G, c)
    start = quality(to_uint8(target)[0], to_uint8(synthesise(G, mean.reshape(1, 1, -1).expand(1, G.num_ws, -1)))[0])
    ws, recon, hist, maps = project(G, target, c, steps=300, noise="const")
    q = quality(to_uint8(target)[0], to_uint8(recon)[0])
    assert q["psnr"] > 25 and q["psnr"] > start["psnr"] + 8 and q["ssim"] > 0.8 and hist[-1] < hist[0] / 10
    assert maps == [] and ws.shape == (G.num_ws, G.w_dim) and torch.equal(ws[0], ws[-1])  # one w in every layer
    after = [b for n, b in G.named_buffers() if n.endswith("noise_const")]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_w_plus_and_optimised_noise(trained):
    G, _, _ = trained
    c = torch.eye(2)[[0]]
    with torch.no_grad():
        target = G(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(2)), c, noise_mode="random")[0]
    ws, recon, hist, maps = project(G, target.clamp(-1, 1), c, steps=60, w_plus=True, noise="optimise")
    assert not torch.equal(ws[0], ws[-1]) and len(maps) == len([n for n, _ in G.named_buffers() if "noise_const" in n])
    for m in maps:  # renormalised after every step
        assert abs(float(m.mean())) < 1e-4 and abs(float(m.square().mean()) - 1) < 1e-3
    again = synthesise(G, ws[None], maps)[0]
    assert torch.allclose(again, recon, atol=1e-5)  # the kept noise maps reproduce the reconstruction


def test_counterfactual_probabilities_per_layer_group():
    from histosynth.gan.networks import Generator

    torch.manual_seed(0)
    G = Generator(16, 2, 32, 16, 256, 32, 2).eval()

    class Probe(torch.nn.Module):  # "class 1" = brighter: a classifier with a known answer
        def forward(self, x):
            m = x.mean((1, 2, 3))
            return torch.stack([-m, m], 1) * 50

    ws = G.mapping(torch.randn(1, 16), torch.eye(2)[[0]])[0]
    out = counterfactual(G, ws, torch.ones(1, G.w_dim) * 3, Probe(), 1, 5)
    assert set(out) == {"all", "coarse", "middle"}
    for v in out.values():
        assert len(v["p"]) == 5 and v["images"].shape == (5, 16, 16, 3)
        assert v["p"][0] == pytest.approx(out["all"]["p"][0])  # t = 0 is the projection itself in every group


def test_quality_is_scikit_image_psnr_and_ssim():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    q = quality(a, b)
    assert q["psnr"] == pytest.approx(peak_signal_noise_ratio(a, b, data_range=255))
    assert q["ssim"] == pytest.approx(structural_similarity(a, b, channel_axis=-1, data_range=255, gaussian_weights=True,
                                                            sigma=1.5, use_sample_covariance=False))
    assert quality(a, a) == {"psnr": float("inf"), "ssim": 1.0}


def test_expression_runs_are_refused_by_name(trained):
    from histosynth.config import validate
    from histosynth.generate.project import run_projection

    _, _, wd = trained
    o = validate({"generate": {"project": {"tiles": 2}}})["generate"]["project"]
    import pandas as pd

    tiles = pd.read_parquet(wd / "results/split/tiles.parquet")
    with pytest.raises(UserError, match="expression-conditioned: projection with counterfactuals works on class"):
        run_projection(wd / "results/gan/stylegan2-expression/network.pt", tiles,
                       wd / "results/evaluate/reference_classifier.pt", o)
