"""Cost of the discriminator augmentation per batch: ADA's full bgc pipeline (+ cutout) at
several p against DiffAugment's colour/translation/cutout (the baseline), same process.

  python benchmarks/augment.py [--px 256 --batch 32]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from histosynth.gan.augment import ada_augment, augment  # noqa: E402


def timed(fn, x, reps):
    fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn(x)
    if x.is_cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    a = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(a.batch, 3, a.px, a.px, device=dev) * 2 - 1
    base = timed(lambda t: augment(t, 1.0, geometric=False), x, a.reps)
    print(f"device {dev}, batch {a.batch} x {a.px} px")
    print("| pipeline | ms per batch | ratio to DiffAugment |")
    print("| --- | --- | --- |")
    print(f"| DiffAugment (colour, translation, cutout; p = 1) | {base * 1e3:.2f} | 1.00 |")
    for p in (0.1, 0.5, 1.0):
        t = timed(lambda b, p=p: ada_augment(b, p), x, a.reps)
        print(f"| ADA bgc + cutout, p = {p} | {t * 1e3:.2f} | {t / base:.2f} |")


if __name__ == "__main__":
    main()
