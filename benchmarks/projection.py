"""Projection of tiles into a trained class-conditional network: known answers, the effect of the
number of steps on quality, the time per tile, and the counterfactuals' effect on the classifier.

Needs a finished demo run (or any run with a class network, a reference classifier and a split):

  snakemake --cores all                     # the demo, in this checkout
  python benchmarks/projection.py           # reads results/ here
  python benchmarks/projection.py --workdir benchmarks/out/demo_quality/seed0 --tiles 16

1. **Known answer**: `--known` tiles generated from known w's of each class with the constant
   noise, projected back (one w, constant noise): PSNR and SSIM against the generated tile.
2. **Real test tiles**: `--tiles` tiles of held-out test patients, both classes, projected with
   the rule's defaults (one w, optimised noise, perceptual + pixel loss) at each of `--steps`:
   PSNR, SSIM and perceptual distance of the reconstruction against those of the class-mean
   image, seconds per tile, and, at the rule's default steps, the reference classifier's
   probability of the other class before and after the counterfactual (all layers and each group).
Timing is this process on this machine's CPU threads; nothing is timed in the test suite.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=".", help="a finished run's folder (results/ inside)")
    ap.add_argument("--run", default="stylegan2-class")
    ap.add_argument("--known", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=16)
    ap.add_argument("--steps", type=int, nargs="+", default=[50, 100, 300, 1000])
    a = ap.parse_args()
    os.chdir(a.workdir)

    from histosynth.config import validate
    from histosynth.generate.project import project, quality, run_projection, to_uint8
    from histosynth.generate.sample import stylegan2_network
    from histosynth.slides.store import read_index

    net = Path(f"results/gan/{a.run}/network.pt")
    G, spec, _ = stylegan2_network(net)
    print(f"network {a.workdir}/{net}: {G.img_resolution} px, {G.num_ws} w inputs, classes "
          f"{spec.categories[spec.columns[0]]}; {torch.get_num_threads()} CPU threads")

    print(f"\n1. known answer: {a.known} generated tiles (known w, constant noise) projected back, one w, const noise")
    rng = torch.Generator().manual_seed(123)
    classes = spec.categories[spec.columns[0]]
    for steps in a.steps:
        psnr, ssim, t0 = [], [], time.perf_counter()
        for k in range(a.known):
            c = torch.eye(len(classes))[[k % len(classes)]]
            with torch.no_grad():
                target = G.synthesis(G.mapping(torch.randn(1, G.z_dim, generator=rng), c), noise_mode="const")[0]
            _, recon, _, _ = project(G, target.clamp(-1, 1), c, steps=steps, noise="const", seed=k)
            q = quality(to_uint8(target)[0], to_uint8(recon)[0])
            psnr.append(q["psnr"])
            ssim.append(q["ssim"])
        dt = (time.perf_counter() - t0) / a.known
        print(f"   {steps:5d} steps: PSNR {np.mean(psnr):.1f} dB (min {np.min(psnr):.1f}), SSIM {np.mean(ssim):.3f}, "
              f"{dt:.2f} s per tile")

    tiles = read_index("results/split/tiles.parquet")
    ref = "results/evaluate/reference_classifier.pt"
    print(f"\n2. {a.tiles} real test tiles, the rule's defaults (one w, optimised noise, perceptual + pixel loss)")
    print("   | steps | PSNR (dB) | SSIM | perceptual distance | class-mean image: PSNR, SSIM, perceptual | "
          "closer than the mean image | s per tile |")
    default = validate({"generate": {"project": {"tiles": a.tiles}}})["generate"]["project"]
    cf = None
    for steps in a.steps:
        o = dict(default, steps=steps)
        s, _, _ = run_projection(net, tiles, ref, o, progress=False)
        r, b = s["reconstruction"], s["mean_image"]
        print(f"   | {steps} | {r['psnr']:.2f} | {r['ssim']:.3f} | {r['feature_distance']:.3f} | {b['psnr']:.2f}, "
              f"{b['ssim']:.3f}, {b['feature_distance']:.3f} | {s['better_than_mean_image']:.0%} | "
              f"{s['seconds_per_tile']:.2f} |")
        if steps == default["steps"]:
            cf = s["counterfactual"]
    if cf is not None:
        print(f"\n3. counterfactuals at {default['steps']} steps: the reference classifier's P(other class)")
        for g, v in cf.items():
            print(f"   {g:7s}: {v['p_target_start']:.3f} -> {v['p_target_end']:.3f}; moved towards it in "
                  f"{v['moved_towards_target']:.0%} of tiles, crossed 0.5 in {v['crossed']:.0%}"
                  + (f" (mean point {v['crossing_mean']:.2f})" if v["crossing_mean"] is not None else ""))


if __name__ == "__main__":
    main()
