"""Cost of the copy audit's statistics at a real study's size: 10,000 generated tiles (in the 8
dihedral views) against 50,000 training tiles, with 10,000 held-out tiles (8 views) as the null,
in a 512-dimensional feature space (the domain extractor's; UNI has 1024). Baseline in the same
process: the evaluate stage's metrics (FID, its floor, KID, precision/recall) on 10,000 tiles a
side, which every run computes already.

Feature extraction is not in either figure: the audit extracts 8 views of the generated and the
held-out tiles, 16x the forward passes evaluate makes for the generated tiles (printed below).

  python benchmarks/copy_audit.py [--train 50000 --generated 10000 --heldout 10000 --dim 512 --views 8]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.evaluate.copies import audit_features  # noqa: E402
from histosynth.evaluate.run import evaluate_features  # noqa: E402


def features(rng, n, dim, centres, spread=0.3):
    """Clustered features (tissue types), with a large common part as a CNN's ReLU features have."""
    k = rng.integers(0, len(centres), n)
    return 5.0 + centres[k] + spread * rng.normal(size=(n, dim)), k


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=50000)
    ap.add_argument("--generated", type=int, default=10000)
    ap.add_argument("--heldout", type=int, default=10000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, a.dim))
    train, kt = features(rng, a.train, a.dim, centres)
    gen_views = [features(rng, a.generated, a.dim, centres)[0] for _ in range(a.views)]
    held_views = [features(rng, a.heldout, a.dim, centres)[0] for _ in range(a.views)]
    labels = np.where(rng.random(a.generated) < 0.5, "normal", "tumor")
    print(f"{a.generated} generated x {a.views} views and {a.heldout} held-out x {a.views} views against "
          f"{a.train} training tiles, {a.dim}-d features, torch threads {torch.get_num_threads()}")

    real = pd.DataFrame({"label": np.where(kt % 2, "tumor", "normal"), "patient_id": [f"p{i % 40}" for i in range(a.train)]})
    fake = pd.DataFrame({"label": labels})
    opts = {"seed": 0, "min_samples": 2, "allow_small": True, "max_samples": a.generated, "kid_subsets": 100,
            "kid_subset_size": 1000, "pr_k": 3, "pr_max_samples": 10000}
    t = time.perf_counter()
    evaluate_features(real, train, fake, gen_views[0], opts, "bench")
    base = time.perf_counter() - t
    print(f"evaluate's metrics (baseline):          {base:8.1f} s")

    t = time.perf_counter()
    res, _ = audit_features(train, gen_views, held_views, labels, np.where(rng.random(a.heldout) < 0.5, "normal", "tumor"))
    audit = time.perf_counter() - t
    print(f"copy audit (NN search, C_T, authenticity): {audit:6.1f} s  = {audit / base:.2f}x the baseline")
    print(f"forward passes for features: audit {a.views * (a.generated + a.heldout)}, evaluate {a.generated} "
          f"(the training tiles' features are cached and shared)")
    print(f"check: share below the null's 1st percentile {res['nearest_neighbour']['p1']['share']:.3f} (expected "
          f"0.01 for these exchangeable sets), C_T {res['data_copying']['c_t']:.2f}")


if __name__ == "__main__":
    main()
