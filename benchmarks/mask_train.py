"""Training throughput of the label-map-conditioned runs (histosynth.gan.training.loop.train_mask):
SPADE (with and without the style encoder) and pix2pix, on toy tiles painted from random
layouts, one after another in the same process; each reported as a ratio to the first
(SPADE, the default), because these machines are noisy.

  python benchmarks/mask_train.py                 # the demo's 64 px settings, 0.4 kimg each (CPU)
  python benchmarks/mask_train.py --px 256 --kimg 4 --channel-base 16384 --channel-max 512 --batch 32   # GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from toydata import toy_mask_index  # noqa: E402

from histosynth.config import validate  # noqa: E402
from histosynth.gan.training.loop import train_mask  # noqa: E402
from histosynth.masks.labels import AUTO_LABELS  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--px", type=int, default=64)
    ap.add_argument("--kimg", type=float, default=0.4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channel-base", type=int, default=2048)
    ap.add_argument("--channel-max", type=int, default=64)
    ap.add_argument("--precision", default="bf16")
    a = ap.parse_args()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; {a.px} px, batch {a.batch}, {a.kimg} kimg per setting")
    settings = [("spade", False), ("spade", True), ("pix2pix", False)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        idx, _, _ = toy_mask_index(tmp, 512, a.px)
        idx["partition"] = "train"
        for method, enc in settings:
            cfg = validate({"gan": {"resolution": a.px, "kimg": a.kimg, "batch": a.batch, "z_dim": 32,
                                    "tick_kimg": a.kimg / 5, "snap_kimg": a.kimg, "precision": a.precision, "gpus": 0},
                            "masks": {"method": method, "style_encoder": enc, "channel_base": a.channel_base,
                                      "channel_max": a.channel_max, "spade_hidden": 32, "ndf": 32,
                                      "ngf": max(16, a.channel_max // 2), "labels": AUTO_LABELS}})
            run = tmp / f"{method}-{enc}"
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            train_mask(idx, run, cfg["gan"], cfg["masks"], progress=False)
            ticks = [json.loads(x) for x in open(run / "stats.jsonl")][1:]
            ips = statistics.median(t["img_per_sec"] for t in ticks)
            mem = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
            out.append((f"{method}{' + style encoder' if enc else ''}", ips, mem))
    base = out[0][1]
    print("| method | img/s | kimg/h | ratio to SPADE | peak GPU memory |")
    print("| --- | --- | --- | --- | --- |")
    for name, ips, mem in out:
        print(f"| {name} | {ips:.1f} | {ips * 3.6:.0f} | {ips / base:.2f} | {f'{mem:.1f} GiB' if mem else '-'} |")


if __name__ == "__main__":
    main()
