"""Network files are data, never code: written as tensors + plain data, read with
weights_only=True, and a file carrying anything else is refused without running it."""
import numpy as np
import pytest
import torch

from histosynth import torchio
from histosynth.utils import UserError


class _Payload:
    """Unpickling this runs code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_numpy_and_paths_become_plain_and_round_trip(tmp_path):
    from pathlib import Path

    obj = {"w": torch.randn(3), "a": np.arange(4, dtype=np.int32), "s": np.float64(0.5), "p": Path("x/y"),
           "nested": [(1, "two", None, True)]}
    torchio.save(tmp_path / "f.pt", obj)
    back = torch.load(tmp_path / "f.pt", weights_only=True)
    assert torch.equal(back["w"], obj["w"]) and back["a"].tolist() == [0, 1, 2, 3]
    assert back["s"] == 0.5 and type(back["s"]) is float and back["p"] == "x/y"
    assert back["nested"] == [(1, "two", None, True)]
    with pytest.raises(TypeError, match=r"checkpoint\.bad: object cannot be saved"):
        torchio.save(tmp_path / "g.pt", {"bad": object()})
    assert not (tmp_path / "g.pt").exists()


def test_a_file_carrying_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"G": torch.zeros(1), "x": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not loaded .reading it could run code"):
        torchio.load(tmp_path / "evil.pt", "network checkpoint", "train it again")
    assert not marker.exists()
    # a file written before safe loading (numpy objects pickled) is refused with the remedy
    torch.save({"rng": np.random.get_state()}, tmp_path / "old.pt", _use_new_zipfile_serialization=True)
    with pytest.raises(UserError, match="written by histosynth before safe loading.*re-run train_vae"):
        torchio.load(tmp_path / "old.pt", "beta-VAE", "re-run train_vae")
    with pytest.raises(UserError, match="does not exist"):
        torchio.load(tmp_path / "missing.pt")


def test_every_network_file_loads_with_weights_only(tmp_path):
    """GAN checkpoints (RNG states included), the reference classifier, the beta-VAE and the
    segmentation network all read back with torch.load(weights_only=True)."""
    from histosynth.classify.model import build
    from histosynth.classify.study import load_reference, save_reference
    from histosynth.evaluate.segnet import SegNet
    from histosynth.gan import checkpoint as ckpt
    from histosynth.torch_utils.snapshot import rng_state, set_rng_state

    np.random.seed(3)
    ckpt.save(tmp_path / "gan.pt", ckpt.training_state("class", rng=[rng_state()], G_ema={"w": torch.ones(2)},
                                                       options={"kimg": 1.0}))
    state = torch.load(tmp_path / "gan.pt", weights_only=True)
    expected = np.random.rand(3)
    np.random.seed(99)
    set_rng_state(ckpt.load(tmp_path / "gan.pt")["rng"][0])
    assert np.array_equal(np.random.rand(3), expected) and state["options"] == {"kimg": 1.0}

    model = build("shufflenet_v2_x0_5", 2)
    save_reference(model, ["a", "b"], {"arch": "shufflenet_v2_x0_5", "target": "grade"}, {"auc": np.float64(0.9)},
                   tmp_path / "ref.pt")
    torch.load(tmp_path / "ref.pt", weights_only=True)
    _, classes, ck = load_reference(tmp_path / "ref.pt")
    assert classes == ["a", "b"] and ck["val_metrics"]["auc"] == 0.9 and ck["target"] == "grade"

    SegNet(3, 16, ngf=8).save(tmp_path / "seg.pt")
    torch.load(tmp_path / "seg.pt", weights_only=True)
    assert SegNet.load(tmp_path / "seg.pt").n_classes == 3


def test_first_format_networks_are_converted_and_others_refused(tmp_path):
    """A mask network of the first format (before runs were unified) loads as the current one; a
    StyleGAN2 network of the earlier bilinear architecture (formats 1 and 2), a file that is not a
    network, or a newer format, is refused with what to do."""
    from histosynth.gan import checkpoint as ckpt
    from histosynth.utils import UserError

    old = {"G": {"w": torch.ones(2)}, "G_ema": {"w": torch.ones(2)}, "options": {"kimg": 1.0},
           "conditioning": {"kind": "class"}, "augment": {"p": 0.2}, "pl_mean": torch.tensor(1.5),
           "training_set": {"n_tiles": 3, "patients": ["P1"]}}
    torch.save(dict(old, kind="mask"), tmp_path / "v1-mask.pt")
    ck = ckpt.load(tmp_path / "v1-mask.pt")
    assert (ck["format"], ck["version"], ck["kind"]) == ("histosynth-gan", 3, "mask")
    assert ck["loss"]["augment"] == {"p": 0.2} and float(ck["loss"]["pl_mean"]) == 1.5 and "augment" not in ck
    assert ckpt.read_metadata(tmp_path / "v1-mask.pt")["training_set"]["patients"] == ["P1"]
    torch.save(old, tmp_path / "v1.pt")
    torch.save(ckpt.training_state("class", G_ema={}, options={}) | {"version": 2}, tmp_path / "v2.pt")
    for name in ("v1.pt", "v2.pt"):
        with pytest.raises(UserError, match="earlier architecture.*train it again"):
            ckpt.load(tmp_path / name)

    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "classifier.pt")
    with pytest.raises(UserError, match="not a histosynth GAN network"):
        ckpt.load(tmp_path / "classifier.pt")
    torch.save(ckpt.training_state("class", G_ema={}, options={}) | {"version": 99}, tmp_path / "future.pt")
    with pytest.raises(UserError, match="newer than this histosynth reads"):
        ckpt.load(tmp_path / "future.pt")
