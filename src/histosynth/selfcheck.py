"""``histosynth selfcheck``: the whole GPU path, checked in minutes on the machine at hand.

On a CUDA machine every run kind trains a few hundred steps with what is special about the GPU
switched on: ADA held at p = 0.5 (so the geometric warp runs from the first step, and R1 and
the path-length penalty are taken through it), bf16 autocast and ``torch.compile``. Then the
class run's generator generates, the reference classifier trains, FID/KID/precision/recall are
computed with it, and the augmentation study trains its arms, all on the GPU. On a CPU the same
items run at a smaller size (the test suite runs that version).

Each item prints PASS or FAIL with its speed; one failure does not stop the others (items that
need a failed item's output are SKIPPED). The exit status is 1 when anything failed.

The tiles are procedurally drawn H&E-like tissue (two classes, 8 patients each, split by
patient), written to a real tile store under ``--outdir`` (default: a temporary folder).
"""
from __future__ import annotations

import json
import logging
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

log = logging.getLogger(__name__)

SIZES = {  # per device: tile size, network widths, batch and steps of each training item
    "cuda": dict(resolution=128, channel_base=16384, channel_max=256, z_dim=256, w_dim=256, mapping_layers=4,
                 batch=32, steps=200, classify_steps=200, tiles_per_patient=96),
    "cpu": dict(resolution=32, channel_base=512, channel_max=32, z_dim=32, w_dim=32, mapping_layers=2,
                batch=8, steps=12, classify_steps=10, tiles_per_patient=12),
}


@dataclass
class Item:
    name: str
    status: str = "SKIPPED"
    seconds: float = 0.0
    speed: float | None = None
    unit: str = ""
    detail: str = ""
    error: str = ""
    extra: dict = field(default_factory=dict)


def _cohort(root: Path, size: dict, seed: int = 0) -> pd.DataFrame:
    """Tiles of 16 patients (8 per class; 6 train, 2 test each), with an extra categorical
    attribute ('site', by patient), a 4-d expression embedding per patient and label maps."""
    from histosynth.masks.build import write_map_store
    from histosynth.masks.colour import ColourSegmenter
    from histosynth.masks.labels import AUTO_LABELS, LabelSet
    from histosynth.slides.store import TileStoreWriter
    from histosynth.slides.synthetic import SlideSpec, draw_tissue

    px, per = size["resolution"], size["tiles_per_patient"]
    mpp = 2.0 if px <= 64 else 1.0
    rng = np.random.default_rng(seed)
    rows, tiles = [], []
    store = root / "tiles.tiff"
    with TileStoreWriter(store) as w:
        for ci, label in enumerate(("tumor", "normal")):
            for k in range(8):
                pid = f"{label}-{k}"
                img = draw_tissue(SlideSpec(pid, pid, label, size_px=max(8 * px, 512), mpp=mpp, seed=100 * ci + k))
                grey = img.mean(2)
                got = 0
                for _ in range(per * 20):
                    y, x = rng.integers(0, img.shape[0] - px, 2)
                    t = img[y:y + px, x:x + px]
                    if (grey[y:y + px, x:x + px] < 220).mean() < 0.5:  # mostly background
                        continue
                    tiles.append(t)
                    rows.append(dict(slide_id=pid, patient_id=pid, label=label, site="A" if k % 2 else "B",
                                     page=w.append(t), partition="test" if k >= 6 else "train"))
                    got += 1
                    if got == per:
                        break
    df = pd.DataFrame(rows)
    df["store"], df["tile_px"], df["tile_um"], df["mpp"], df["kept"] = str(store), px, px * mpp, mpp, True
    emb = {p: rng.normal(size=4) + (1.5 if p.startswith("tumor") else -1.5) for p in df["patient_id"].unique()}
    for j in range(4):
        df[f"z_mu_{j}"] = [float(emb[p][j]) for p in df["patient_id"]]
        df[f"z_sd_{j}"] = 0.1
    df["expression_key"] = df["patient_id"]
    tiles = np.stack(tiles)
    seg = ColourSegmenter(0.25, median=3).fit(tiles[(df["partition"] == "train").to_numpy()])
    write_map_store(seg.segment(tiles), root / "tiles.labels.tiff", LabelSet.from_config(AUTO_LABELS))
    df["mask_store"], df["mask_page"] = str(root / "tiles.labels.tiff"), np.arange(len(df))
    return df


def _img_per_sec(run_dir: Path) -> float | None:
    ticks = [json.loads(x) for x in open(run_dir / "stats.jsonl")]
    later = ticks[1:] or ticks  # the first tick holds warm-up and compilation
    return statistics.median(t["img_per_sec"] for t in later) if later else None


def _check_stats(run_dir: Path, keys) -> str:
    """Every key logged in some tick (lazy penalties skip steps), and every logged value finite."""
    ticks = [json.loads(x) for x in open(run_dir / "stats.jsonl")]
    missing = [k for k in keys if all(t.get(k) is None for t in ticks)]
    bad = [(k, t[k]) for t in ticks for k in keys if t.get(k) is not None and not np.isfinite(t[k])]
    if missing or bad:
        raise AssertionError(f"{run_dir / 'stats.jsonl'}: never logged {missing}; non-finite {bad[:4]}")
    last = {k: next(t[k] for t in reversed(ticks) if t.get(k) is not None) for k in keys}
    return ", ".join(f"{k} {v:.3g}" for k, v in last.items())


def run_selfcheck(device: str = "auto", outdir=None, steps: int | None = None, resolution: int | None = None,
                  compile: bool = True, progress: bool = False) -> dict:
    """Run every item; returns {"device", "torch", "items": [...], "ok"}."""
    from histosynth.config import validate

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    if dev == "cuda" and not torch.cuda.is_available():
        from histosynth.utils import UserError

        raise UserError("selfcheck --device cuda: no CUDA GPU is visible (nvidia-smi; CUDA_VISIBLE_DEVICES)")
    size = dict(SIZES[dev])
    if steps:
        size["steps"] = steps
    if resolution:
        size["resolution"] = resolution
    tmp = None
    if outdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="histosynth-selfcheck-")
        outdir = tmp.name
    root = Path(outdir)
    root.mkdir(parents=True, exist_ok=True)
    for old in [*root.glob("gan-*"), root / "generated"]:  # a previous check's runs would be resumed, not trained
        shutil.rmtree(old, ignore_errors=True)
    size["per_class"] = 6 * size["tiles_per_patient"]  # the study's mixed arm needs one synthetic per real tile
    name = torch.cuda.get_device_name(0) if dev == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    report = {"device": name, "torch": torch.__version__, "bf16": dev == "cuda", "compile": bool(compile and dev == "cuda"),
              "size": size, "items": []}
    items: dict[str, Item] = {}

    def item(label, fn, needs=()):
        it = Item(label)
        items[label] = it
        report["items"].append(it)
        if any(items[n].status != "PASS" for n in needs):
            it.detail = "needs " + ", ".join(n for n in needs if items[n].status != "PASS")
            return
        t0 = time.time()
        try:
            fn(it)
            it.status = "PASS"
        except Exception as exc:  # every failure is reported, none stops the others
            it.status, it.error = "FAIL", f"{type(exc).__name__}: {exc}"
            it.extra["traceback"] = traceback.format_exc()
        if dev == "cuda":
            torch.cuda.synchronize()
        it.seconds = time.time() - t0
        log.info("selfcheck %-22s %s", label, it.status)

    t_all = time.time()
    cohort = {}
    item("tiles", lambda it: cohort.update(df=_cohort(root, size)))

    def gan_opts(**kw):
        o = {k: size[k] for k in ("resolution", "channel_base", "channel_max", "z_dim", "w_dim", "mapping_layers",
                                  "batch")}
        kimg = size["steps"] * size["batch"] / 1000
        o.update(kimg=kimg, snap_kimg=kimg, tick_kimg=kimg / 4, augment="ada", ada_p=0.5, r1_interval=4,
                 pl_weight=2.0, pl_interval=4, precision="bf16", compile=bool(compile), device=dev, grid_per_class=2,
                 tensorboard=False, ema_kimg=kimg / 4)
        o.update(kw)
        return validate({"gan": o})["gan"]

    def train_run(kind, **kw):
        def fn(it):
            from histosynth.gan.training.loop import train

            out = root / f"gan-{kind}"
            train(cohort["df"], out, gan_opts(**kw), progress=progress)
            it.speed, it.unit = _img_per_sec(out), "img/s"
            it.detail = _check_stats(out, ["loss_G", "loss_D", "r1", "pl"]) + ", ADA p 0.5"
        return fn

    item("train class", train_run("class", conditioning="class"), ["tiles"])
    item("train attributes", train_run("attributes", conditioning="attributes", condition_columns=["label", "site"]),
         ["tiles"])
    item("train expression", train_run("expression", conditioning="expression", expression_noise=0.5), ["tiles"])

    def mask_run(method):
        def fn(it):
            from histosynth.gan.training.loop import train_mask
            from histosynth.masks.labels import AUTO_LABELS

            out = root / f"gan-{method}"
            mopts = validate({"masks": {"method": method, "labels": AUTO_LABELS, "ngf": 16, "ndf": 16,
                                        "channel_base": size["channel_base"] // 4, "channel_max": size["channel_max"],
                                        "spade_hidden": 32}})["masks"]
            train_mask(cohort["df"], out, gan_opts(batch=max(4, size["batch"] // 2)), mopts, progress=progress)
            it.speed, it.unit = _img_per_sec(out), "img/s"
            it.detail = _check_stats(out, ["loss_G", "loss_D"])
        return fn

    item("train spade", mask_run("spade"), ["tiles"])
    item("train pix2pix", mask_run("pix2pix"), ["tiles"])

    generated = {}

    def gen(it):
        from histosynth.generate.sample import generate

        t0 = time.time()
        df = generate(root / "gan-class" / "network.pt", root / "generated", size["per_class"], batch=64, device=dev,
                      tile_meta={"tile_px": size["resolution"], "tile_um": float(cohort["df"]["tile_um"].iloc[0]),
                                 "mpp": float(cohort["df"]["mpp"].iloc[0])}, progress=progress)
        it.speed, it.unit = len(df) / (time.time() - t0), "tiles/s"
        if sorted(df["label"].unique()) != ["normal", "tumor"] or len(df) != 2 * size["per_class"]:
            raise AssertionError(f"expected {size['per_class']} tiles of each class, got {df['label'].value_counts()}")
        generated["df"] = df
        it.detail = f"{len(df)} tiles"

    item("generate", gen, ["train class"])

    copts = validate({"classify": {"steps": size["classify_steps"], "batch": 32, "seeds": [0], "bootstrap": 100,
                                   "synthetic_ratio": [1.0]}})["classify"]

    def reference(it):
        from histosynth.classify.study import save_reference, train_reference

        train_tiles = cohort["df"][cohort["df"]["partition"] == "train"]
        t0 = time.time()
        model, classes, _ = train_reference(cohort["df"], copts, dev)
        it.speed, it.unit = size["classify_steps"] * copts["batch"] / (time.time() - t0), "img/s"
        save_reference(model, classes, copts, None, root / "reference.pt")
        it.detail = f"{len(train_tiles)} training tiles, classes {classes}"

    item("reference classifier", reference, ["tiles"])

    def finetune(it):
        """The class network fine-tuned with FreezeD, its tiles read from the stores ahead of the
        step (pinned memory on a GPU), FID measured at each snapshot on the device."""
        from histosynth.gan.training.loop import train
        from histosynth.gan.training.snapshots import read_series

        out = root / "gan-finetune"
        kimg = size["steps"] * size["batch"] / 1000
        train(cohort["df"], out, gan_opts(finetune_from=str(root / "gan-class" / "network.pt"), freeze_d=1,
                                          preload_max_mb=0, read_ahead=2, metrics=["fid"], metrics_samples=64,
                                          snap_kimg=kimg / 2), progress=progress,
              files={"reference": str(root / "reference.pt")})
        series = read_series(out)
        if len(series) != 2 or not all(np.isfinite(r["fid"]) for r in series):
            raise AssertionError(f"expected two finite snapshot FIDs, got {series}")
        it.speed, it.unit = _img_per_sec(out), "img/s"
        it.detail = (_check_stats(out, ["loss_G", "loss_D"]) + f", FID {series[0]['fid']:.2f} -> "
                     f"{series[1]['fid']:.2f} ({np.mean([r['eval_share'] for r in series]):.0%} of training time)")

    item("fine-tune (read-ahead, metrics)", finetune, ["train class", "reference classifier"])

    def evaluate(it):
        from histosynth.evaluate.features import extract
        from histosynth.evaluate.run import evaluate_features

        eopts = validate({"evaluate": {"extractors": ["domain"], "allow_small": True, "kid_subset_size": 16,
                                       "kid_subsets": 10, "min_samples": 2}})["evaluate"]
        real = cohort["df"][cohort["df"]["partition"] == "train"].reset_index(drop=True)
        t0 = time.time()
        fr, ff = extract([real, generated["df"]], "domain", eopts, str(root / "reference.pt"), dev)
        m = evaluate_features(real, fr, generated["df"], ff, eopts, "domain")
        it.speed, it.unit = (len(real) + len(generated["df"])) / (time.time() - t0), "tiles/s"
        if not (np.isfinite(m["fid"]) and np.isfinite(m["fid_real_vs_real"])):
            raise AssertionError(f"non-finite FID: {m['fid']}, floor {m['fid_real_vs_real']}")
        it.detail = f"FID {m['fid']:.2f} (floor {m['fid_real_vs_real']:.2f}), n {m['n_real']}"

    item("evaluate", evaluate, ["generate", "reference classifier"])

    def classify(it):
        from histosynth.classify.study import run_study

        t0 = time.time()
        _, metrics, _ = run_study(cohort["df"], generated["df"], sorted(cohort["df"].query("partition == 'train'")
                                                                         ["patient_id"].unique()), copts, dev,
                                  progress=progress)
        n_models = len(metrics) * len(copts["seeds"])
        it.speed, it.unit = n_models * size["classify_steps"] * copts["batch"] / (time.time() - t0), "img/s"
        it.detail = ", ".join(f"{k} AUC {v['auc']:.2f}" for k, v in metrics.items())

    item("classify", classify, ["generate"])
    report["seconds"] = time.time() - t_all
    report["ok"] = all(it.status == "PASS" for it in report["items"])
    report["items"] = [asdict(it) for it in report["items"]]
    if tmp is not None:
        tmp.cleanup()
    return report


def format_report(report: dict) -> str:
    lines = [f"histosynth selfcheck on {report['device']} (torch {report['torch']}; bf16 {report['bf16']}, "
             f"compile {report['compile']}, {report['size']['resolution']} px, {report['size']['steps']} steps "
             f"per GAN run, ADA p 0.5)"]
    for it in report["items"]:
        speed = f"{it['speed']:9.1f} {it['unit']:<8}" if it["speed"] is not None else " " * 18
        lines.append(f"  {it['status']:<7} {it['name']:<31} {speed} {it['seconds']:7.1f} s  {it['detail'] or it['error']}")
    lines.append(f"{'PASS' if report['ok'] else 'FAIL'}: {sum(i['status'] == 'PASS' for i in report['items'])} of "
                 f"{len(report['items'])} items passed in {report['seconds']:.0f} s")
    for it in report["items"]:
        if it["status"] == "FAIL":
            lines.append(f"\n--- {it['name']} ---\n{it['extra'].get('traceback', it['error'])}")
    return "\n".join(lines)


def selfcheck_command(device="auto", outdir=None, steps=None, resolution=None, no_compile=False, json=None,
                      progress=True):
    """``histosynth selfcheck``: run, print the report, exit 1 when an item failed."""
    from histosynth.utils import write_json

    report = run_selfcheck(device, outdir, steps, resolution, compile=not no_compile, progress=progress)
    print(format_report(report))
    if json:
        write_json(json, report)
    if not report["ok"]:
        raise SystemExit(1)
