"""Cost of the Fréchet distance at the extractors' dimensions: histosynth's two symmetric
eigendecompositions against the general matrix square root (scipy.linalg.sqrtm of S1 S2, as
torch-fidelity and pytorch-fid compute it; the baseline), same covariances, same process.

  python benchmarks/fid.py [--n 5000 --dims 1024 2048]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import linalg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.evaluate.metrics import frechet_distance  # noqa: E402


def sqrtm_fid(m1, s1, m2, s2):
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--dims", type=int, nargs="+", default=[1024, 2048])
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    for d in a.dims:
        x, y = rng.normal(size=(a.n, d)), rng.normal(0.1, 1.1, size=(a.n, d))
        m1, s1, m2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
        t = time.perf_counter()
        base = sqrtm_fid(m1, s1, m2, s2)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        ours = frechet_distance(m1, s1, m2, s2)
        to = time.perf_counter() - t
        print(f"{d:5d}-d, n={a.n}: sqrtm {tb:6.2f} s, eigh {to:6.2f} s, {tb / to:4.1f}x faster; "
              f"FID {ours:.6f} vs {base:.6f} (relative difference {abs(ours - base) / base:.1e})")


if __name__ == "__main__":
    main()
