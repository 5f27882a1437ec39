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


def test_every_conditional_kind_gets_counterfactuals(trained, tmp_path, monkeypatch):
    """An attributes run changes one attribute; an expression run moves towards another label's
    training profile and needs the embeddings; a layout (mask) network is refused by name."""
    import pandas as pd

    from histosynth.config import validate
    from histosynth.gan import checkpoint
    from histosynth.gan.conditioning import ConditioningSpec
    from histosynth.generate.project import run_projection

    _, _, wd = trained
    monkeypatch.chdir(wd)  # the tile index names its stores relative to the run folder
    o = validate({"generate": {"project": {"tiles": 2, "steps": 5, "counterfactual_steps": 3}}})["generate"]["project"]
    tiles, ref = pd.read_parquet("results/split/tiles.parquet"), "results/evaluate/reference_classifier.pt"
    # the class network's weights as an attributes run over the one column `label`
    ck = checkpoint.load("results/gan/stylegan2-class/network.pt")
    ck["conditioning"] = ConditioningSpec("attributes", ["label"], {"label": ["normal", "tumor"]}).to_dict()
    ck["kind"] = "attributes"
    checkpoint.save(tmp_path / "attrs.pt", ck)
    s, t, _ = run_projection(tmp_path / "attrs.pt", tiles, ref, dict(o, attribute="label"))
    assert s["column"] == "label" and set(s["counterfactual"]) == {"all", "coarse", "middle"}
    assert sorted(zip(t["condition"], t["counterfactual"])) == [("normal", "tumor"), ("tumor", "normal")]
    with pytest.raises(UserError, match="attribute 'site' is not a condition column"):
        run_projection(tmp_path / "attrs.pt", tiles, ref, dict(o, attribute="site"))

    expr = "results/gan/stylegan2-expression/network.pt"
    with pytest.raises(UserError, match="needs the β-VAE embeddings"):
        run_projection(expr, tiles, ref, o)
    s, t, arrays = run_projection(expr, tiles, ref, o, embeddings="results/expression/embeddings.parquet")
    assert s["n_tiles"] == 2 and arrays["ws"].shape[0] == 2
    for own, other in zip(t["condition"], t["counterfactual"]):
        assert own.split(" (")[1] != other.split(" (")[1]  # towards a profile of the other label
    with pytest.raises(UserError, match="generation from conditions|StyleGAN2"):
        run_projection("results/gan/spade-layout/network.pt", tiles, ref, o)
