"""Generation extras and evaluation plumbing: feature cache per store, field-of-view crop,
the field-of-view guard, latent interpolation."""
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from toydata import toy_index

from histosynth.evaluate.cache import cached_features
from histosynth.evaluate.run import check_field_of_view
from histosynth.generate.sample import field_of_view, latent_interpolation, slerp
from histosynth.slides.store import TileStoreWriter
from histosynth.utils import UserError


def test_features_are_cached_per_store_and_invalidated_when_it_changes(tmp_path):
    index, tiles, _ = toy_index(tmp_path, 16)
    calls = []

    def compute(x):
        calls.append(len(x))
        return x.reshape(len(x), -1).mean(1, keepdims=True).astype(np.float64) * np.ones((1, 3))

    want = compute(tiles)
    calls.clear()
    cache = tmp_path / "cache"
    sub = index.iloc[::2]
    f1 = cached_features(sub, "toy-1", compute, cache)
    assert calls == [16] and np.allclose(f1, want[::2])
    f2 = cached_features(index.iloc[::-1], "toy-1", compute, cache)  # any order; only the 16 missing pages
    assert calls == [16, 16] and np.allclose(f2, want[::-1])
    cached_features(index, "toy-1", compute, cache)
    assert calls == [16, 16]  # all from the cache
    cached_features(index, "toy-2", compute, cache)  # another extractor (or weights): its own cache
    assert calls == [16, 16, 32]
    # the store is rewritten (re-tiled): its cache entry no longer applies
    store = index["store"].iloc[0]
    with TileStoreWriter(store) as w:
        for t in tiles[::-1]:
            w.append(t)
    os.utime(store, ns=(os.stat(store).st_atime_ns, os.stat(store).st_mtime_ns + 10**9))
    f3 = cached_features(index, "toy-1", compute, cache)
    assert calls[-1] == 32 and np.allclose(f3, want[::-1])
    assert np.allclose(cached_features(index, "toy-1", compute, None), f3)  # no cache dir: plain compute


def test_field_of_view_crop_and_resize():
    img = np.zeros((1, 32, 32, 3), np.uint8)
    img[0, 8:24, 8:24] = 200  # the central 64 µm of a 128 µm tile
    post, meta = field_of_view({"tile_px": 32, "tile_um": 128.0, "mpp": 4.0}, fov_um=64, out_px=16)
    out = post(img)
    assert out.shape == (1, 16, 16, 3) and out.min() >= 190  # exactly the bright centre, resized
    assert meta == {"tile_px": 16, "tile_um": 64, "mpp": 4.0}
    assert field_of_view({"tile_px": 32, "tile_um": 128.0}, None, None)[0] is None
    with pytest.raises(UserError, match="only be cropped"):
        field_of_view({"tile_px": 32, "tile_um": 128.0}, fov_um=256)
    real = pd.DataFrame({"tile_px": [32], "tile_um": [128.0]})
    check_field_of_view(real, real.copy())
    with pytest.raises(UserError, match="tile_um 64 but the real tiles 128"):
        check_field_of_view(real, pd.DataFrame({"tile_px": [32], "tile_um": [64.0]}))


def test_slerp_endpoints_and_norm():
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 3.0]])
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-5) and torch.allclose(slerp(a, b, 1.0), b, atol=1e-5)
    assert torch.allclose(slerp(a, b, 0.5).norm(), torch.tensor(3.0), atol=1e-5)


def test_latent_interpolation_grid_and_gif(tmp_path):
    from test_gan import tiny_opts

    from histosynth.gan.training.loop import train

    index, _, _ = toy_index(tmp_path, 16)
    net = train(index, tmp_path / "run", tiny_opts(kimg=0.05, snap_kimg=0.05), progress=False)
    names = latent_interpolation(net, tmp_path / "latent.png", tmp_path / "latent.gif", seeds=(0, 1), steps=5)
    assert names == ["dark", "light"]
    png = np.asarray(Image.open(tmp_path / "latent.png"))
    assert png.shape[:2] == (2 * 16, 5 * 16)
    gif = Image.open(tmp_path / "latent.gif")
    assert gif.n_frames == 2 * 5 - 2 and gif.size == (2 * 16, 16)
    # the row's ends are the seeds' own images for that class
    from histosynth.gan.checkpoint import load_generator
    from histosynth.generate.sample import z_from_seeds
    from histosynth.torch_utils.images import to_uint8

    _net = load_generator(net)
    G, spec = _net.G, _net.spec
    c = torch.from_numpy(spec.encode(pd.DataFrame([{"label": "dark"}])))
    with torch.no_grad():
        first = to_uint8(G(z_from_seeds([0], G.z_dim), c, noise_mode="const"))[0]
    assert np.abs(png[:16, :16].astype(int) - first.astype(int)).max() <= 1


def test_generate_images_follows_nvidias_seed_convention(tmp_path):
    """`histosynth generate-images`: seedNNNN.png per seed from z = RandomState(seed).randn(1, z_dim),
    the class by name or one-hot index, psi towards the mean w (psi 0: every seed the same image),
    noise const / none repeatable; bad seeds and unknown classes refused with the choices."""
    from test_gan import tiny_opts

    from histosynth.cli import main
    from histosynth.gan.checkpoint import load_generator
    from histosynth.gan.training.loop import train
    from histosynth.generate.images import parse_seeds
    from histosynth.torch_utils.images import to_uint8

    index, _, _ = toy_index(tmp_path, 16)
    net = train(index, tmp_path / "run", tiny_opts(kimg=0.05, snap_kimg=0.05), progress=False)
    assert parse_seeds("0-2,7") == [0, 1, 2, 7] and parse_seeds("5") == [5]
    assert main(["-q", "generate-images", "--network", str(net), "--seeds", "0-2,7", "--class", "light",
                 "--outdir", str(tmp_path / "a")]) == 0
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [f"seed{s:04d}.png" for s in (0, 1, 2, 7)]
    G = load_generator(net).G
    with torch.no_grad():
        z = torch.from_numpy(np.random.RandomState(7).randn(1, G.z_dim)).float()
        want = to_uint8(G(z, torch.tensor([[0.0, 1.0]]), noise_mode="const"))[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "seed0007.png")), want)
    # the same class by one-hot index; noise none repeats; psi 0 gives one image for all seeds
    main(["-q", "generate-images", "--network", str(net), "--seeds", "7", "--class-index", "1",
          "--outdir", str(tmp_path / "b")])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b" / "seed0007.png")), want)
    for d in ("c", "d"):
        main(["-q", "generate-images", "--network", str(net), "--seeds", "0-3", "--class", "dark", "--trunc", "0",
              "--noise-mode", "none", "--outdir", str(tmp_path / d)])
    imgs = [np.asarray(Image.open(tmp_path / "c" / f"seed{s:04d}.png")) for s in range(4)]
    assert all(np.array_equal(imgs[0], x) for x in imgs[1:])
    assert np.array_equal(imgs[0], np.asarray(Image.open(tmp_path / "d" / "seed0000.png")))
    # seeded: each seed's own noise maps, as bulk generation draws them
    from histosynth.gan.networks import SeededNoise

    main(["-q", "generate-images", "--network", str(net), "--seeds", "7", "--class", "light", "--noise-mode",
          "seeded", "--outdir", str(tmp_path / "s")])
    with torch.no_grad():
        want = to_uint8(G(z, torch.tensor([[0.0, 1.0]]), noise_mode=SeededNoise([7])))[0]
    assert np.array_equal(np.asarray(Image.open(tmp_path / "s" / "seed0007.png")), want)
    # refusals name what to give
    assert main(["-q", "generate-images", "--network", str(net), "--seeds", "3-1", "--class", "dark",
                 "--outdir", str(tmp_path / "e")]) == 2
    with pytest.raises(UserError, match="its classes: dark, light"):
        from histosynth.generate.images import generate_images

        generate_images(net, [0], tmp_path / "f", class_name="tumour")
    assert not (tmp_path / "e").exists() and not (tmp_path / "f").exists()


def test_bulk_tiles_draw_their_noise_from_their_own_seed(tmp_path):
    """Bulk generation (generate_sets) gives each tile its own noise maps, drawn from its seed:
    the same seed gives the same tile in any batch, different seeds differ in their stochastic
    detail even at the same z (as in training), and a set made with the network's one stored
    noise ("const": the same fine detail at the same places in every tile) is not reused."""
    from histosynth.gan.networks import Generator, SeededNoise
    from histosynth.generate.sample import generate_sets, z_from_seeds
    from histosynth.slides.store import TileStore, read_index, write_index
    from histosynth.torch_utils.images import to_uint8

    torch.manual_seed(0)
    G = Generator(16, 2, 32, 16, 256, 32, 2).eval()
    for name, p in G.named_parameters():
        if name.endswith("noise_strength"):
            p.data.fill_(0.5)  # a trained network's noise matters; a new one's strengths are zero
    z, c = torch.randn(3, 16), torch.tensor([[1.0, 0.0]]).expand(3, -1)
    with torch.no_grad():
        batch = G(z, c, noise_mode=SeededNoise([5, 6, 7]))
        alone = G(z[1:2], c[:1], noise_mode=SeededNoise([6]))[0]
        assert torch.allclose(alone, batch[1], atol=1e-5)  # batch-independent (up to float rounding)
        same_z = G(z[:1].expand(2, -1), c[:2], noise_mode=SeededNoise([5, 6]))
        const = G(z[:1].expand(2, -1), c[:2], noise_mode="const")
    assert (same_z[0] - same_z[1]).abs().max() > 0.05 and torch.equal(const[0], const[1])

    network = tmp_path / "network.pt"
    network.write_bytes(b"stands for the network file (its name and mtime are recorded)")
    sets = [{"name": "a", "c": [[1.0, 0.0]], "seeds": list(range(10, 16))}]
    df = generate_sets(G, sets, tmp_path / "gen", network, batch=4, progress=False)
    assert (df["noise"] == "seeded").all()
    with torch.no_grad():
        want = to_uint8(G(z_from_seeds([13], 16), torch.tensor([[1.0, 0.0]]), noise_mode=SeededNoise([13])))[0]
    with TileStore(tmp_path / "gen" / "a.tiff") as r:
        got = r[int(df.loc[df["seed"] == 13, "page"].iloc[0])]
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    # a set on disk from const noise (no noise column) is made again, not reused
    index = tmp_path / "gen" / "a.parquet"
    old = read_index(index).drop(columns="noise")
    write_index(old, index)
    again = generate_sets(G, sets, tmp_path / "gen", network, batch=4, progress=False)
    assert (again["noise"] == "seeded").all() and "noise" in read_index(index).columns
