"""Networks from stylegan2-ada-pytorch (and slideflow) in histosynth: the architecture against
NVIDIA's outputs, the pickle import without running the file, generate-images parity, and the
FIR / modulated-convolution maths against direct definitions.

tests/data/stylegan2_ada_reference.npz was made by NVIDIA's own code from a tiny random network
(tests/data/make_stylegan2_reference.py): its weights, the images its generate.py maths gives for
seeds, classes, psi and noise modes, and its discriminator's scores. The tests write pickles in
stylegan2-ada's snapshot format themselves (persistent objects, as its torch_utils.persistence
writes them), so no NVIDIA code is needed."""
import io
import json
import pickle
import subprocess
import sys
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from histosynth.gan import networks as N
from histosynth.gan.imports import import_stylegan2, read_pickle
from histosynth.gan.resample import conv2d_resample, downsample2d, setup_filter, upfirdn2d, upsample2d
from histosynth.utils import UserError

REF = Path(__file__).parent / "data" / "stylegan2_ada_reference.npz"


def reference():
    d = np.load(REF)
    meta = json.loads(str(d["meta"]))
    return d, meta["cfg"], meta["cases"]


def reference_networks():
    """Our G and D holding the reference weights (loaded strictly: same names and shapes)."""
    d, k, _ = reference()
    G = N.Generator(k["z_dim"], k["c_dim"], k["w_dim"], k["img_resolution"], k["channel_base"], k["channel_max"],
                    k["mapping_layers"], k["conv_clamp"])
    D = N.Discriminator(k["c_dim"], k["img_resolution"], k["channel_base"], k["channel_max"],
                        mbstd_group=k["mbstd_group"], conv_clamp=k["conv_clamp"])
    for net, prefix in ((G, "G_ema/"), (D, "D/")):
        net.load_state_dict({n[len(prefix):]: torch.from_numpy(d[n]) for n in d.files if n.startswith(prefix)})
    return G.eval(), D.eval()


# --- writing stylegan2-ada snapshots (what its persistence module pickles) -----------------------

persistence = types.ModuleType("torch_utils.persistence")


def _reconstruct_persistent_obj(meta):  # never called: the importer must not resolve to it
    raise AssertionError("the importer ran the pickle's own reconstruction function")


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
EXTRA = {"SynthesisBlock": {"architecture": "skip"}, "DiscriminatorBlock": {"architecture": "resnet"},
         "SynthesisLayer": {"use_noise": True}}


class Snapshot:
    """A module pickled as stylegan2-ada's persistent classes pickle themselves: a call of
    torch_utils.persistence._reconstruct_persistent_obj(meta) with the class name, module source
    and the module's __dict__ (numpy scalars as NVIDIA's hyper-parameters are)."""

    def __init__(self, module):
        self.m, self.cls = module, type(module).__name__

    def __reduce__(self):
        m = self.m
        plain = {k: (np.float64(v) if isinstance(v, float) else v) for k, v in vars(m).items()
                 if not k.startswith("_") and isinstance(v, (int, float, str, bool, type(None)))}
        state = dict(plain, **EXTRA.get(self.cls, {}))
        state["_parameters"] = OrderedDict((k, torch.nn.Parameter(v.detach().clone(), requires_grad=False))
                                           for k, v in m._parameters.items())
        state["_buffers"] = OrderedDict((k, v.detach().clone()) for k, v in m._buffers.items())
        state["_non_persistent_buffers_set"] = set()
        state["_modules"] = OrderedDict((k, Snapshot(c)) for k, c in m._modules.items())
        state["training"] = False
        meta = dict(type="class", version=4, module_src="# training/networks.py source text", class_name=self.cls,
                    state=state)
        return _reconstruct_persistent_obj, (meta,)


def dump(obj, path):
    """Pickle `obj` with our stand-in torch_utils.persistence importable (only while writing)."""
    package = types.ModuleType("torch_utils")
    package.persistence = persistence
    sys.modules.update({"torch_utils": package, "torch_utils.persistence": persistence})
    try:
        Path(path).write_bytes(pickle.dumps(obj, protocol=4))
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def write_snapshot(path, G, D=None, **extra):
    dump(dict(training_set_kwargs=dict(class_name="training.dataset.ImageFolderDataset", path="tiles.zip",
                                       use_labels=True, resolution=G.img_resolution),
              G=Snapshot(G), D=Snapshot(D) if D is not None else None, G_ema=Snapshot(G), **extra), path)


# --- the architecture ----------------------------------------------------------------------------

def test_our_networks_reproduce_nvidias_images_and_scores():
    """With NVIDIA's weights, our generator gives the images its generate.py gave (mixed-precision
    layers there: mean |difference| at most 1/255 per pixel, none over 4/255) for every seed,
    class, psi and noise mode, and our discriminator its scores."""
    d, k, cases = reference()
    G, D = reference_networks()
    from histosynth.generate.sample import z_from_seeds
    from histosynth.torch_utils.images import to_uint8

    for case, want in zip(cases, d["images"]):
        c = torch.eye(k["c_dim"])[[case["class_idx"]]]
        with torch.no_grad():
            img = to_uint8(G(z_from_seeds([case["seed"]], k["z_dim"]), c, psi=case["psi"],
                             noise_mode=case["noise_mode"]))[0]
        diff = np.abs(img.astype(int) - want.astype(int))
        assert diff.mean() <= 1.0 and diff.max() <= 4, (case, diff.mean(), diff.max())
    with torch.no_grad():
        score = D(torch.from_numpy(d["d_input"]), torch.from_numpy(d["d_label"])).numpy()
    assert np.allclose(score, d["d_score"], rtol=1e-2, atol=1e-2), (score.ravel(), d["d_score"].ravel())


def test_fir_resampling_equals_direct_convolution_with_the_filter():
    """Up: zeros between samples, then the 4x4 [1,3,3,1] filter x4 (padding 2 before, 1 after);
    down: the filter, then every second sample (padding 1). Against explicit loops."""
    f = setup_filter()
    assert torch.allclose(f, torch.outer(torch.tensor([1., 3, 3, 1]), torch.tensor([1., 3, 3, 1])) / 64)
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    f64 = f.double()
    z = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    z[:, :, ::2, ::2] = x
    zp = F.pad(z, [2, 1, 2, 1])
    want = torch.zeros(2, 3, 10, 10, dtype=torch.float64)
    for i in range(10):
        for j in range(10):  # true convolution: the flipped filter (symmetric anyway)
            want[:, :, i, j] = (zp[:, :, i:i + 4, j:j + 4] * f64.flip([0, 1])).sum([2, 3]) * 4
    assert torch.allclose(upsample2d(x, f64), want)
    y = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    yp = F.pad(y, [1, 1, 1, 1])
    want = torch.stack([torch.stack([(yp[:, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4] * f64).sum([2, 3])
                                     for j in range(4)], -1) for i in range(4)], -2)
    assert torch.allclose(downsample2d(y, f64), want)
    # the general form: upfirdn2d of an impulse is the filter itself
    imp = torch.zeros(1, 1, 7, 7, dtype=torch.float64)
    imp[0, 0, 3, 3] = 1
    assert torch.allclose(upfirdn2d(imp, f64, padding=(2, 1, 2, 1))[0, 0, 2:6, 2:6], f64.flip([0, 1]))


def test_resampling_convolutions_equal_their_two_step_definitions():
    """conv2d_resample fuses conv + resampling; it equals doing them one after the other."""
    f = setup_filter().double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    # up, as convolution (flip_weight False, the generator's up layers): zeros between samples,
    # padded once by the conv's and the filter's padding (3 before, 2 after), filtered x4, then
    # the kernel; the fused form computes it with a transposed strided convolution
    up = conv2d_resample(x, w, f, up=2, padding=1, flip_weight=False)
    assert torch.allclose(up, F.conv2d(upfirdn2d(x, f, up=2, padding=(3, 2, 3, 2), gain=4), w.flip([2, 3])))
    assert torch.allclose(up[..., 2:-2, 2:-2], F.conv2d(F.pad(upsample2d(x, f), [1, 1, 1, 1]), w.flip([2, 3]))[..., 2:-2, 2:-2])
    # down (the discriminator's conv1): FIR-filter with padding 2, then a stride-2 correlation
    down = conv2d_resample(x, w, f, down=2, padding=1)
    assert torch.allclose(down, F.conv2d(upfirdn2d(x, f, padding=(2, 2, 2, 2)), w, stride=2))
    # 1x1 skip: FIR-downsample, then the 1x1 conv
    w1 = torch.randn(6, 4, 1, 1, dtype=torch.float64)
    assert torch.allclose(conv2d_resample(x, w1, f, down=2), F.conv2d(downsample2d(x, f), w1))


def test_modulated_conv_equals_the_grouped_convolution_form():
    """Activations scaled by the styles around one shared convolution, then demodulated, equal
    the per-sample weights w'_oik = s_i w_oik / ||s w_o.||, applied as a grouped convolution."""
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    s = torch.rand(3, 4, dtype=torch.float64) + 0.5
    noise = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    ours = N.modulated_conv2d(x, w, s, noise=noise, padding=1)
    wk = w[None] * s[:, None, :, None, None]
    wk = wk * (wk.square().sum([2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    grouped = F.conv2d(x.reshape(1, 12, 8, 8), wk.reshape(15, 4, 3, 3), padding=1, groups=3).reshape(3, 5, 8, 8)
    assert torch.allclose(ours, grouped + noise)
    # upsampling modulated conv: same identity through the FIR up path
    f = setup_filter().double()
    up = N.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=f, flip_weight=False)
    per_sample = torch.stack([conv2d_resample(x[i:i + 1], wk[i], f, up=2, padding=1, flip_weight=False)[0]
                              for i in range(3)])
    assert torch.allclose(up, per_sample)


def test_style_mixing_takes_later_layers_from_a_second_latent():
    torch.manual_seed(0)
    G = N.Generator(8, 0, 16, 16, 256, 16, 2)
    ws = G.mapping(torch.randn(64, 8), None)
    mixed = G.mix_styles(ws, None, prob=1.0)
    same = (mixed == ws).all(dim=2)  # (batch, num_ws): which inputs kept the first latent
    cut = int(same[0].sum())
    assert 1 <= cut < G.num_ws and same[:, :cut].all() and not same[:, cut:].any()
    assert torch.equal(G.mix_styles(ws, None, prob=0.0), ws)


# --- importing pickles ---------------------------------------------------------------------------

def test_import_reads_weights_exactly_and_generate_images_matches_nvidia(tmp_path):
    """A stylegan2-ada snapshot (G, D, G_ema, training_set_kwargs) imports through the CLI with the
    exact weights; generate-images then writes what NVIDIA's generate.py wrote for the same seed,
    class, psi and noise mode (mean |difference| <= 1/255)."""
    G, D = reference_networks()
    write_snapshot(tmp_path / "net.pkl", G, D)
    out = tmp_path / "network.pt"
    cli = [sys.executable, "-m", "histosynth.cli", "-q"]
    subprocess.run(cli + ["import-stylegan2", "--pkl", str(tmp_path / "net.pkl"), "--out", str(out),
                          "--class-names", "tumour,normal"], check=True)
    ck = torch.load(out, weights_only=True)
    assert (ck["kind"], ck["conditioning"]["categories"]["label"]) == ("class", ["tumour", "normal"])
    assert ck["imported"]["tool"] == "stylegan2-ada-pytorch" and len(ck["imported"]["md5"]) == 32
    o = ck["options"]
    assert (o["resolution"], o["z_dim"], o["w_dim"], o["mapping_layers"], o["channel_base"], o["channel_max"],
            o["conv_clamp"], o["mbstd_group"]) == (16, 8, 16, 2, 256, 16, 256, 4)
    for key, net in (("G_ema", G), ("D", D)):
        for k, v in net.state_dict().items():
            assert torch.equal(ck[key][k], v), (key, k)
    d, _, cases = reference()
    for i, case in enumerate(cases):
        if case["seed"] != 1 or case["psi"] != 0.7:
            continue
        name = ["tumour", "normal"][case["class_idx"]]
        subprocess.run(cli + ["generate-images", "--network", str(out), "--seeds", "1", "--class", name, "--trunc",
                              "0.7", "--noise-mode", case["noise_mode"], "--outdir", str(tmp_path / name)], check=True)
        img = np.asarray(Image.open(tmp_path / name / "seed0001.png"))
        assert np.abs(img.astype(int) - d["images"][i].astype(int)).mean() <= 1.0


def test_import_runs_nothing_from_the_file(tmp_path):
    """A pickle that would run a command when unpickled is refused, naming the call, and the
    command does not run; so is one that imports a class of its own."""
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    G, _ = reference_networks()
    write_snapshot(tmp_path / "evil.pkl", G, None, augment_pipe=Evil())
    with pytest.raises(UserError, match=r"asks for (posix|os)\.system.*refusing"):
        import_stylegan2(tmp_path / "evil.pkl")
    assert not marker.exists()
    with open(tmp_path / "class.pkl", "wb") as f:
        pickle.dump({"G_ema": Path("x")}, f)
    with pytest.raises(UserError, match="pathlib"):
        read_pickle(tmp_path / "class.pkl")


def test_import_refuses_stylegan3_and_other_architectures(tmp_path):
    G, D = reference_networks()
    sg3 = N.Generator(8, 2, 16, 16, 256, 16, 2)
    sg3.synthesis.input = torch.nn.Linear(2, 2)  # StyleGAN3's Fourier-feature input layer
    dump({"G_ema": Snapshot(sg3), "G": Snapshot(sg3)}, tmp_path / "sg3.pkl")
    with pytest.raises(UserError, match="StyleGAN3"):
        import_stylegan2(tmp_path / "sg3.pkl")

    # a resnet generator (stylegan2-ada's --cfg with architecture resnet)
    EXTRA["SynthesisBlock"]["architecture"] = "resnet"
    try:
        write_snapshot(tmp_path / "resnet.pkl", G, D)
    finally:
        EXTRA["SynthesisBlock"]["architecture"] = "skip"
    with pytest.raises(UserError, match="architecture 'resnet'"):
        import_stylegan2(tmp_path / "resnet.pkl")

    write_snapshot(tmp_path / "ok.pkl", G, D)
    with pytest.raises(UserError, match="2 classes but 3 class names"):
        import_stylegan2(tmp_path / "ok.pkl", class_names=["a", "b", "c"])
    (tmp_path / "torn.pkl").write_bytes((tmp_path / "ok.pkl").read_bytes()[:5000])
    with pytest.raises(UserError, match="torn.pkl: not a readable"):
        import_stylegan2(tmp_path / "torn.pkl")
    buf = io.BytesIO()
    torch.save({"G_ema": {}}, buf)
    (tmp_path / "zip.pkl").write_bytes(buf.getvalue())
    with pytest.raises(UserError, match="zip.pkl"):
        import_stylegan2(tmp_path / "zip.pkl")


def test_gan_pretrained_adopts_a_pickle_instead_of_training(tmp_path):
    """gan.pretrained: the run writes network.pt (the pickle's G_ema, its source and MD5 recorded,
    training patients unknown), training_options.json, an empty stats.jsonl and sample grids,
    without training; classes are named in the pickle's label order; a network whose classes or
    resolution do not fit the cohort is refused with the key to set."""
    from toydata import toy_index

    from histosynth.config import validate
    from histosynth.gan.checkpoint import load, load_generator
    from histosynth.gan.training.loop import train
    from histosynth.utils import md5_of

    index, _, _ = toy_index(tmp_path, 8)
    torch.manual_seed(0)
    G = N.Generator(8, 2, 16, 16, 256, 16, 2)
    write_snapshot(tmp_path / "net.pkl", G, N.Discriminator(2, 16, 256, 16))

    def opts(**kw):
        return validate({"gan": dict(resolution=16, pretrained=str(tmp_path / "net.pkl"), device="cpu",
                                     grid_per_class=2, **kw)})["gan"]

    out = tmp_path / "run"
    ck = load(train(index, out, opts(pretrained_classes=["light", "dark"]), progress=False))
    assert ck["imported"]["md5"] == md5_of(tmp_path / "net.pkl") and ck["imported"]["source"].endswith("net.pkl")
    assert ck["conditioning"]["categories"]["label"] == ["light", "dark"]
    assert ck["training_set"]["patients"] is None and ck["options"]["z_dim"] == 8
    assert all(torch.equal(ck["G_ema"][k], v) for k, v in G.state_dict().items())
    assert (out / "stats.jsonl").read_text() == "" and (out / "samples" / "fakes000000.png").exists()
    assert json.loads((out / "training_options.json").read_text())["imported"]["tool"] == "stylegan2-ada-pytorch"
    net = load_generator(out / "network.pt")
    z, c = torch.randn(2, 8), torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # dark is index 1
    assert torch.allclose(net.G(z, c, noise_mode="const"), G.eval()(z, c, noise_mode="const"))

    with pytest.raises(UserError, match="not the cohort's labels.*pretrained_classes"):
        train(index, tmp_path / "bad", opts(pretrained_classes=["tumour", "normal"]), progress=False)
    with pytest.raises(UserError, match="makes 16 px tiles but gan.resolution is 32"):
        train(index, tmp_path / "bad", dict(opts(), resolution=32), progress=False)
    assert not (tmp_path / "bad" / "network.pt").exists()


def test_widths_are_recovered_from_the_channels_of_each_resolution():
    """channel_base / channel_max read back from a network's layer shapes give the same channels
    at every resolution (NVIDIA's power-of-two bases and any other); impossible layouts are refused."""
    from histosynth.gan.imports import _widths

    for base, cmax, res in [(16384, 512, 256), (1000, 64, 64), (32768, 512, 1024), (256, 16, 16), (4096, 512, 8)]:
        per_res = {r: N.channels(r, base, cmax) for r in [2 ** i for i in range(2, res.bit_length())]}
        b, m = _widths(per_res, "G", "net.pkl")
        assert {r: N.channels(r, b, m) for r in per_res} == per_res
    with pytest.raises(UserError, match="not min"):
        _widths({4: 8, 8: 16, 16: 8}, "G", "net.pkl")


def test_a_discriminator_of_other_widths_is_left_out_and_the_generator_still_loads(tmp_path):
    from histosynth.gan.checkpoint import load_generator

    torch.manual_seed(0)
    G = N.Generator(8, 2, 16, 16, 256, 16, 2)
    write_snapshot(tmp_path / "mix.pkl", G, N.Discriminator(2, 16, 512, 32))
    ck = import_stylegan2(tmp_path / "mix.pkl", tmp_path / "mix.pt")
    assert ck["D"] is None and (ck["options"]["channel_base"], ck["options"]["channel_max"]) == (256, 16)
    net = load_generator(tmp_path / "mix.pt")
    assert all(torch.equal(net.G.state_dict()[k], v) for k, v in G.state_dict().items())
