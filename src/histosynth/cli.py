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
    tiles = read_index(a.tiles)
    if a.masks_options or a.masks:
        from histosynth.gan.training.mask_loop import train_mask

        if a.config:  # the config's mask run: gan overridden by masks.gan
            from histosynth.config import load_config
            from histosynth.masks.run import run_options

            cfg = load_config(a.config)
            o = dict(run_options(cfg["gan"], cfg["masks"]), threads=a.threads)

        train_mask(tiles, a.outdir, o, _masks_opts(a), progress=not a.quiet)
        return
    if o["conditioning"] == "expression":
        from histosynth.expression.prepare import attach_embeddings

        if not a.embeddings:
            raise UserError("gan.conditioning: expression needs --embeddings (results/expression/embeddings.parquet, "
                            "from the train_vae rule)")
        tiles = attach_embeddings(tiles, read_index(a.embeddings))
    train(tiles, a.outdir, o, progress=not a.quiet)


def _tile_meta(tiles) -> dict:
    """The real tiles' size and scale, given to generated tiles."""
    return {"tile_px": int(tiles["tile_px"].iloc[0]), "tile_um": float(tiles["tile_um"].iloc[0]),
            "mpp": float(tiles["mpp"].iloc[0])}


def _cuda_count():
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cmd_generate(a):
    import pandas as pd

    from histosynth.generate.sample import class_blend_grid, generate, latent_interpolation
    from histosynth.slides.store import read_index, write_index

    o = _opts(a, "generate")
    tiles = read_index(a.tiles)
    meta = _tile_meta(tiles)
    dev = _device()
    df = generate(a.network, a.outdir, o["per_class"], truncation=o["truncation"], seed0=o["seed0"], batch=o["batch"],
                  device=dev, tile_meta=meta, progress=not a.quiet, fov_um=o["fov_um"], out_px=o["out_px"])
    if a.blend_png:
        class_blend_grid(a.network, a.blend_png, a.blend_gif, o["blend_seeds"], o["blend_steps"], dev)
    if a.latent_png:
        latent_interpolation(a.network, a.latent_png, a.latent_gif, o["blend_seeds"][:2], o["blend_steps"], dev)
    write_index(pd.DataFrame(df), a.out_index)
    log.info("generated %d tiles: %s", len(df), df["condition"].value_counts().to_dict())


def cmd_expression_prepare(a):
    import pandas as pd

    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.expression.io import read_matrix
    from histosynth.expression.prepare import cohort_keys, key_of, prepare
    from histosynth.slides.store import write_index

    o = _opts(a, "expression")
    o["matrix"] = a.matrix or o["matrix"]
    if not o["matrix"]:
        raise UserError("expression.matrix is not set: give a GCT, CSV or STAR manifest of the cohort's profiles")
    sheet = read_sample_sheet(a.sheet)
    split = pd.read_csv(a.split, sep="\t", dtype=str)
    wanted = set(cohort_keys(sheet, split, o["key"])["key"])
    values, genes = read_matrix(o["matrix"], o["format"], samples=lambda sid: key_of(sid, o["key"], o["id_regex"]) in wanted,
                                star_column=o["star_column"])
    profiles, transform = prepare(values, genes, sheet, split, o)
    write_index(profiles, a.out_profiles)
    write_json(a.out_transform, transform)


def cmd_train_vae(a):
    from histosynth.expression.vae import embedding_frame, save_vae, train_vae
    from histosynth.report.plots import vae_plot
    from histosynth.slides.store import read_index, write_index

    o = _opts(a, "expression")
    profiles = read_index(a.profiles)
    transform = json.loads(Path(a.transform).read_text())
    model, history, report = train_vae(profiles, o["vae"], progress=not a.quiet)
    for part, r in report.items():
        log.info("beta-VAE %s (%d): MSE/gene %.3f vs mean profile %.3f (R2 %.3f)", part, r["n"], r["mse"],
                 r["mse_mean_profile"], r["r2"])
    save_vae(model, transform, o["vae"], report, a.out)
    write_index(embedding_frame(model, profiles), a.out_embeddings)
    write_json(a.out_report, {"reconstruction": report, "history": history, "n_genes": len(transform["genes"]),
                              "n_keys": int(len(profiles)), "key": transform["key"], "options": o["vae"]})
    if a.out_plot:
        vae_plot(history, report, a.out_plot)


def cmd_generate_profiles(a):
    import numpy as np
    import pandas as pd

    from histosynth.gan.checkpoint import generator_from_checkpoint
    from histosynth.generate.sample import generate_sets
    from histosynth.slides.store import read_index, write_index
    from histosynth.utils import atomic_path

    dev = _device()
    G, spec, _ = generator_from_checkpoint(a.network, dev)
    if spec.kind != "expression":
        raise UserError(f"{a.network} is {spec.kind}-conditioned; generate-profiles needs an expression-conditioned network")
    vecs, names, metas = [], [], []
    if a.embeddings:  # held-out cohort profiles
        emb = read_index(a.embeddings)
        emb = emb[emb["partition"].isin(a.partitions)]
        mu = emb[[c for c in emb.columns if c.startswith("z_mu_")]].to_numpy(np.float32)
        for k, lab, v in zip(emb["key"], emb["label"], mu):
            vecs.append(v)
            names.append(str(k))
            metas.append({"label": str(lab), "expression_key": str(k)})
    if a.profiles or a.vae_samples:
        if not a.vae:
            raise UserError("--profiles and --vae-samples need --vae (results/expression/vae.pt)")
        from histosynth.expression.io import read_csv_matrix
        from histosynth.expression.prepare import apply_transform
        from histosynth.expression.vae import decode, embed, load_vae

        vae, transform, _ = load_vae(a.vae)
        if a.profiles:
            raw, _ = read_csv_matrix(a.profiles)
            mu, _ = embed(vae, apply_transform(raw, transform).to_numpy())
            for sid, v in zip(raw.index, mu):
                vecs.append(v)
                names.append(f"profile-{sid}")
                metas.append({"label": "", "expression_key": f"profile-{sid}"})
        if a.vae_samples:
            z = np.random.RandomState(a.seed0).randn(a.vae_samples, vae.latent).astype(np.float32)
            prof = decode(vae, z) * np.asarray(transform["std"]) + np.asarray(transform["mean"])
            if a.out_sampled:
                df = pd.DataFrame(prof, columns=transform["genes"], index=[f"vae-sample-{i:03d}" for i in range(len(z))])
                df.index.name = "sample_id"
                with atomic_path(a.out_sampled) as tmp:  # log-space values, as the VAE models them
                    df.to_csv(tmp)
            for i, v in enumerate(z):
                vecs.append(v)
                names.append(f"vae-sample-{i:03d}")
                metas.append({"label": "", "expression_key": f"vae-sample-{i:03d}"})
    if a.out_sampled and not a.vae_samples:
        with atomic_path(a.out_sampled) as tmp:
            Path(tmp).write_text("sample_id\n")
    if not vecs:
        raise UserError("nothing to generate: give --embeddings with --partitions, --profiles or --vae-samples")
    sets = [{"name": n, "c": v, "meta": m, "seeds": np.arange(a.seed0, a.seed0 + a.per_profile)}
            for n, v, m in zip(names, vecs, metas)]
    tiles = read_index(a.tiles)
    meta = _tile_meta(tiles)
    df = generate_sets(G, sets, a.outdir, a.network, batch=64, device=dev, tile_meta=meta, progress=not a.quiet)
    write_index(df, a.out_index)
    if a.grid:
        from histosynth.report.plots import profile_grid

        profile_grid(df, a.grid, per_row=min(8, a.per_profile))
    log.info("generated %d tiles from %d profiles", len(df), len(sets))


def cmd_evaluate_profiles(a):
    from histosynth.evaluate.features import extract
    from histosynth.expression.evaluate import profile_specificity
    from histosynth.report.plots import heldout_grid
    from histosynth.slides.store import load_tiles, read_index

    o = _opts(a, "evaluate")
    dev = _device()
    key = json.loads(Path(a.transform).read_text())["key"]
    tiles = read_index(a.tiles)
    fake = read_index(a.heldout).reset_index(drop=True)
    real = tiles[tiles["kept"] & tiles[key].isin(set(fake["expression_key"]))].reset_index(drop=True)
    leaked = set(real["partition"]) - {"test"}
    if leaked:
        raise UserError(f"held-out profiles include {sorted(leaked)} patients: the specificity test is only "
                        f"meaningful on test patients the VAE and GAN never saw")
    out = {"key": key, "extractors": {}}
    for ex in o["extractors"]:
        fr, ff = extract([real, fake], ex, o, a.reference, dev, a.feature_cache)
        r = profile_specificity(real, fr, fake, ff, key, seed=o["seed"], kid_subset=o["kid_subset_size"])
        out["extractors"][ex] = r
        if r.get("pairs"):
            same = r["same_class"] or {}
            log.info("[%s] held-out profiles: FID to own tiles %.3f vs other patients' %.3f; own closer in %.0f%% of "
                     "pairs (p=%.3f); within class: gap %s, p=%s", ex, r["mean_fid_same"], r["mean_fid_other"],
                     100 * r["share_pairs_closer_to_own"], r["all_others"]["p_value_sign_flip"],
                     same.get("mean_gap"), same.get("p_value_sign_flip"))
    write_json(a.out, out)
    if a.grid:
        heldout_grid(real, load_tiles(real), fake, load_tiles(fake), key, a.grid)


def _masks_opts(a):
    """The masks section (from --masks-options JSON or the --config file), labels resolved."""
    from histosynth.config import load_config, validate
    from histosynth.masks.run import resolve_labels

    if getattr(a, "config", None):
        m = load_config(a.config)["masks"]
    else:
        raw = getattr(a, "masks_options", None) or getattr(a, "options", None)
        m = validate({"masks": json.loads(raw) if raw else {}}, "--masks-options")["masks"]
    return resolve_labels(m)


def cmd_fit_segmenter(a):
    from histosynth.masks.colour import ColourSegmenter
    from histosynth.slides.store import load_tiles, read_index

    m = _masks_opts(a)
    tiles = read_index(a.tiles)
    train = tiles[tiles["kept"] & (tiles["partition"] == "train")]
    if len(train) == 0:
        raise UserError(f"{a.tiles}: no kept training tiles to fit the colour segmenter on")
    pick = train.sample(min(len(train), m["auto"]["fit_tiles"]), random_state=0)
    seg = ColourSegmenter(m["auto"]["background_od"], median=m["auto"]["median"]).fit(load_tiles(pick))
    seg.save(a.out)
    log.info("colour segmenter: haematoxylin threshold %.4f from %d tissue pixels of %d training tiles",
             seg.nuclei_h, seg.n_fit_pixels, len(pick))


def cmd_label_maps(a):
    from histosynth.masks.build import slide_label_maps
    from histosynth.masks.labels import LabelSet
    from histosynth.slides.store import read_index

    m = _masks_opts(a)
    seg = None
    if m["source"] == "auto":
        from histosynth.masks.colour import ColourSegmenter

        if not a.segmenter:
            raise UserError("masks.source auto: give --segmenter (results/masks/segmenter.json from fit-segmenter)")
        seg = ColourSegmenter.load(a.segmenter)
    slide_label_maps(read_index(a.tiles), a.slide_id, m["source"], LabelSet.from_config(m["labels"]), a.store, a.index,
                     segmenter=seg, annotations=a.annotations, class_map=m["geojson_classes"], progress=not a.quiet)


def cmd_mask_index(a):
    import pandas as pd

    from histosynth.slides.store import read_index, write_index

    df = pd.concat([read_index(p) for p in a.indexes], ignore_index=True)
    if len(df) == 0:
        raise UserError("no tile has a label map (see logs/label_maps/): nothing for the mask run to train on")
    write_index(df, a.out)
    log.info("mask index: %d tiles with label maps; per partition %s", len(df), df["partition"].value_counts().to_dict())


def cmd_import_pannuke(a):
    from histosynth.masks.pannuke import import_pannuke

    m = _masks_opts(a)
    if not m["pannuke"]["folds"]:
        raise UserError("masks.pannuke.folds is empty: name each PanNuke fold folder and its partition")
    df = import_pannuke(m["pannuke"]["folds"], Path(a.out).parent, m["pannuke"]["mpp"], progress=not a.quiet)
    log.info("PanNuke: %d tiles; per partition %s", len(df), df["partition"].value_counts().to_dict())


def cmd_train_segnet(a):
    from histosynth.masks.build import load_maps
    from histosynth.masks.segnet import SegNet
    from histosynth.slides.store import load_tiles, read_index

    m = _masks_opts(a)
    idx = read_index(a.index)
    train = idx[idx["partition"] == "train"]
    train = train.sample(min(len(train), a.max_tiles), random_state=0)
    net = SegNet(len(m["labels"]), int(idx["tile_px"].iloc[0]), device=_device())
    net.fit(load_tiles(train), load_maps(train), steps=a.steps, progress=not a.quiet)
    net.save(a.out)


def cmd_generate_layout(a):
    from histosynth.generate.from_maps import generate_from_maps, triplet_figure
    from histosynth.masks.labels import LabelSet
    from histosynth.slides.store import read_index

    m = _masks_opts(a)
    idx = read_index(a.index)
    out = Path(a.outdir)
    dev = _device()
    train = idx[idx["partition"] == "train"]
    if m["max_maps"] and len(train) > m["max_maps"]:
        train = train.sample(m["max_maps"], random_state=0).sort_index()
    test = idx[idx["partition"] == "test"]
    if len(test) == 0:
        raise UserError("no label maps of test patients: layout fidelity needs held-out maps (check split.test_fraction)")
    test = test.sample(min(len(test), m["eval_maps"]), random_state=0).sort_index()
    bulk = generate_from_maps(a.network, train, out / "synthetic.tiff", a.out_index, m["per_map"], seed0=0,
                              device=dev, name="train-maps", progress=not a.quiet)
    held = generate_from_maps(a.network, test, out / "heldout.tiff", a.out_heldout, 1, seed0=10**6,
                              device=dev, name="heldout-maps", progress=not a.quiet)
    triplet_figure(idx, held.sample(min(len(held), m["triplets"]), random_state=0), LabelSet.from_config(m["labels"]),
                   a.triplets, n=m["triplets"])
    log.info("generated %d tiles from training maps and %d from held-out maps", len(bulk), len(held))


def cmd_evaluate_layout(a):
    from histosynth.evaluate.features import extract
    from histosynth.evaluate.layout import layout_fidelity
    from histosynth.evaluate.run import check_field_of_view, evaluate_features
    from histosynth.masks.build import load_maps
    from histosynth.masks.segnet import load_segmenter
    from histosynth.slides.store import load_tiles, read_index

    o = _opts(a, "evaluate")
    m = _masks_opts(a)
    dev = _device()
    idx = read_index(a.index)
    held, bulk = read_index(a.heldout), read_index(a.synthetic)
    real_of = idx.set_index(["slide_id", "page"])
    real_held = real_of.loc[list(zip(held["source_slide"], held["source_page"]))].reset_index()
    maps = load_maps(held)
    seg = load_segmenter(a.segmenter, dev)
    out = {"run": a.run, "method": m["method"], "source": m["source"], "segmenter": Path(a.segmenter).name,
           "layout": layout_fidelity(maps, seg.segment(load_tiles(held)), seg.segment(load_tiles(real_held)),
                                     held["source_patient"].to_numpy(), [x["name"] for x in m["labels"]],
                                     seed=o["seed"]),
           "metrics": {}, "metrics_heldout": {}}
    lay = out["layout"]
    log.info("layout fidelity (%d held-out maps, %d patients): mIoU %.3f generated, %.3f real, %.3f chance",
             lay["n_maps"], lay["n_patients"], lay["generated"]["miou"], lay["real"]["miou"], lay["chance"]["miou"])
    real_train = idx[idx["partition"].isin(a.real_partitions)].reset_index(drop=True)
    real_test = idx[idx["partition"] == "test"].reset_index(drop=True)
    check_field_of_view(real_train, bulk)
    for ex in o["extractors"]:
        fr, fb, ft, fh = extract([real_train, bulk, real_test, held], ex, o, a.reference, dev, a.feature_cache)
        out["metrics"][ex] = evaluate_features(real_train, fr, bulk, fb, o, ex)
        out["metrics_heldout"][ex] = evaluate_features(real_test, ft, held, fh, o, ex)
        log.info("[%s] FID training maps %.3f (floor %.3f); held-out maps %.3f (floor %.3f)", ex,
                 out["metrics"][ex]["fid"], out["metrics"][ex]["fid_real_vs_real"],
                 out["metrics_heldout"][ex]["fid"], out["metrics_heldout"][ex]["fid_real_vs_real"])
    write_json(a.out, out)


def cmd_draw(a):
    from histosynth.draw.server import serve

    serve(a.network, host=a.host, port=a.port, device=_device(), open_browser=a.open, max_map_px=a.max_map_px,
          max_concurrent=a.max_concurrent, timeout=a.timeout)


def cmd_train_reference(a):
    from histosynth.classify.study import save_reference, train_reference
    from histosynth.slides.store import read_index

    o = _opts(a, "classify")
    model, classes, val = train_reference(read_index(a.tiles), o, _device())
    save_reference(model, classes, o, val, a.out)
    log.info("reference classifier (%s, classes %s); validation patients: %s", o["arch"], classes, val)


def cmd_evaluate(a):
    import numpy as np

    from histosynth.classify.model import predict
    from histosynth.classify.study import load_reference
    from histosynth.evaluate.features import extract
    from histosynth.evaluate.run import check_field_of_view, concordance, evaluate_features
    from histosynth.slides.store import load_tiles, read_index

    o = _opts(a, "evaluate")
    dev = _device()
    tiles = read_index(a.tiles)
    real = tiles[tiles["kept"] & tiles["partition"].isin(a.real_partitions)].reset_index(drop=True)
    fake = read_index(a.synthetic).reset_index(drop=True)
    check_field_of_view(real, fake)
    model, classes, _ = load_reference(a.reference, dev)
    out = {"metrics": {}, "concordance": None}
    for ex in o["extractors"]:
        fr, ff = extract([real, fake], ex, o, a.reference, dev, a.feature_cache)
        out["metrics"][ex] = evaluate_features(real, fr, fake, ff, o, ex)
        log.info("[%s] FID %.3f (floor %.3f), KID %.5f, precision %.3f, recall %.3f, n=%d", ex, out["metrics"][ex]["fid"],
                 out["metrics"][ex]["fid_real_vs_real"], out["metrics"][ex]["kid_mean"], out["metrics"][ex]["precision"],
                 out["metrics"][ex]["recall"], out["metrics"][ex]["n_real"])
    prob = predict(model, load_tiles(fake), dev)
    intended = np.array([classes.index(v) for v in fake["label"]])
    out["concordance"] = concordance(prob, intended, o["concordance_threshold"])
    out["concordance"]["per_class"] = {c: float((prob.argmax(1) == intended)[intended == i].mean()) for i, c in enumerate(classes)}
    out["domain_extractor"] = "penultimate layer of the reference classifier trained from scratch on this cohort's real training tiles"
    write_json(a.out, out)


def cmd_classify(a):
    from histosynth.classify.study import run_study
    from histosynth.evaluate.run import check_field_of_view
    from histosynth.report.plots import study_plot
    from histosynth.slides.store import read_index, write_index

    o = _opts(a, "classify")
    from histosynth.gan.checkpoint import load

    net = load(a.network)
    tiles, synthetic = read_index(a.tiles), read_index(a.synthetic)
    check_field_of_view(tiles, synthetic)
    pred, metrics, classes = run_study(tiles, synthetic, net["training_set"]["patients"], o,
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
    extra = []
    for run in a.expression_run or []:
        from histosynth.report.build import add_expression_run, expression_html

        run_eval = eval_dir.parent / run
        add_expression_run(summary, run, gan_dir.parent / run, run_eval, a.expression_dir)
        training_plot(gan_dir.parent / run / "stats.jsonl", run_eval / "training.png")
        extra.append(expression_html(summary, run, run_eval, a.expression_dir))
    if a.mask_run:
        from histosynth.report.build import add_mask_run, mask_html

        run_eval = eval_dir.parent / a.mask_run
        add_mask_run(summary, a.mask_run, gan_dir.parent / a.mask_run, run_eval)
        training_plot(gan_dir.parent / a.mask_run / "stats.jsonl", run_eval / "training.png")
        extra.append(mask_html(summary, a.mask_run, gan_dir.parent / a.mask_run, run_eval))
    write_summary_json(summary, a.out_json)
    write_html(summary, a.out_html, gan_run=a.gan_run, gan_dir=gan_dir, eval_dir=eval_dir,
               classify_dir=Path(a.study).parent, qc_thumbs=thumbs, notes=notes, extra_sections=extra)


def cmd_selfcheck(a):
    from histosynth.selfcheck import format_report, run_selfcheck

    report = run_selfcheck(a.device, a.outdir, a.steps, a.resolution, compile=not a.no_compile, progress=not a.quiet)
    print(format_report(report))
    if a.json:
        write_json(a.json, report)
    if not report["ok"]:
        raise SystemExit(1)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="histosynth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("demo-slides", help="draw the demo cohort of synthetic H&E slides and its manifest")
    _add_opts(p)
    p.add_argument("--outdir")
    p.add_argument("--manifest")
    p.set_defaults(fn=cmd_demo_slides)
    p = sub.add_parser("acquire-query", help="list the cohort's slides into the sample sheet")
    _add_opts(p)
    p.add_argument("--manifest")
    p.add_argument("--slide-dir")
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_acquire_query)
    p = sub.add_parser("download", help="fetch and verify one slide of the sample sheet")
    _add_opts(p)
    p.add_argument("--sheet", required=True)
    p.add_argument("--slide-id", required=True)
    p.add_argument("--out")
    p.add_argument("--record", help="write the verified MD5 and size of the file here (JSON)")
    p.set_defaults(fn=cmd_download)
    p = sub.add_parser("acquire-record", help="the sample sheet with every downloaded file's verified MD5 and size")
    p.add_argument("--sheet", required=True)
    p.add_argument("--records", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_acquire_record)
    p = sub.add_parser("tile", help="tile one slide with tissue detection and QC")
    _add_opts(p)
    for k in ("--sheet", "--slide-id", "--store", "--index", "--thumb"):
        p.add_argument(k, required=True)
    p.add_argument("--slide", help="slide file (default: the sheet's path)")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_tile)
    p = sub.add_parser("split", help="split patients into train/val/test and index all tiles")
    _add_opts(p)
    p.add_argument("--sheet", required=True)
    p.add_argument("--indexes", nargs="+", required=True)
    p.add_argument("--out-split", required=True)
    p.add_argument("--out-tiles", required=True)
    p.set_defaults(fn=cmd_split)
    p = sub.add_parser("train-gan", help="train (or resume) the conditional GAN")
    _add_opts(p)
    p.add_argument("--tiles", required=True)
    p.add_argument("--outdir", required=True)
    p.add_argument("--embeddings", help="beta-VAE embeddings per patient/slide (conditioning: expression)")
    p.add_argument("--masks-options", help="the masks section as JSON: train the label-map-conditioned run (SPADE/pix2pix) "
                   "on --tiles, a mask index")
    p.add_argument("--masks", action="store_true", help="with --config: train the config's mask run")
    p.add_argument("--threads", type=int, default=1)
    p.set_defaults(fn=cmd_train_gan)
    p = sub.add_parser("expression-prepare", help="expression matrix -> standardised profiles of the cohort (fitted on training patients)")
    _add_opts(p)
    for k in ("--sheet", "--split", "--out-profiles", "--out-transform"):
        p.add_argument(k, required=True)
    p.add_argument("--matrix", help="local matrix file (default: expression.matrix)")
    p.set_defaults(fn=cmd_expression_prepare)
    p = sub.add_parser("train-vae", help="train the beta-VAE on profiles; embeddings and held-out reconstruction error")
    _add_opts(p)
    for k in ("--profiles", "--transform", "--out", "--out-embeddings", "--out-report"):
        p.add_argument(k, required=True)
    p.add_argument("--out-plot")
    p.set_defaults(fn=cmd_train_vae)
    p = sub.add_parser("generate-profiles", help="tiles from expression profiles: held-out patients, a CSV of new profiles, VAE samples")
    for k in ("--network", "--tiles", "--outdir", "--out-index"):
        p.add_argument(k, required=True)
    p.add_argument("--embeddings", help="embeddings table; with --partitions, generate from those patients' profiles")
    p.add_argument("--partitions", nargs="+", default=["test"])
    p.add_argument("--vae", help="the beta-VAE (vae.pt), for --profiles and --vae-samples")
    p.add_argument("--profiles", help="CSV of raw profiles (samples x genes)")
    p.add_argument("--vae-samples", type=int, default=0)
    p.add_argument("--out-sampled", help="CSV of the sampled profiles")
    p.add_argument("--per-profile", type=int, default=16)
    p.add_argument("--seed0", type=int, default=0)
    p.add_argument("--grid", help="PNG: one row of tiles per profile")
    p.set_defaults(fn=cmd_generate_profiles)
    p = sub.add_parser("evaluate-profiles", help="held-out profiles: FID to the patient's own tiles vs other patients'")
    _add_opts(p)
    for k in ("--tiles", "--heldout", "--reference", "--transform", "--out"):
        p.add_argument(k, required=True)
    p.add_argument("--feature-cache", help="directory caching features per tile store and extractor")
    p.add_argument("--grid", help="PNG: real and generated tiles per held-out profile")
    p.set_defaults(fn=cmd_evaluate_profiles)
    p = sub.add_parser("generate", help="bulk-generate labelled synthetic tiles (+ class blending)")
    _add_opts(p)
    for k in ("--network", "--tiles", "--outdir", "--out-index"):
        p.add_argument(k, required=True)
    p.add_argument("--blend-png")
    p.add_argument("--blend-gif")
    p.add_argument("--latent-png")
    p.add_argument("--latent-gif")
    p.set_defaults(fn=cmd_generate)
    p = sub.add_parser("fit-segmenter", help="fit the colour-deconvolution segmenter (auto label maps) on training tiles")
    _add_opts(p)
    p.add_argument("--tiles", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_fit_segmenter)
    p = sub.add_parser("label-maps", help="label maps of one slide's tiles (auto segmenter or QuPath GeoJSON)")
    _add_opts(p)
    for k in ("--tiles", "--slide-id", "--store", "--index"):
        p.add_argument(k, required=True)
    p.add_argument("--segmenter")
    p.add_argument("--annotations", help="the slide's QuPath GeoJSON (source geojson)")
    p.set_defaults(fn=cmd_label_maps)
    p = sub.add_parser("mask-index", help="combine the slides' label-map indexes")
    p.add_argument("--indexes", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_mask_index)
    p = sub.add_parser("import-pannuke", help="PanNuke folds -> tile stores, label-map stores and the mask index")
    _add_opts(p)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_import_pannuke)
    p = sub.add_parser("train-segnet", help="train the U-Net segmenter on real training tiles and maps (layout fidelity)")
    _add_opts(p)
    p.add_argument("--index", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--max-tiles", type=int, default=20000)
    p.set_defaults(fn=cmd_train_segnet)
    p = sub.add_parser("generate-layout", help="tiles from training label maps (bulk) and held-out maps, and triplets")
    _add_opts(p)
    for k in ("--network", "--index", "--outdir", "--out-index", "--out-heldout", "--triplets"):
        p.add_argument(k, required=True)
    p.set_defaults(fn=cmd_generate_layout)
    p = sub.add_parser("evaluate-layout", help="layout fidelity (mIoU) and FID of a mask run")
    _add_opts(p)
    for k in ("--index", "--synthetic", "--heldout", "--segmenter", "--reference", "--masks-options", "--out"):
        p.add_argument(k, required=True)
    p.add_argument("--run", default="mask")
    p.add_argument("--real-partitions", nargs="+", default=["train"])
    p.add_argument("--feature-cache")
    p.set_defaults(fn=cmd_evaluate_layout)
    p = sub.add_parser("draw", help="serve the drawing page: paint a label map, get a synthetic tile")
    p.add_argument("--network", nargs="+", required=True, help="mask-run network.pt file(s) to choose from")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.add_argument("--max-map-px", type=int, default=4096, help="largest map side accepted (px)")
    p.add_argument("--max-concurrent", type=int, help="generations at once (default: 1 per GPU, else the CPU count)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a client may take to send its request")
    p.set_defaults(fn=cmd_draw)
    p = sub.add_parser("train-reference", help="train the reference classifier on real training tiles")
    _add_opts(p)
    p.add_argument("--tiles", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_train_reference)
    p = sub.add_parser("evaluate", help="FID, KID, precision/recall, floor, concordance")
    _add_opts(p)
    for k in ("--tiles", "--synthetic", "--reference", "--out"):
        p.add_argument(k, required=True)
    p.add_argument("--real-partitions", nargs="+", default=["train"])
    p.add_argument("--feature-cache", help="directory caching features per tile store and extractor")
    p.set_defaults(fn=cmd_evaluate)
    p = sub.add_parser("classify", help="the augmentation study: real / synthetic / mixed arms")
    _add_opts(p)
    for k in ("--tiles", "--synthetic", "--network", "--outdir"):
        p.add_argument(k, required=True)
    p.set_defaults(fn=cmd_classify)
    p = sub.add_parser("report", help="summary.json and summary.html")
    for k in ("--sheet", "--tiles", "--gan-dir", "--metrics", "--study", "--qc-dir", "--out-json", "--out-html"):
        p.add_argument(k, required=True)
    p.add_argument("--gan-run", default="stylegan2-class")
    p.add_argument("--run-name", default="histosynth")
    p.add_argument("--expression-run", action="append", help="an expression-conditioned run to add (repeatable)")
    p.add_argument("--expression-dir", default="results/expression")
    p.add_argument("--mask-run", help="the layout-conditioned (label-map) run to add")
    p.set_defaults(fn=cmd_report)

    p = sub.add_parser("selfcheck", help="train every run kind, generate, evaluate and classify on this machine's GPU "
                       "(or a smaller CPU version): PASS/FAIL and speed per item")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--outdir", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--steps", type=int, help="training steps per GAN run (default: 200 on GPU, 12 on CPU)")
    p.add_argument("--resolution", type=int, help="tile size (default: 128 on GPU, 32 on CPU)")
    p.add_argument("--no-compile", action="store_true", help="train without torch.compile")
    p.add_argument("--json", help="also write the results here")
    p.set_defaults(fn=cmd_selfcheck)

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
