"""Pathology foundation encoders as extractors (histosynth.evaluate.foundation): randomly
initialised weights saved in each published layout (Phikon: Hugging Face transformers'
ViTModel.save_pretrained; UNI: timm's state dict in pytorch_model.bin) load through the real
loading code with every key matched, and give the features their authors' code gives."""
import numpy as np
import pytest
import torch

from histosynth.evaluate import foundation as F
from histosynth.utils import UserError


def _preprocess(tiles):
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    return (x - torch.tensor(F.IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(F.IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def tiles():
    from toydata import toy_tiles

    return toy_tiles(4, px=64, seed=3)[0]  # 8 tiles, two classes


@pytest.fixture(scope="module")
def phikon_dir(tmp_path_factory):
    """A Phikon-shaped ViTModel (ViT-B/16, layer-norm eps 1e-12), random weights, saved as owkin
    published it (save_pretrained: config.json + model.safetensors), and the model itself."""
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                    image_size=224, patch_size=16, layer_norm_eps=1e-12, qkv_bias=True)
    model = ViTModel(cfg, add_pooling_layer=False).eval()
    d = tmp_path_factory.mktemp("phikon")
    model.save_pretrained(d)
    return d, model


def test_phikon_from_its_published_layout_equals_transformers(phikon_dir, tiles):
    from histosynth.evaluate.metrics import fid

    d, model = phikon_dir
    ex = F.foundation_extractor("phikon", d / "model.safetensors")
    f = ex(tiles)
    with torch.no_grad():
        ref = model(pixel_values=_preprocess(tiles)).last_hidden_state[:, 0].double().numpy()
    assert f.shape == (8, 768) and f.dtype == np.float64
    np.testing.assert_allclose(f, ref, atol=2e-5, rtol=1e-4)
    np.testing.assert_array_equal(f, ex(tiles))  # deterministic
    assert abs(fid(f, f)) < 1e-5 * np.trace(np.cov(f, rowvar=False))  # 0 up to sqrtm rounding (8 samples, 768-d)
    # the same weights as a PyTorch file (pytorch_model.bin), with the pooler a ViTModel may carry
    from safetensors.torch import load_file

    sd = {f"vit.{k}": v for k, v in load_file(str(d / "model.safetensors")).items()}
    sd["vit.pooler.dense.weight"] = torch.zeros(768, 768)
    torch.save(sd, d / "pytorch_model.bin")
    np.testing.assert_array_equal(F.foundation_extractor("phikon", d / "pytorch_model.bin")(tiles), f)


def test_wrong_or_missing_weights_name_the_file_and_where_to_get_it(phikon_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    d, _ = phikon_dir
    with pytest.raises(UserError, match=r"owkin/phikon.*does not exist"):
        F.load("phikon", tmp_path / "absent.safetensors")
    sd = load_file(str(d / "model.safetensors"))
    sd["encoder.layer.3.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(UserError, match=r"extra.safetensors is not phikon's published weights.*extra.weight"):
        F.load("phikon", tmp_path / "extra.safetensors")
    with pytest.raises(UserError, match=r"not uni's published weights"):
        F.load("uni", d / "model.safetensors")
    (tmp_path / "code.bin").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would run code
    with pytest.raises(Exception) as e:
        F.load("uni", tmp_path / "code.bin")
    assert "system" not in str(type(e.value))


def test_load_builds_no_random_weights_and_keeps_float32(phikon_dir, monkeypatch):
    """F.load builds the architecture on the meta device and takes the file's tensors as its
    parameters (in float32, as a built model has them, even from a half-precision file); a buffer
    that no weights file holds (non-persistent) still gets its built value."""
    from safetensors.torch import load_file, save_file

    d, _ = phikon_dir
    built = []
    real_build = F.build

    def build(name):
        m = real_build(name)
        m.register_buffer("extra", torch.full((2,), 3.0), persistent=False)
        built.append(m.extra.device.type)
        return m

    m = F.load("phikon", d / "model.safetensors")
    assert all(p.dtype == torch.float32 and not p.is_meta for p in m.parameters())
    half = d.parent / "phikon-half.safetensors"
    save_file({k: v.half() for k, v in load_file(str(d / "model.safetensors")).items()}, str(half))
    mh = F.load("phikon", half)
    assert all(p.dtype == torch.float32 for p in mh.parameters())
    torch.testing.assert_close(mh.state_dict()["cls_token"], m.state_dict()["cls_token"], atol=1e-3, rtol=1e-3)
    monkeypatch.setattr(F, "build", build)
    mb = F.load("phikon", d / "model.safetensors")
    assert built == ["meta", "cpu"] and torch.equal(mb.extra, torch.full((2,), 3.0))
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), mb.state_dict().values()))


def test_uni_from_its_published_layout(tmp_path, tiles):
    """UNI's file is timm's ViT-L/16 state dict (its model card creates the model with timm and
    loads pytorch_model.bin strictly); 1.2 GB of random weights."""
    torch.manual_seed(1)
    model = F.build("uni").eval()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    ex = F.foundation_extractor("uni", tmp_path / "pytorch_model.bin")
    two = tiles[[0, 5]]  # one of each class: a ViT-L on the CPU is slow
    f = ex(two)
    with torch.no_grad():
        ref = model(_preprocess(two)).double().numpy()
    assert f.shape == (2, 1024)
    np.testing.assert_allclose(f, ref, atol=2e-5, rtol=1e-4)
    np.testing.assert_array_equal(f, ex(two))
    from histosynth.evaluate.metrics import fid

    assert abs(fid(f, f)) < 1e-6 * np.trace(np.cov(f, rowvar=False))


def test_metrics_and_the_copy_audit_run_in_a_foundation_extractor(phikon_dir, tmp_path):
    """evaluate.extractors: [phikon]: the features come through the same extract() as every
    extractor, cached by weights hash, and FID, KID, precision/recall and the audit run on them."""
    from toydata import toy_index

    from histosynth.evaluate.features import extract
    from histosynth.evaluate.run import evaluate_features

    d, _ = phikon_dir
    idx, _, _ = toy_index(tmp_path, n_per_class=6, px=32)
    opts = {"phikon_weights": str(d / "model.safetensors"), "seed": 0, "min_samples": 2, "allow_small": True,
            "max_samples": None, "kid_subsets": 5, "kid_subset_size": 3, "pr_k": 3, "pr_max_samples": 100}
    (a,) = extract([idx], "phikon", opts, None, cache_dir=tmp_path / "cache", write_cache=True)
    assert a.shape == (12, 768) and list((tmp_path / "cache").iterdir())[0].name.startswith("phikon-")
    m = evaluate_features(idx, a, idx, a, opts, "phikon")
    assert m["extractor"] == "phikon" and np.isfinite([m["fid"], m["kid_mean"], m["precision"]]).all()
    from histosynth.evaluate.copies import audit_features

    train, held = a[np.r_[0:3, 6:9]], a[np.r_[3:6, 9:12]]
    res, flags = audit_features(train, [train[:4]], [held], opts={"cells": 1, "min_cell": 2})
    assert flags["below_p1"].all() and res["nearest_neighbour"]["p1"]["share"] == 1.0
