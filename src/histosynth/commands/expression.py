"""The expression stages' commands: profiles of the cohort, the beta-VAE, and the held-out
profile test (``histosynth expression-prepare | train-vae | evaluate-profiles``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from histosynth.utils import UserError, write_json

log = logging.getLogger("histosynth")


def expression_prepare(opts: dict, sheet, split, out_profiles, out_transform, matrix=None):
    import pandas as pd

    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.expression.io import read_matrix
    from histosynth.expression.prepare import cohort_keys, key_of, prepare
    from histosynth.slides.store import write_index

    o = dict(opts, matrix=matrix or opts["matrix"])
    if not o["matrix"]:
        raise UserError("expression.matrix is not set: give a GCT, CSV or STAR manifest of the cohort's profiles")
    sheet = read_sample_sheet(sheet)
    parts = pd.read_csv(split, sep="\t", dtype=str)
    wanted = set(cohort_keys(sheet, parts, o["key"])["key"])
    values, genes = read_matrix(o["matrix"], o["format"], samples=lambda sid: key_of(sid, o["key"], o["id_regex"]) in wanted,
                                star_column=o["star_column"])
    profiles, transform = prepare(values, genes, sheet, parts, o)
    write_index(profiles, out_profiles)
    write_json(out_transform, transform)


def train_vae(opts: dict, profiles, transform, out, out_embeddings, out_report, out_plot=None, progress=True):
    from histosynth.expression.vae import embedding_frame, save_vae
    from histosynth.expression.vae import train_vae as fit_vae
    from histosynth.report.plots import vae_plot
    from histosynth.slides.store import read_index, write_index

    table = read_index(profiles)
    transform = json.loads(Path(transform).read_text())
    model, history, report = fit_vae(table, opts["vae"], progress=progress)
    for part, r in report.items():
        log.info("beta-VAE %s (%d): MSE/gene %.3f vs mean profile %.3f (R2 %.3f)", part, r["n"], r["mse"],
                 r["mse_mean_profile"], r["r2"])
    save_vae(model, transform, opts["vae"], report, out)
    write_index(embedding_frame(model, table), out_embeddings)
    write_json(out_report, {"reconstruction": report, "history": history, "n_genes": len(transform["genes"]),
                            "n_keys": int(len(table)), "key": transform["key"], "options": opts["vae"]})
    if out_plot:
        vae_plot(history, report, out_plot)


def evaluate_profiles(opts: dict, tiles, heldout, reference, transform, out, features=None, grid=None):
    from histosynth.evaluate.features import extract
    from histosynth.expression.evaluate import profile_specificity
    from histosynth.report.plots import heldout_grid
    from histosynth.slides.store import load_tiles, read_index
    from histosynth.torch_utils.distributed import default_device

    o, dev = opts, default_device()
    key = json.loads(Path(transform).read_text())["key"]
    index = read_index(tiles)
    fake = read_index(heldout).reset_index(drop=True)
    real = index[index["kept"] & index[key].isin(set(fake["expression_key"]))].reset_index(drop=True)
    leaked = set(real["partition"]) - {"test"}
    if leaked:
        raise UserError(f"held-out profiles include {sorted(leaked)} patients: the specificity test is only "
                        f"meaningful on test patients the VAE and GAN never saw")
    result = {"key": key, "extractors": {}}
    for ex in o["extractors"]:
        fr, ff = extract([real, fake], ex, o, reference, dev, features)
        r = profile_specificity(real, fr, fake, ff, key, seed=o["seed"], kid_subset=o["kid_subset_size"])
        result["extractors"][ex] = r
        if r.get("pairs"):
            same = r["same_class"] or {}
            log.info("[%s] held-out profiles: FID to own tiles %.3f vs other patients' %.3f; own closer in %.0f%% of "
                     "pairs (p=%.3f); within class: gap %s, p=%s", ex, r["mean_fid_same"], r["mean_fid_other"],
                     100 * r["share_pairs_closer_to_own"], r["all_others"]["p_value_sign_flip"],
                     same.get("mean_gap"), same.get("p_value_sign_flip"))
    write_json(out, result)
    if grid:
        heldout_grid(real, load_tiles(real), fake, load_tiles(fake), key, grid)
