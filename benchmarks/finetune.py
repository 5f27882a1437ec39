"""Fine-tuning against training from scratch on a small cohort with another class count.

A class-conditional StyleGAN2 is trained on cohort A (tumor, normal: 8 patients a class). Cohort B
is small and has three classes: tumor, normal and sparse tumour (a third of the nuclear density),
4 patients a class. On B, the same run is trained twice for the same kimg: from scratch, and
fine-tuned from A's network (gan.finetune_from; tumor and normal keep their label-embedding
columns, the third class starts new; no FreezeD). Both track domain-FID at every snapshot
(gan.metrics, in the feature space of a reference classifier trained on B's real tiles), and each
kept snapshot's concordance (the share of generated tiles the reference classifier gives their
intended class, per class balanced) is measured afterwards. Per seed: concordance and FID at the
final kimg, and the kimg at which concordance first reaches 0.9; three seeds.

Tiles: 32 px at 2 µm/px cut from the demo slide generator's tissue (background-free).

  python benchmarks/finetune.py [--seeds 0 1 2 --pre-kimg 8 --kimg 4 --snap 0.5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.classify.model import predict  # noqa: E402
from histosynth.classify.study import save_reference, train_reference  # noqa: E402
from histosynth.config import validate  # noqa: E402
from histosynth.gan.checkpoint import load_generator  # noqa: E402
from histosynth.gan.training.loop import train  # noqa: E402
from histosynth.gan.training.snapshots import SNAPSHOT_DIR, read_series  # noqa: E402
from histosynth.slides.store import TileStoreWriter  # noqa: E402
from histosynth.slides.synthetic import SlideSpec, draw_tissue  # noqa: E402

PX = 32


def cohort(d: Path, name: str, classes: dict, patients: int, per_slide: int, seed: int) -> pd.DataFrame:
    """A tile store of `classes` (name -> (drawn label, cellularity)), one slide per patient."""
    rows, k = [], 0
    with TileStoreWriter(d / f"{name}.tiff") as w:
        for label, (drawn, cell) in classes.items():
            for p in range(patients):
                k += 1
                img = draw_tissue(SlideSpec(f"{name}{k}", f"{name}-{label}-{p}", drawn, size_px=2048,
                                            seed=seed * 10000 + k, cellularity=cell))
                small = img.reshape(512, 4, 512, 4, 3).mean((1, 3)).astype(np.uint8)  # 0.5 -> 2 µm/px
                tiles = [small[y:y + PX, x:x + PX] for y in range(0, 512, PX) for x in range(0, 512, PX)]
                tiles = [t for t in tiles if t.mean() < 215][:per_slide]  # tissue only
                for t in tiles:
                    rows.append({"slide_id": f"{name}{k}", "patient_id": f"{name}-{label}-{p}", "label": label,
                                 "page": w.append(t)})
    df = pd.DataFrame(rows)
    return df.assign(store=str(d / f"{name}.tiff"), tile_px=PX, tile_um=64.0, mpp=2.0, kept=True, partition="train")


def gan_opts(seed: int, kimg: float, snap: float, **kw) -> dict:
    """The demo's class-run settings at 32 px."""
    o = dict(resolution=PX, conditioning="class", kimg=kimg, batch=8, z_dim=64, w_dim=128, mapping_layers=2,
             channel_base=1024, channel_max=64, lr_g=0.002, lr_d=0.002, r1_gamma=0.2, ema_kimg=1, augment="ada",
             snap_kimg=snap, tick_kimg=snap, device="cpu", seed=seed, tensorboard=False, grid_per_class=4)
    o.update(kw)
    return validate({"gan": o})["gan"]


@torch.no_grad()
def concordance(net_path, ref, classes, n=100) -> float:
    """Mean over classes of the share of n generated tiles the reference classifier assigns to
    their intended class."""
    net = load_generator(net_path)
    shares = []
    for c in classes:
        onehot = torch.from_numpy(net.spec.encode(pd.DataFrame([{"label": c}] * n)))
        z = torch.randn(n, net.z_dim, generator=torch.Generator().manual_seed(7))
        img = net.G(z, onehot, noise_mode="const")
        tiles = (img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8).numpy()
        prob = predict(ref, tiles)
        shares.append(float((prob.argmax(1) == classes.index(c)).mean()))
    return float(np.mean(shares))


def curve(run_dir: Path, ref, classes) -> list[dict]:
    """kimg, FID (from metrics.jsonl) and concordance of every snapshot."""
    return [{"kimg": r["kimg"], "fid": r["fid"],
             "concordance": concordance(run_dir / SNAPSHOT_DIR / r["snapshot"], ref, classes)}
            for r in read_series(run_dir)]


def first_reaching(points: list[dict], level: float):
    return next((p["kimg"] for p in points if p["concordance"] >= level), None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--pre-kimg", type=float, default=8.0)
    ap.add_argument("--kimg", type=float, default=4.0)
    ap.add_argument("--snap", type=float, default=0.5)
    ap.add_argument("--out", default="benchmarks/out/finetune")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    a_classes = {"tumor": ("tumor", 1.0), "normal": ("normal", 1.0)}
    b_classes = {"tumor": ("tumor", 1.0), "normal": ("normal", 1.0), "sparse": ("tumor", 0.33)}
    A = cohort(out, "A", a_classes, 8, 128, 0)
    B = cohort(out, "B", b_classes, 4, 64, 1)
    copts = validate({"classify": {"arch": "shufflenet_v2_x0_5", "steps": 300, "batch": 32}})["classify"]
    ref, classes, _ = train_reference(B, copts)
    save_reference(ref, classes, copts, None, out / "reference_B.pt")
    files = {"reference": str(out / "reference_B.pt")}
    real = concordance_real(B, ref, classes)
    print(f"cohort A: {len(A)} tiles, {A['patient_id'].nunique()} patients, classes {sorted(a_classes)}; cohort B: "
          f"{len(B)} tiles, {B['patient_id'].nunique()} patients, classes {classes}; reference classifier on B's "
          f"real tiles: {real:.3f} balanced accuracy (its own training tiles)")
    results = []
    for seed in a.seeds:
        t = time.time()
        pre = train(A, out / f"A-seed{seed}", gan_opts(seed, a.pre_kimg, a.pre_kimg), progress=False)
        t_pre = time.time() - t
        m = dict(metrics=["fid"], metrics_samples=600)
        runs = {}
        for name, kw in (("scratch", {}), ("finetune", {"finetune_from": str(pre)})):
            t = time.time()
            d = out / f"B-{name}-seed{seed}"
            train(B, d, gan_opts(seed, a.kimg, a.snap, **m, **kw), progress=False, files=files)
            runs[name] = {"points": curve(d, ref, classes), "sec": time.time() - t}
        row = {"seed": seed, "pretrain_sec": t_pre}
        for name, r in runs.items():
            last = r["points"][-1]
            row[name] = {"fid": last["fid"], "concordance": last["concordance"],
                         "kimg_to_0.9": first_reaching(r["points"], 0.9), "sec": r["sec"], "points": r["points"]}
        results.append(row)
        print(json.dumps({k: (v if not isinstance(v, dict) else {kk: vv for kk, vv in v.items() if kk != "points"})
                          for k, v in row.items()}), flush=True)
    (out / "finetune.json").write_text(json.dumps(results, indent=1))
    print(f"\n| seed | run | domain-FID at {a.kimg:g} kimg | concordance at {a.kimg:g} kimg | kimg to concordance 0.9 |")
    print("| --- | --- | --- | --- | --- |")
    for row in results:
        for name in ("scratch", "finetune"):
            r = row[name]
            reach = f"{r['kimg_to_0.9']:g}" if r["kimg_to_0.9"] is not None else f"not within {a.kimg:g}"
            print(f"| {row['seed']} | {name} | {r['fid']:.2f} | {r['concordance']:.3f} | {reach} |")
    fid_ratio = [row["finetune"]["fid"] / row["scratch"]["fid"] for row in results]
    print(f"\nFID fine-tuned / from scratch at {a.kimg:g} kimg: "
          f"{', '.join(f'{x:.2f}' for x in fid_ratio)} (mean {np.mean(fid_ratio):.2f})")
    reach = [(row["scratch"]["kimg_to_0.9"], row["finetune"]["kimg_to_0.9"]) for row in results]
    both = [(s, f) for s, f in reach if s is not None and f is not None]
    if both:
        print(f"kimg to concordance 0.9, from scratch / fine-tuned: "
              f"{', '.join(f'{s:g}/{f:g}' for s, f in both)} (mean ratio {np.mean([s / f for s, f in both]):.2f})")
    print(f"seeds where only one reached 0.9: {[(row['seed'], s, f) for row, (s, f) in zip(results, reach) if (s is None) != (f is None)]}")


def concordance_real(index, ref, classes) -> float:
    from histosynth.slides.store import load_tiles

    prob = predict(ref, load_tiles(index))
    y = index["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    return float(np.mean([(prob.argmax(1)[y == i] == i).mean() for i in range(len(classes))]))


if __name__ == "__main__":
    main()
