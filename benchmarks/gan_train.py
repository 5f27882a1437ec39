"""GAN training throughput of the real training loop (histosynth.gan.training.loop.train).

Trains on a tile store of procedurally drawn H&E-like tiles for a few kimg per setting and
reports images/s and kimg/h from stats.jsonl (median over ticks after the first, which holds
warm-up and compilation). Settings run one after another in the same process, and each is
reported as a ratio to the first (the baseline), because these machines are noisy.

A setting is precision + options joined by '+': `fp32` or `bf16`, then any of `compile`
(torch.compile of G and D), `ada` (stylegan2-ada's pipeline held at p = --ada-p, so the
geometric warp and R1 through it run at every R1 step) or `diffaug`; no augmentation otherwise;
`nopl` and `nomix` turn off path-length regularisation and style mixing (stylegan2-ada's
defaults, on otherwise: the cost of each is the ratio of a setting with and without it).
Two levers exist only here, to measure their gain: `nofused` trains with Adam's per-parameter
loop instead of the fused CUDA kernel the training uses on a GPU, and `cudagraphs` compiles G
and D with `mode="reduce-overhead"` (CUDA graphs) instead of the default mode.

  python benchmarks/gan_train.py          # GPU: paper256, bf16 | bf16+ada | bf16+compile | bf16+compile+ada
                                          #      | the last +nofused | the last +cudagraphs
                                          # CPU: demo64, fp32 | fp32+ada
  python benchmarks/gan_train.py --preset paper256 --settings bf16 bf16+compile+ada --ada-p 0.5 --kimg 4
  python benchmarks/gan_train.py --settings bf16+compile+ada bf16+compile+ada+nofused bf16+compile+ada+cudagraphs
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import histosynth.gan.training.kinds as kinds  # noqa: E402
import histosynth.gan.training.loop as loop  # noqa: E402
from histosynth.gan.training.loop import train  # noqa: E402
from histosynth.slides.store import TileStoreWriter  # noqa: E402

PRESETS = {
    # StyleGAN2 "paper256"-like widths: the configuration real studies use at 256 px.
    "paper256": dict(resolution=256, channel_base=16384, channel_max=512, z_dim=512, w_dim=512, mapping_layers=8, batch=64),
    # the CPU demo's network (config/config.yaml)
    "demo64": dict(resolution=64, channel_base=1024, channel_max=64, z_dim=64, w_dim=128, mapping_layers=2, batch=16),
}


def schema_defaults():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    return {k: v.get("default") for k, v in schema["properties"]["gan"]["properties"].items()}


def make_tiles(tmp: Path, n: int, px: int) -> pd.DataFrame:
    from histosynth.slides.synthetic import SlideSpec, draw_tissue

    rows = []
    store = tmp / "bench.tiff"
    with TileStoreWriter(store) as w:
        for label in ("tumor", "normal"):
            img = draw_tissue(SlideSpec("b", "p", label, size_px=max(1024, px * 8), seed=1 if label == "tumor" else 2))
            rng = np.random.default_rng(0)
            for _ in range(n // 2):
                y, x = rng.integers(0, img.shape[0] - px, 2)
                rows.append(dict(page=w.append(img[y:y + px, x:x + px]), label=label))
    df = pd.DataFrame(rows)
    df["store"], df["tile_px"], df["patient_id"], df["partition"], df["kept"] = str(store), px, "p", "train", True
    return df


def parse_setting(name: str, ada_p: float) -> dict:
    parts = name.split("+")
    levers = {"compile", "ada", "diffaug", "nopl", "nomix", "nofused", "cudagraphs"}
    if parts[0] not in ("fp32", "bf16") or not set(parts[1:]) <= levers:
        raise SystemExit(f"unknown setting {name!r}: fp32|bf16 followed by any of " + ", ".join(f"+{x}" for x in levers))
    if "cudagraphs" in parts and "compile" not in parts:
        raise SystemExit(f"setting {name!r}: +cudagraphs is a mode of +compile")
    augment = "ada" if "ada" in parts else "diffaugment" if "diffaug" in parts else "none"
    off = {**({"pl_weight": 0.0} if "nopl" in parts else {}), **({"style_mixing": 0.0} if "nomix" in parts else {})}
    return dict(precision=parts[0], compile="compile" in parts, augment=augment,
                ada_p=ada_p if augment == "ada" else None, **off), {"nofused": "nofused" in parts,
                                                                   "cudagraphs": "cudagraphs" in parts}


# What the training itself uses, restored between settings.
FUSED_ADAM, COMPILE_OPTIONS = kinds.fused_adam, dict(loop.COMPILE_OPTIONS)


def set_levers(nofused: bool, cudagraphs: bool):
    """The benchmark-only levers: plain Adam instead of the fused kernel, CUDA graphs."""
    kinds.fused_adam = (lambda device: {}) if nofused else FUSED_ADAM
    loop.COMPILE_OPTIONS = {"mode": "reduce-overhead"} if cudagraphs else dict(COMPILE_OPTIONS)


# On a GPU, by default: what ADA costs, what compile gains with and without it, and the gain of
# the fused optimizer and of CUDA graphs at the setting the training uses.
GPU_SETTINGS = ["bf16", "bf16+ada", "bf16+compile", "bf16+compile+ada", "bf16+compile+ada+nofused",
                "bf16+compile+ada+cudagraphs"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None)
    ap.add_argument("--settings", nargs="+", default=None, help="e.g. bf16 bf16+ada bf16+compile+ada (first = baseline)")
    ap.add_argument("--ada-p", type=float, default=0.5, help="ADA probability held fixed in 'ada' settings")
    ap.add_argument("--kimg", type=float, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--json", help="write the results here as JSON")
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    preset = a.preset or ("paper256" if cuda else "demo64")
    names = a.settings or (GPU_SETTINGS if cuda else ["fp32", "fp32+ada"])
    kimg = a.kimg or (4.0 if cuda else 0.4)
    p = dict(PRESETS[preset])
    if a.batch:
        p["batch"] = a.batch
    settings = [parse_setting(n, a.ada_p) for n in names]
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device}; preset {preset}: {p}; {kimg} kimg per setting")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tiles = make_tiles(tmp, 512, p["resolution"])
        for name, (st, levers) in zip(names, settings):
            set_levers(**levers)
            opts = schema_defaults()
            opts.update(p, kimg=kimg, tick_kimg=kimg / 8, snap_kimg=kimg, device="cuda" if cuda else "cpu",
                        grid_per_class=2, tensorboard=False, **st)
            out = tmp / f"run-{name.replace('+', '-')}"
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            t0 = time.time()
            train(tiles, out, opts, progress=False, threads=4)
            wall = time.time() - t0
            ticks = [json.loads(x) for x in open(out / "stats.jsonl")][1:]
            ips = statistics.median(t["img_per_sec"] for t in ticks)
            mem = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            results.append(dict(setting=name, **st, **levers, img_per_sec=ips, kimg_per_hour=ips * 3.6, wall_s=wall,
                                peak_gpu_mem_gib=mem))
    base = results[0]["img_per_sec"]
    print(f"{'setting':<30}{'img/s':>10}{'kimg/h':>10}{'ratio':>8}{'GPU GiB':>9}")
    for r in results:
        name = r["setting"]
        mem = f"{r['peak_gpu_mem_gib']:.1f}" if r["peak_gpu_mem_gib"] is not None else "-"
        print(f"{name:<30}{r['img_per_sec']:>10.1f}{r['kimg_per_hour']:>10.1f}{r['img_per_sec'] / base:>8.2f}{mem:>9}")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": device, "preset": preset, "options": p, "results": results}, indent=2))


if __name__ == "__main__":
    main()
