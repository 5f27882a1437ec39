import json

import pytest
import torch
from toydata import toy_index

from histosynth.config import validate
from histosynth.gan.checkpoint import load, load_generator
from histosynth.gan.networks import Discriminator, Generator
from histosynth.gan.training.loop import train


def tiny_opts(**kw):
    o = dict(resolution=16, z_dim=32, w_dim=64, mapping_layers=2, channel_base=256, channel_max=32, batch=16,
             kimg=0.4, snap_kimg=0.2, tick_kimg=0.1, augment="diffaugment", r1_gamma=0.1, ema_kimg=0.2, lr_g=0.003,
             lr_d=0.003, device="cpu", grid_per_class=4)
    o.update(kw)
    return validate({"gan": o})["gan"]


def test_shapes_and_conditioning_path():
    G = Generator(32, 3, 64, 32, 512, 64, 2)
    D = Discriminator(3, 32, 512, 64)
    z, c = torch.randn(4, 32), torch.eye(3)[[0, 1, 2, 0]]
    img = G(z, c)
    assert img.shape == (4, 3, 32, 32) and D(img, c).shape == (4, 1)
    # the condition changes the output for the same z
    assert not torch.allclose(G(z, c, noise_mode="const"), G(z, torch.eye(3)[[1, 2, 0, 1]], noise_mode="const"))


def test_adam_betas_reach_both_optimisers_with_the_lazy_regularisation_correction(tmp_path):
    """gan.beta1/beta2 are G's and D's Adam betas, corrected as stylegan2-ada corrects lr and
    beta2 for lazy regularisation (ratio interval / (interval + 1)); the defaults are its (0, 0.99)."""
    from histosynth.gan.training.kinds import StyleGAN2Kind

    index, _, _ = toy_index(tmp_path, 16)
    for b1, b2 in ((0.0, 0.99), (0.5, 0.9)):
        kind = StyleGAN2Kind(index, tiny_opts(beta1=b1, beta2=b2, pl_weight=2.0, pl_interval=4, r1_interval=16),
                             torch.device("cpu"), 1)
        opt_g, opt_d = kind.optimizers(*kind.build())
        for opt, ratio in ((opt_g, 4 / 5), (opt_d, 16 / 17)):
            g = opt.param_groups[0]
            assert g["betas"] == pytest.approx((b1 ** ratio, b2 ** ratio)) and g["lr"] == pytest.approx(0.003 * ratio)


def test_conditional_gan_learns_toy_classes(tmp_path):
    """A classifier trained on real toy tiles labels generated tiles of each class correctly."""
    from sklearn.linear_model import LogisticRegression

    index, tiles, labels = toy_index(tmp_path, 128)
    net = train(index, tmp_path / "run", tiny_opts(kimg=3.0, snap_kimg=3.0), progress=False)
    _net = load_generator(net)
    G, spec = _net.G, _net.spec
    clf = LogisticRegression(max_iter=2000).fit(tiles.reshape(len(tiles), -1) / 255.0, labels)
    assert clf.score(tiles.reshape(len(tiles), -1) / 255.0, labels) == 1.0
    accs = {}
    for cond in spec.conditions():
        c = torch.from_numpy(spec.encode(__import__("pandas").DataFrame([cond] * 200)))
        with torch.no_grad():
            img = G(torch.randn(200, 32, generator=torch.Generator().manual_seed(1)), c, noise_mode="const")
        x = ((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255) / 255.0).numpy().reshape(200, -1)
        accs[cond["label"]] = float((clf.predict(x) == cond["label"]).mean())
    print("per-class accuracy of generated toy tiles:", accs)
    assert min(accs.values()) >= 0.9, accs


def test_resume_equals_uninterrupted(tmp_path):
    index, _, _ = toy_index(tmp_path, 32)
    a = train(index, tmp_path / "a", tiny_opts(kimg=0.4), progress=False)
    train(index, tmp_path / "b", tiny_opts(kimg=0.2), progress=False)  # "killed" after its first snapshot
    b = train(index, tmp_path / "b", tiny_opts(kimg=0.4), progress=False)  # resumed
    ca, cb = load(a), load(b)
    assert ca["cur_nimg"] == cb["cur_nimg"] == 400
    for key in ("G", "D", "G_ema"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    assert ca["loss"]["augment"] == cb["loss"]["augment"]
    opts = json.loads((tmp_path / "b" / "training_options.json").read_text())
    assert opts["n_train_tiles"] == 64 and opts["conditioning_spec"]["categories"]["label"] == ["dark", "light"]
    assert (tmp_path / "b" / "samples" / "reals.png").exists()


def test_read_ahead_from_stores_trains_on_the_preloaded_batches_and_resumes_exactly(tmp_path):
    """Tiles read from the stores with read-ahead (preload_max_mb 0) give the networks of the
    preloaded path bit for bit, also when the run is killed after a snapshot and resumed (the
    checkpoint records the sampler before the batches read ahead); the reads run ahead of use."""
    from histosynth.gan.dataset import ReadAhead, TileSource

    index, _, _ = toy_index(tmp_path, 32)
    pre = load(train(index, tmp_path / "pre", tiny_opts(kimg=0.4), progress=False))
    ahead = load(train(index, tmp_path / "ahead", tiny_opts(kimg=0.4, preload_max_mb=0, read_ahead=3), progress=False,
                       threads=2))
    train(index, tmp_path / "b", tiny_opts(kimg=0.2, preload_max_mb=0, read_ahead=3), progress=False)
    resumed = load(train(index, tmp_path / "b", tiny_opts(kimg=0.4, preload_max_mb=0, read_ahead=5), progress=False))
    for other in (ahead, resumed):
        for key in ("G", "D", "G_ema"):
            assert all(torch.equal(pre[key][k], other[key][k]) for k in pre[key]), key

    src = TileSource(index, 16, preload_max_mb=0, threads=2)
    reads = []

    def draw(n, gen):
        return {"idx": torch.randint(0, len(index), (n,), generator=gen)}

    ra = ReadAhead(src, draw, 3)
    ra._read = lambda idx, read=ra._read: reads.append(idx) or read(idx)
    gen = torch.Generator().manual_seed(0)
    first = gen.get_state()
    d, tiles = ra.next(4, gen)
    assert tiles.shape == (4, 3, 16, 16) and torch.equal(tiles, src.get(d["idx"]))
    assert len(ra.queue) == 3 and all(f.result(timeout=30) is not None for _, _, f in ra.queue)
    assert len(reads) == 4  # the next three batches were read before anyone asked for them
    again = torch.Generator().manual_seed(0)
    draw(4, again)
    assert torch.equal(ra.state(gen), again.get_state()) and not torch.equal(ra.state(gen), first)


def test_ddp_two_processes_keep_identical_weights(tmp_path):
    import os
    import subprocess
    import sys

    index, _, _ = toy_index(tmp_path, 16)
    index.to_parquet(tmp_path / "tiles.parquet")
    opts = json.dumps(tiny_opts(kimg=0.1, snap_kimg=0.05, tick_kimg=0.05, batch=8))
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "histosynth.cli", "-q", "train-gan",
                        "--options", opts, "--tiles", str(tmp_path / "tiles.parquet"), "--outdir", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    snaps = [json.loads(x) for x in open(tmp_path / "ddp" / "snapshots.jsonl")]
    assert len(snaps) == 2
    for s in snaps:
        assert len(s["rank_checksums"]) == 2 and s["rank_checksums"][0] == s["rank_checksums"][1]
    assert json.loads((tmp_path / "ddp" / "training_options.json").read_text())["world_size"] == 2


def test_ada_pipeline():
    """ADA's bgc pipeline: identity at p=0, every op gated by p, reflection padding (a constant
    tile stays constant under any geometric op), colour ops centred, differentiable."""
    from histosynth.gan.augment import AdaptiveAugment, ada_augment

    torch.manual_seed(0)
    x = torch.rand(2000, 3, 16, 16) * 1.6 - 0.8
    assert torch.equal(ada_augment(x, 0.0), x)
    changed = lambda p: float(((ada_augment(x, p) - x).abs().amax(dim=(1, 2, 3)) > 1e-4).float().mean())  # noqa: E731
    assert changed(1.0) > 0.99
    # 13 gated operations, a few of which draw their neutral value by chance: P(untouched) ~ (1 - p)^12
    assert 0.40 < changed(0.05) < 0.53 and 0.04 < changed(0.005) < 0.08
    const = torch.full((64, 1, 16, 16), 0.3)  # one channel: geometric ops and cutout only
    g = ada_augment(const, 1.0, cutout=False)
    assert (g - 0.3).abs().max() < 1e-5
    assert abs(float(ada_augment(x, 0.5, cutout=False).mean() - x.mean())) < 0.02
    xr = x[:8].clone().requires_grad_(True)
    ada_augment(xr, 0.5).square().sum().backward()
    assert xr.grad.abs().sum() > 0
    aug = AdaptiveAugment("ada", target=0.6, speed_kimg=0.1, interval=1)
    aug.observe(torch.ones(16), 16)  # D sure of every real: overfitting, p goes up
    assert aug.p > 0


def test_tensorboard_scalars_match_stats_jsonl(tmp_path):
    pytest.importorskip("tensorboard")  # in the test extras; optional for users
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    index, _, _ = toy_index(tmp_path, 16)
    train(index, tmp_path / "run", tiny_opts(kimg=0.1, snap_kimg=0.1, tick_kimg=0.05, batch=8), progress=False)
    stats = [json.loads(x) for x in open(tmp_path / "run" / "stats.jsonl")]
    ev = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    ev.Reload()
    got = ev.Scalars("loss_G")
    assert [e.step for e in got] == [round(s["kimg"] * 1000) for s in stats] and len(got) == 2
    assert [e.value for e in got] == pytest.approx([s["loss_G"] for s in stats], rel=1e-5)
    assert {"loss_D", "augment_p", "img_per_sec"} <= set(ev.Tags()["scalars"])
    no_tb = tiny_opts(kimg=0.05, snap_kimg=0.05, tick_kimg=0.05, batch=8, tensorboard=False)
    train(index, tmp_path / "off", no_tb, progress=False)
    assert (tmp_path / "off" / "stats.jsonl").exists() and not (tmp_path / "off" / "tensorboard").exists()


def test_learns_at_stylegan2_ada_defaults(tmp_path):
    """stylegan2-ada's own settings (preset auto: its batch, learning rate, gamma, EMA and mapping
    depth for the resolution; ADA, style mixing 0.9, path length 2, conv clamp 256; only the widths
    made small for a CPU) learn the toy classes: a classifier of real tiles labels the generated
    tiles of each class correctly."""
    from sklearn.linear_model import LogisticRegression

    index, tiles, labels = toy_index(tmp_path, 128)
    opts = validate({"gan": dict(preset="auto", resolution=16, z_dim=32, w_dim=64, channel_base=256, channel_max=32,
                                 kimg=4.0, snap_kimg=4.0, tick_kimg=1.0, device="cpu", grid_per_class=4)})["gan"]
    assert (opts["batch"], opts["mapping_layers"], opts["lr_g"], opts["style_mixing"], opts["pl_weight"],
            opts["augment"], opts["conv_clamp"]) == (32, 2, 0.0025, 0.9, 2.0, "ada", 256)
    net = load_generator(train(index, tmp_path / "run", opts, progress=False))
    clf = LogisticRegression(max_iter=2000).fit(tiles.reshape(len(tiles), -1) / 255.0, labels)
    stats = [json.loads(line) for line in (tmp_path / "run" / "stats.jsonl").read_text().splitlines()]
    assert any("pl" in s for s in stats)  # the path-length penalty ran
    for cond in net.spec.conditions():
        c = torch.from_numpy(net.spec.encode(__import__("pandas").DataFrame([cond] * 200)))
        with torch.no_grad():
            img = net.G(torch.randn(200, 32, generator=torch.Generator().manual_seed(1)), c, noise_mode="const")
        x = ((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255) / 255.0).numpy().reshape(200, -1)
        acc = float((clf.predict(x) == cond["label"]).mean())
        assert acc >= 0.9, (cond, acc)


def test_compiled_training_path_matches_eager_without_graph_breaks(tmp_path, monkeypatch):
    """The GPU's torch.compile path, run on the CPU: G and D compile as whole graphs
    (fullgraph=True: a graph break, which on CUDA is also where a host sync hides, fails the
    run), ADA's p moving and style mixing cause no recompilation, and training is bit-identical
    to the eager run (aot_eager traces the same graphs inductor compiles on a GPU)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from histosynth.gan.training import loop

    index, _, _ = toy_index(tmp_path, 32)
    o = tiny_opts(kimg=0.096, snap_kimg=0.096, batch=8, augment="ada", ada_p=None, ada_kimg=0.1,
                  style_mixing=0.9, pl_weight=2.0, pl_interval=2, r1_interval=2, contrastive_weight=0.5, compile=True)
    o["ada_target"] = -2.0  # below any r_t (the schema's range is [0, 1]): p rises at every adjustment
    eager = load(train(index, tmp_path / "eager", o, progress=False))
    monkeypatch.setattr(loop, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setattr(loop, "COMPILE_OPTIONS", {"backend": "aot_eager", "fullgraph": True})
    torch._dynamo.reset()
    counters.clear()
    compiled = load(train(index, tmp_path / "compiled", o, progress=False))
    assert counters["stats"]["calls_captured"] > 0, "nothing was compiled"
    # G once; D for its two phases (parameters trainable or not), with and without the embedding
    assert counters["stats"]["unique_graphs"] <= 5, dict(counters["stats"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert eager["loss"]["augment"]["p"] == compiled["loss"]["augment"]["p"] > 0.5  # p rose twice (r_t > target)
    assert [json.loads((tmp_path / r / "training_options.json").read_text())["compiled"]
            for r in ("eager", "compiled")] == [False, True]
    for key in ("G", "D", "G_ema"):
        for k in eager[key]:
            assert torch.equal(eager[key][k], compiled[key][k]), (key, k)


def test_bf16_compiled_training_path_on_cpu(tmp_path, monkeypatch):
    """The GPU's mixed-precision path (bf16 autocast around the main G and D passes, compiled),
    run on the CPU's bf16 autocast: it trains, keeps fp32 weights, and stays close to fp32
    training (bf16 rounding, so not identical: the autocast did take effect)."""
    import torch._dynamo

    from histosynth.gan.training import loop
    from histosynth.torch_utils import distributed as tdist

    index, _, _ = toy_index(tmp_path, 32)
    o = tiny_opts(kimg=0.096, snap_kimg=0.096, batch=8, augment="ada", ada_p=0.5, style_mixing=0.9, pl_weight=2.0,
                  pl_interval=2, r1_interval=2, contrastive_weight=0.5, precision="bf16", compile=True)
    fp32 = load(train(index, tmp_path / "fp32", o, progress=False))
    monkeypatch.setattr(tdist, "BF16_DEVICES", ("cuda", "cpu"))
    monkeypatch.setattr(loop, "COMPILE_DEVICES", ("cpu",))
    monkeypatch.setattr(loop, "COMPILE_OPTIONS", {"backend": "aot_eager", "fullgraph": True})
    torch._dynamo.reset()
    bf16 = load(train(index, tmp_path / "bf16", o, progress=False))
    assert [json.loads((tmp_path / r / "training_options.json").read_text())["bf16_autocast"]
            for r in ("fp32", "bf16")] == [False, True]
    stats = [json.loads(line) for line in (tmp_path / "bf16" / "stats.jsonl").read_text().splitlines()]
    ref = [json.loads(line) for line in (tmp_path / "fp32" / "stats.jsonl").read_text().splitlines()]
    for k in ("loss_G", "loss_D", "r1", "pl"):
        assert abs(stats[-1][k] - ref[-1][k]) <= 0.02 * abs(ref[-1][k]) + 1e-3, (k, stats[-1][k], ref[-1][k])
    diffs = []
    for key in ("G", "D"):
        for k, v in bf16[key].items():
            assert v.dtype == fp32[key][k].dtype and torch.isfinite(v.float()).all(), (key, k)
            diffs.append(float((v.float() - fp32[key][k].float()).abs().max()))
    assert 0 < max(diffs) < 0.05, max(diffs)


class _HostToDevice:
    """Records every copy from the CPU to another device that a dispatched op makes, and whether
    it was asked not to block (a blocking copy is a CUDA stream sync: the host waits for the GPU)."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        seen = self.seen = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                devs = lambda tree: {t.device.type for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)}  # noqa: E731
                if "cpu" in devs((args, kwargs)) and devs(out) - {"cpu"}:
                    seen.append((str(func), bool(kwargs.get("non_blocking", False))))
                return out
        self.mode = Mode()


@pytest.mark.parametrize("run_kind", ["class", "spade", "pix2pix"])
def test_a_training_step_makes_no_host_sync(tmp_path, monkeypatch, run_kind):
    """A whole training step (batch, G phase with path length, D phase with R1; ADA at p = 0.5,
    style mixing, the contrastive loss) on PyTorch's meta device, which has tensors without
    values: any read of a value on the host (.item(), float(), a bool of a tensor, nonzero, a
    data-dependent shape), each a GPU sync on CUDA, raises there. Copies from the CPU must not
    block, and no constant is built on the host and copied per step. (ADA's p controller reads
    r_t once every 4 steps, stylegan2-ada's interval; two steps stay inside that window.)"""
    import contextlib

    from test_masks import mask_opts
    from toydata import toy_mask_index

    from histosynth.gan.training.kinds import LabelMapKind, StyleGAN2Kind
    from histosynth.torch_utils import distributed as tdist

    meta = torch.device("meta")
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: contextlib.nullcontext())  # no autocast for meta
    made = []
    real_tensor = torch.tensor

    def tensor(data, *a, **k):
        if k.get("device") is not None and torch.device(k["device"]).type != "cpu":
            made.append(data)
        return real_tensor(data, *a, **k)

    monkeypatch.setattr(torch, "tensor", tensor)
    if run_kind == "class":
        index, _, _ = toy_index(tmp_path, 16)
        kind = StyleGAN2Kind(index, tiny_opts(augment="ada", ada_p=0.5, style_mixing=0.9, pl_weight=2.0,
                                              contrastive_weight=0.5), meta, 1)
    else:
        index, _, _ = toy_mask_index(tmp_path, 32, 16)
        o, m = mask_opts(run_kind, resolution=16)
        kind = LabelMapKind(index, o, m, meta, 1)
    G, D = (net.to(meta) for net in kind.build())
    loss = kind.loss(G, D, G, D, tdist.autocast("fp32", meta), None)
    copies = _HostToDevice()
    gen = torch.Generator().manual_seed(0)
    keys = set()
    with copies.mode:
        for _ in range(2):
            batch = kind.next_batch(8, gen)
            for phase, interval in loss.phases():
                out = loss.accumulate_gradients(phase, batch, interval > 0)
                assert all(v.device == meta for v in out.values()), out
                keys |= set(out)
    assert batch["real"].device == meta and (run_kind != "class" or {"pl", "r1"} <= keys), keys
    assert copies.seen and all(non_blocking for _, non_blocking in copies.seen), copies.seen
    assert not made, made


def test_dihedral_batch_path_matches_the_eight_symmetries_image_by_image():
    from histosynth.torch_utils.images import dihedral, dihedral_draws, paired_dihedral

    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 3, 8, 8)
    k, f = dihedral_draws(16, gen)
    assert set(k.tolist()) == {0, 1, 2, 3} and set(f.tolist()) == {False, True}
    out = dihedral(x, k, f)
    for i in range(16):
        want = x[i].rot90(int(k[i]), dims=(1, 2))
        want = want.flip(2) if f[i] else want
        assert torch.equal(out[i], want)
    # A non-square batch takes the image-by-image path (a quarter turn changes its shape).
    r = torch.randn(4, 3, 6, 6)[..., :4]
    assert torch.equal(dihedral(r, torch.zeros(4, dtype=torch.long), torch.tensor([1, 0, 1, 0]).bool())[0], r[0].flip(2))
    # The tile and its label map turn together.
    seg = torch.arange(64).view(1, 8, 8).expand(16, 8, 8).clone()
    img = seg.unsqueeze(1).float().expand(16, 3, 8, 8).clone()
    oi, os_ = paired_dihedral(img, seg, torch.Generator().manual_seed(5))
    assert torch.equal(oi[:, 0].long(), os_)
