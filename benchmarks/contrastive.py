"""Attribute concordance with and without the conditional contrastive loss (gan.contrastive_weight),
on a generated two-attribute cohort (AttributeGAN's setting, small).

Tiles of 16 px carry two independent attributes: colour (purple "dark" / pink "light") and the
orientation of their stripes ("horizontal" / "vertical"), 64 tiles per combination. For each
setting and training seed, an attributes-conditioned StyleGAN2 (stylegan2-ada's defaults, small
widths) trains for --kimg; then, per attribute, a logistic-regression classifier fitted on the
real tiles labels 200 generated tiles of every combination, and the attribute concordance is
the share labelled with the attribute value they were generated for. The classifiers see
phase-free features (mean colour, mean absolute horizontal and vertical differences), so they
can tell the stripes' orientation whatever their phase; their 5-fold accuracy on the real tiles
is printed first (the ceiling of the concordance). Printed: per setting, the mean and the
per-seed values of each attribute's concordance.

  python benchmarks/contrastive.py --kimg 2 --seeds 0 1 2 --weights 0 1
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from histosynth.config import validate  # noqa: E402
from histosynth.gan.checkpoint import load_generator  # noqa: E402
from histosynth.gan.training.loop import train  # noqa: E402
from histosynth.generate.sample import z_from_seeds  # noqa: E402
from histosynth.slides.store import TileStoreWriter  # noqa: E402
from histosynth.torch_utils.images import to_uint8  # noqa: E402

PX = 16


def cohort(tmp: Path, per=64, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:PX, 0:PX]
    rows, tiles = [], []
    store = tmp / "attrs.tiff"
    with TileStoreWriter(store) as w:
        for colour, base in (("dark", (110, 60, 150)), ("light", (235, 170, 200))):
            for orient, axis in (("horizontal", yy), ("vertical", xx)):
                for i in range(per):
                    wave = 35 * np.sin(axis * 1.3 + rng.uniform(0, 2 * np.pi))[..., None]
                    img = np.clip(np.array(base) + wave + rng.normal(0, 6, (PX, PX, 3)), 0, 255).astype(np.uint8)
                    tiles.append(img)
                    rows.append(dict(page=w.append(img), colour=colour, orientation=orient,
                                     label=f"{colour}-{orient}", patient_id=f"p{i % 8}-{colour}-{orient}"))
    df = pd.DataFrame(rows)
    df["store"], df["slide_id"], df["tile_px"], df["tile_um"], df["mpp"] = str(store), "toy", PX, 32.0, 2.0
    df["kept"], df["partition"] = True, "train"
    return df, np.stack(tiles)


def features(tiles: np.ndarray) -> np.ndarray:
    """Mean colour and mean absolute horizontal / vertical differences per channel (uint8 NHWC)."""
    x = tiles.astype(np.float32) / 255.0
    return np.concatenate([x.mean((1, 2)), np.abs(np.diff(x, axis=2)).mean((1, 2)),
                           np.abs(np.diff(x, axis=1)).mean((1, 2))], 1)


def classifiers(df, tiles):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    x = features(tiles)
    out = {}
    for a in ("colour", "orientation"):
        clf = LogisticRegression(max_iter=3000)
        acc = cross_val_score(clf, x, df[a], cv=5).mean()
        out[a] = clf.fit(x, df[a])
        print(f"real tiles, 5-fold accuracy for {a}: {acc:.3f}", flush=True)
    return out


def concordance(net, clfs, n=200):
    hits = {a: [] for a in clfs}
    for cond in net.spec.conditions():
        c = torch.from_numpy(net.spec.encode(pd.DataFrame([cond] * n)))
        with torch.no_grad():
            img = to_uint8(net.G(z_from_seeds(range(10_000, 10_000 + n), net.z_dim), c, noise_mode="const"))
        x = features(img)
        for a, clf in clfs.items():
            hits[a].append(float((clf.predict(x) == cond[a]).mean()))
    return {a: float(np.mean(v)) for a, v in hits.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kimg", type=float, default=2.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0])
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        df, tiles = cohort(tmp)
        clfs = classifiers(df, tiles)
        for wgt in a.weights:
            for seed in a.seeds:
                opts = validate({"gan": dict(conditioning="attributes", condition_columns=["colour", "orientation"],
                                             resolution=PX, z_dim=32, w_dim=64, mapping_layers=2, channel_base=256,
                                             channel_max=32, batch=16, kimg=a.kimg, snap_kimg=a.kimg,
                                             tick_kimg=a.kimg / 4, device="cpu", grid_per_class=2, seed=seed,
                                             contrastive_weight=wgt, tensorboard=False)})["gan"]
                out = tmp / f"w{wgt}-s{seed}"
                net = load_generator(train(df, out, opts, progress=False))
                results.setdefault(wgt, []).append(concordance(net, clfs))
                print(f"contrastive_weight {wgt:g}, seed {seed}: {results[wgt][-1]}", flush=True)
    print(f"\n{'weight':>7} {'colour':>16} {'orientation':>16}   ({len(a.seeds)} seeds, {a.kimg:g} kimg, 16 px)")
    for wgt, rs in results.items():
        cells = [f"{np.mean([r[k] for r in rs]):.3f} ± {np.std([r[k] for r in rs]):.3f}" for k in ("colour", "orientation")]
        print(f"{wgt:>7g} {cells[0]:>16} {cells[1]:>16}")
    if a.json:
        Path(a.json).write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2))


if __name__ == "__main__":
    main()
