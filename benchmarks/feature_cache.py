"""What the per-store feature cache saves: features of a set of tile stores computed cold
(nothing cached), then warm (all cached), then with a quarter of the stores rewritten, in one
process, with the evaluate stage's own code (histosynth.evaluate.features.extract, the
domain extractor: a reference classifier's penultimate layer).

Writes `--stores` stores of `--tiles` random-texture tiles each (64 px by default), trains
nothing (the classifier has random weights: the cost of a forward pass does not depend on
them), and prints seconds per pass and the ratio to the cold pass.

  python benchmarks/feature_cache.py                     # 8 stores x 500 tiles, 64 px
  python benchmarks/feature_cache.py --px 256 --arch resnet18
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stores", type=int, default=8)
    ap.add_argument("--tiles", type=int, default=500)
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--arch", default="shufflenet_v2_x0_5")
    a = ap.parse_args()

    from histosynth.classify.model import build
    from histosynth.classify.study import save_reference
    from histosynth.config import validate
    from histosynth.evaluate.features import extract
    from histosynth.slides.store import TileStoreWriter

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        rows = []
        for s in range(a.stores):
            store = d / f"s{s}.tiff"
            with TileStoreWriter(store) as w:
                for _ in range(a.tiles):
                    rows.append({"store": str(store), "page": w.append(rng.integers(0, 255, (a.px, a.px, 3), np.uint8))})
        index = pd.DataFrame(rows)
        ref = d / "reference.pt"
        save_reference(build(a.arch, 2), ["a", "b"], {"arch": a.arch}, {}, ref)
        opts = validate({"evaluate": {}})["evaluate"]
        cache = d / "cache"

        def timed(cache_dir):
            t = time.perf_counter()
            (f,) = extract([index], "domain", opts, str(ref), "cpu", cache_dir)
            return time.perf_counter() - t, f

        t_none, f0 = timed(None)
        t_cold, f1 = timed(cache)
        t_warm, f2 = timed(cache)
        for s in range(0, a.stores, 4):  # rewrite a quarter of the stores
            p = d / f"s{s}.tiff"
            os.utime(p, ns=(p.stat().st_atime_ns, p.stat().st_mtime_ns + 10**9))
        t_part, f3 = timed(cache)
        assert np.allclose(f0, f1) and np.allclose(f1, f2) and np.allclose(f2, f3)
    n = len(index)
    print(f"{n} tiles of {a.px} px in {a.stores} stores, extractor {a.arch} (domain), CPU threads {os.cpu_count()}")
    print(f"{'pass':38s} {'seconds':>8s} {'tiles/s':>9s} {'ratio':>6s}")
    for name, t in (("no cache", t_none), ("cold cache (compute + write)", t_cold), ("warm cache", t_warm),
                    ("a quarter of the stores rewritten", t_part)):
        print(f"{name:38s} {t:8.2f} {n / t:9.0f} {t_none / t:6.1f}")


if __name__ == "__main__":
    main()
