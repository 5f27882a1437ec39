"""``histosynth <stage>``: every workflow rule is one of these commands, runnable by hand.

Stage options come from ``--config FILE`` (a config YAML; its section for the stage is used,
with the schema's defaults) or ``--options JSON`` (the section itself, as the workflow passes it)."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from histosynth.utils import UserError, setup_logging, write_json

log = logging.getLogger("histosynth")


def _opts(args, section):
    from histosynth.config import load_config, validate

    if getattr(args, "config", None):
        return load_config(args.config)[section]
    raw = json.loads(args.options) if getattr(args, "options", None) else {}
    return validate({section: raw}, f"--options for {section}")[section]


def _add_opts(p):
    p.add_argument("--config", help="config YAML to take this stage's options from")
    p.add_argument("--options", help="this stage's options as JSON (what the workflow passes)")


def _device(name="auto"):
    import torch

    return "cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name)


def cmd_demo_slides(a):
    from histosynth.slides.synthetic import write_demo_cohort

    o = _opts(a, "demo")
    out = Path(a.outdir or o["outdir"])
    df = write_demo_cohort(out / "slides", a.manifest or out / "manifest.tsv", o["patients_per_class"], o["size_px"],
                           o["mpp"], o["seed"], progress=not a.quiet)
    log.info("wrote %d demo slides (%d patients) and %s", len(df), df["patient_id"].nunique(), a.manifest or out / "manifest.tsv")


def cmd_acquire_query(a):
    from histosynth.acquire.query import build_sample_sheet

    o = _opts(a, "acquire")
    if a.slide_dir:
        o["slide_dir"] = a.slide_dir
    df = build_sample_sheet(o, a.out, manifest=a.manifest)
    log.info("sample sheet %s (source %s): %d slides, %d patients, labels %s", a.out, o["source"], len(df),
             df["patient_id"].nunique(), df["label"].value_counts().to_dict())


def cmd_download(a):
    from histosynth.acquire.download import fetch
    from histosynth.acquire.gdc import auth_headers
    from histosynth.acquire.manifest import sheet_row
    from histosynth.acquire.query import verified_record
    from histosynth.slides.reader import openslide_problem

    o = _opts(a, "acquire")
    row = sheet_row(a.sheet, a.slide_id)
    size = int(row["size"]) if str(row.get("size", "")).strip() else None
    md5 = str(row.get("md5", "")).strip() or None
    res = fetch(row["source"], a.out or row["path"], md5=md5, size=size, label=a.slide_id,
                headers=auth_headers(row["source"], o["gdc"]), max_attempts=o["max_attempts"],
                check=openslide_problem if o["check_openslide"] else None, progress=not a.quiet)
    if a.record:
        write_json(a.record, verified_record(row, res, md5 is not None))
    log.info("%s: %s verified (md5 %s%s, %d bytes, %d attempt(s))", a.slide_id, res.path, res.md5,
             "" if md5 else " recorded: none published", res.size, res.attempts)


def cmd_acquire_record(a):
    from histosynth.acquire.query import write_verified_sheet

    df = write_verified_sheet(a.sheet, a.records, a.out)
    log.info("verified sheet %s: %d slides, %d against published MD5s", a.out, len(df),
             int((df["md5_checked_against"] == "published").sum()))


def cmd_tile(a):
    from histosynth.acquire.manifest import sheet_row
    from histosynth.slides.tiling import tile_slide

    o = _opts(a, "tiles")
    row = sheet_row(a.sheet, a.slide_id)
    mpp = float(row["mpp"]) if "mpp" in row and str(row["mpp"]).strip() else None
    tile_slide(a.slide or row["path"], a.slide_id, a.store, a.index, a.thumb, o, patient_id=row["patient_id"],
               label=row["label"], mpp_override=mpp, threads=a.threads, progress=not a.quiet)


def cmd_split(a):
    import pandas as pd

    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.slides.store import read_index, write_index
    from histosynth.split.patients import assign_tiles, split_patients
    from histosynth.utils import atomic_path

    o = _opts(a, "split")
    sheet = read_sample_sheet(a.sheet)
    split = split_patients(sheet, o["test_fraction"], o["val_fraction"], o["seed"])
    tiles = pd.concat([read_index(p) for p in a.indexes], ignore_index=True)
    extra = [c for c in sheet.columns if c not in tiles.columns and c not in ("source", "md5", "size", "path")]
    if extra:
        tiles = tiles.merge(sheet[["slide_id"] + extra], on="slide_id", how="left")
    tiles = assign_tiles(tiles, split)
    with atomic_path(a.out_split) as tmp:
        split.to_csv(tmp, sep="\t", index=False)
    write_index(tiles, a.out_tiles)
    kept = tiles[tiles["kept"]]
    log.info("split: %s patients; kept tiles per partition %s", split["partition"].value_counts().to_dict(),
             kept["partition"].value_counts().to_dict())


def cmd_train_gan(a):
    from histosynth.gan.training.loop import train
    from histosynth.slides.store import read_index

    o = _opts(a, "gan")
    o["threads"] = a.threads
    import os

    ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1:
        raise UserError(f"train-gan is running as one of {ntasks} SLURM tasks (SLURM_NTASKS={ntasks}): every task would "
                        f"train the same run into the same folder. Give the train_gan rule one task (resources tasks=1, "
                        f"as profiles/slurm does); it launches torchrun for all its GPUs itself.")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("train_gan: %d process(es); CUDA devices visible: %s", world, _cuda_count())
    train(read_index(a.tiles), a.outdir, o, progress=not a.quiet)


def _cuda_count():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_generate(a):
    import pandas as pd

    from histosynth.generate.sample import class_blend_grid, generate
    from histosynth.slides.store import read_index, write_index

    o = _opts(a, "generate")
    tiles = read_index(a.tiles)
    meta = {k: tiles[k].iloc[0] for k in ("tile_px", "tile_um", "mpp")}
    meta = {k: (float(v) if k != "tile_px" else int(v)) for k, v in meta.items()}
    dev = _device()
    df = generate(a.network, a.outdir, o["per_class"], truncation=o["truncation"], seed0=o["seed0"], batch=o["batch"],
                  device=dev, tile_meta=meta, progress=not a.quiet)
    if a.blend_png:
        class_blend_grid(a.network, a.blend_png, a.blend_gif, o["blend_seeds"], o["blend_steps"], dev)
    write_index(pd.DataFrame(df), a.out_index)
    log.info("generated %d tiles: %s", len(df), df["condition"].value_counts().to_dict())


def cmd_train_reference(a):
    from histosynth.classify.study import save_reference, train_reference
    from histosynth.slides.store import read_index

    o = _opts(a, "classify")
    model, classes, val = train_reference(read_index(a.tiles), o, _device())
    save_reference(model, classes, o, val, a.out)
    log.info("reference classifier (%s, classes %s); validation patients: %s", o["arch"], classes, val)


def cmd_evaluate(a):
    import numpy as np

    from histosynth.classify.model import features, predict
    from histosynth.classify.study import load_reference
    from histosynth.evaluate.features import inception_extractor, inception_features
    from histosynth.evaluate.run import concordance, evaluate_features
    from histosynth.slides.store import load_tiles, read_index

    o = _opts(a, "evaluate")
    dev = _device()
    tiles = read_index(a.tiles)
    real = tiles[tiles["kept"] & tiles["partition"].isin(a.real_partitions)].reset_index(drop=True)
    fake = read_index(a.synthetic).reset_index(drop=True)
    x_real, x_fake = load_tiles(real), load_tiles(fake)
    model, classes, _ = load_reference(a.reference, dev)
    out = {"metrics": {}, "concordance": None}
    for ex in o["extractors"]:
        if ex == "domain":
            fr, ff = features(model, x_real, dev), features(model, x_fake, dev)
        else:
            ext = inception_extractor(o["inception_weights"])
            fr, ff = inception_features(ext, x_real, device=dev), inception_features(ext, x_fake, device=dev)
        out["metrics"][ex] = evaluate_features(real, fr, fake, ff, o, ex)
        log.info("[%s] FID %.3f (floor %.3f), KID %.5f, precision %.3f, recall %.3f, n=%d", ex, out["metrics"][ex]["fid"],
                 out["metrics"][ex]["fid_real_vs_real"], out["metrics"][ex]["kid_mean"], out["metrics"][ex]["precision"],
                 out["metrics"][ex]["recall"], out["metrics"][ex]["n_real"])
    prob = predict(model, x_fake, dev)
    intended = np.array([classes.index(v) for v in fake["label"]])
    out["concordance"] = concordance(prob, intended, o["concordance_threshold"])
    out["concordance"]["per_class"] = {c: float((prob.argmax(1) == intended)[intended == i].mean()) for i, c in enumerate(classes)}
    out["domain_extractor"] = "penultimate layer of the reference classifier trained from scratch on this cohort's real training tiles"
    write_json(a.out, out)


def cmd_classify(a):
    import torch

    from histosynth.classify.study import run_study
    from histosynth.report.plots import study_plot
    from histosynth.slides.store import read_index, write_index

    o = _opts(a, "classify")
    net = torch.load(a.network, map_location="cpu", weights_only=False)
    pred, metrics, classes = run_study(read_index(a.tiles), read_index(a.synthetic), net["training_set"]["patients"], o,
                                       _device(), progress=not a.quiet)
    outdir = Path(a.outdir)
    write_index(pred, outdir / "predictions.parquet")
    study_plot(metrics, outdir / "study.png")
    write_json(outdir / "study.json", {"classes": classes, "metrics": metrics, "options": o})
    for k, m in metrics.items():
        log.info("%-16s AUC %.3f [%.3f, %.3f]  bal.acc %.3f", k, m["auc"], *m["auc_ci95"], m["balanced_accuracy"])


def cmd_report(a):
    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.report.build import build_summary, write_html, write_summary_json
    from histosynth.report.plots import training_plot
    from histosynth.slides.store import read_index

    sheet = read_sample_sheet(a.sheet)
    tiles = read_index(a.tiles)
    metrics = json.loads(Path(a.metrics).read_text())
    study = json.loads(Path(a.study).read_text())
    gan_dir = Path(a.gan_dir)
    summary = build_summary(sheet, tiles, a.gan_run, gan_dir, metrics, study)
    eval_dir = Path(a.metrics).parent
    training_plot(gan_dir / "stats.jsonl", eval_dir / "training.png")
    thumbs = {sid: Path(a.qc_dir) / f"{sid}.png" for sid in sheet["slide_id"]}
    ex = "; ".join(f"{k}: {'standard TF-compatible Inception-v3 (torch-fidelity)' if k == 'inception-v3' else metrics['domain_extractor'] + ' - needs no download; comparable only within this run, not with published FIDs'}"
                   for k in metrics["metrics"])
    notes = {"run": a.run_name, "extractors": "Extractors - " + ex + ". The floor is FID between two patient-disjoint halves of the real "
             "training tiles with the same n; a FID near the floor means the generated set is as close to the reals as reals are to each other.",
             "study": "Each arm: same architecture and number of steps, several seeds; metrics on tiles of held-out test patients "
             "(never seen by the GAN or any classifier), averaged over seeds; 95% CIs from a bootstrap over test patients. "
             "With few test patients the intervals are wide: overlapping intervals do not show a difference."}
    write_summary_json(summary, a.out_json)
    write_html(summary, a.out_html, gan_run=a.gan_run, gan_dir=gan_dir, eval_dir=eval_dir,
               classify_dir=Path(a.study).parent, qc_thumbs=thumbs, notes=notes)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="histosynth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo-slides", help="draw the demo cohort of synthetic H&E slides and its manifest")
    _add_opts(p); p.add_argument("--outdir"); p.add_argument("--manifest"); p.set_defaults(fn=cmd_demo_slides)
    p = sub.add_parser("acquire-query", help="list the cohort's slides into the sample sheet")
    _add_opts(p); p.add_argument("--manifest"); p.add_argument("--slide-dir"); p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_acquire_query)
    p = sub.add_parser("download", help="fetch and verify one slide of the sample sheet")
    _add_opts(p); p.add_argument("--sheet", required=True); p.add_argument("--slide-id", required=True); p.add_argument("--out")
    p.add_argument("--record", help="write the verified MD5 and size of the file here (JSON)")
    p.set_defaults(fn=cmd_download)
    p = sub.add_parser("acquire-record", help="the sample sheet with every downloaded file's verified MD5 and size")
    p.add_argument("--sheet", required=True); p.add_argument("--records", nargs="+", required=True)
    p.add_argument("--out", required=True); p.set_defaults(fn=cmd_acquire_record)
    p = sub.add_parser("tile", help="tile one slide with tissue detection and QC")
    _add_opts(p)
    for k in ("--sheet", "--slide-id", "--store", "--index", "--thumb"):
        p.add_argument(k, required=True)
    p.add_argument("--slide", help="slide file (default: the sheet's path)"); p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_tile)
    p = sub.add_parser("split", help="split patients into train/val/test and index all tiles")
    _add_opts(p); p.add_argument("--sheet", required=True); p.add_argument("--indexes", nargs="+", required=True)
    p.add_argument("--out-split", required=True); p.add_argument("--out-tiles", required=True); p.set_defaults(fn=cmd_split)
    p = sub.add_parser("train-gan", help="train (or resume) the conditional GAN")
    _add_opts(p); p.add_argument("--tiles", required=True); p.add_argument("--outdir", required=True)
    p.add_argument("--threads", type=int, default=1); p.set_defaults(fn=cmd_train_gan)
    p = sub.add_parser("generate", help="bulk-generate labelled synthetic tiles (+ class blending)")
    _add_opts(p)
    for k in ("--network", "--tiles", "--outdir", "--out-index"):
        p.add_argument(k, required=True)
    p.add_argument("--blend-png"); p.add_argument("--blend-gif"); p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("train-reference", help="train the reference classifier on real training tiles")
    _add_opts(p); p.add_argument("--tiles", required=True); p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_train_reference)
    p = sub.add_parser("evaluate", help="FID, KID, precision/recall, floor, concordance")
    _add_opts(p)
    for k in ("--tiles", "--synthetic", "--reference", "--out"):
        p.add_argument(k, required=True)
    p.add_argument("--real-partitions", nargs="+", default=["train"]); p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("classify", help="the augmentation study: real / synthetic / mixed arms")
    _add_opts(p)
    for k in ("--tiles", "--synthetic", "--network", "--outdir"):
        p.add_argument(k, required=True)
    p.set_defaults(fn=cmd_classify)
    p = sub.add_parser("report", help="summary.json and summary.html")
    for k in ("--sheet", "--tiles", "--gan-dir", "--metrics", "--study", "--qc-dir", "--out-json", "--out-html"):
        p.add_argument(k, required=True)
    p.add_argument("--gan-run", default="stylegan2-class"); p.add_argument("--run-name", default="histosynth")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("config-doc", help="print the configuration reference (config/README.md) from the schema")
    p.set_defaults(fn=lambda a: print(__import__("histosynth.config").config.schema_markdown()))

    args = ap.parse_args(argv)
    setup_logging(args.verbose)
    try:
        args.fn(args)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
