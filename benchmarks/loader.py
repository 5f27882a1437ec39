"""Training tiles delivered per second when a cohort does not fit in memory: batches read from
the tile stores (deflate TIFF pages) by the training kind's batch path, against the preloaded
path (tiles held in memory), with 1, 2 and all decode threads, without and with read-ahead,
and against a target pace (a GPU at 256 px: 300 img/s).

Each configuration runs the StyleGAN2 kind's own `next_batch` (the draws, the reads, flips,
the conversion to floats) for a number of steps. "Alone" is the loader's own rate (no training
step); "with a step" simulates a training step of batch / target seconds on the main thread
(sleep: it holds no CPU and no GIL, like a step waiting on the GPU), so the delivered rate
shows whether reading keeps the step fed. The tiles are real histology-like textures (the demo
slide generator's) written as 256 px store pages.

  python benchmarks/loader.py [--tiles 2048 --batch 32 --steps 40 --target 300]
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
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.config import validate  # noqa: E402
from histosynth.gan.training.kinds import StyleGAN2Kind  # noqa: E402
from histosynth.slides.store import TileStoreWriter  # noqa: E402


def write_store(d: Path, n: int, px: int) -> pd.DataFrame:
    """n tiles of px cut from demo slides' tissue (so they compress as tissue does)."""
    from histosynth.slides.synthetic import SlideSpec, draw_tissue

    rng = np.random.default_rng(0)
    tiles = []
    while len(tiles) < n:
        img = draw_tissue(SlideSpec("s", "p", "tumor" if len(tiles) % 128 else "normal", size_px=2048,
                                    seed=len(tiles)))
        for _ in range(64):
            y, x = rng.integers(0, 2048 - px, 2)
            tiles.append(img[y:y + px, x:x + px])
    with TileStoreWriter(d / "tiles.tiff") as w:
        pages = [w.append(t) for t in tiles[:n]]
    return pd.DataFrame({"slide_id": "s", "patient_id": [f"p{i % 16}" for i in range(n)],
                         "label": ["tumor" if i % 2 else "normal" for i in range(n)], "page": pages,
                         "store": str(d / "tiles.tiff"), "tile_px": px, "tile_um": 256.0, "mpp": 1.0, "kept": True,
                         "partition": "train"})


def rate(index, px, batch, steps, threads, preload, read_ahead, step_sec) -> float:
    opts = validate({"gan": {"resolution": px, "device": "cpu", "batch": batch, "conditioning": "class",
                             "preload_max_mb": 1e6 if preload else 0, "read_ahead": read_ahead}})["gan"]
    kind = StyleGAN2Kind(index, opts, torch.device("cpu"), threads)
    gen = torch.Generator().manual_seed(0)
    kind.next_batch(batch, gen)  # warm: stores opened, the read-ahead queue filled
    t = time.perf_counter()
    for _ in range(steps):
        kind.next_batch(batch, gen)
        if step_sec:
            time.sleep(step_sec)
    return steps * batch / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiles", type=int, default=2048)
    ap.add_argument("--px", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--target", type=float, default=300.0, help="img/s a GPU trains at (stylegan2 at 256 px)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        index = write_store(Path(d), a.tiles, a.px)
        size = (Path(d) / "tiles.tiff").stat().st_size
        print(f"{a.tiles} tiles of {a.px} px in one store ({size / 2**20:.0f} MB, {size / a.tiles / 1024:.0f} KB a tile; "
              f"written in {time.perf_counter() - t0:.0f} s); batch {a.batch}, {a.steps} steps, {cores} cores; "
              f"target {a.target:g} img/s (a step of {a.batch / a.target * 1000:.0f} ms)")
        step = a.batch / a.target
        pre = rate(index, a.px, a.batch, a.steps, 1, True, 0, 0)
        pre_step = rate(index, a.px, a.batch, a.steps, 1, True, 0, step)
        print(f"| loader | threads | alone, img/s | vs preloaded | with a {step * 1000:.0f} ms step, img/s | "
              f"share of target |")
        print("| --- | --- | --- | --- | --- | --- |")
        print(f"| preloaded (baseline) | - | {pre:.0f} | 1.00x | {pre_step:.0f} | {pre_step / a.target:.0%} |")
        for threads in sorted({1, 2, cores}):
            for ahead in (0, 4):
                alone = rate(index, a.px, a.batch, a.steps, threads, False, ahead, 0)
                fed = rate(index, a.px, a.batch, a.steps, threads, False, ahead, step)
                name = f"stores, read-ahead {ahead}" if ahead else "stores, read when needed"
                print(f"| {name} | {threads} | {alone:.0f} | {alone / pre:.2f}x | {fed:.0f} | {fed / a.target:.0%} |")


if __name__ == "__main__":
    main()
