"""The run's report: ``summary.json`` (machine-readable, keys as in DESIGN.md) and a single
self-contained ``summary.html`` (images embedded)."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from histosynth.utils import atomic_path, write_json


def _img(path, width=None):
    p = Path(path)
    if not p.exists():
        return f"<p><i>missing: {html.escape(str(p))}</i></p>"
    raw = p.read_bytes()
    if width and p.suffix == ".png":  # embed at most twice the display width (sharp on HiDPI screens)
        import io

        from PIL import Image

        im = Image.open(io.BytesIO(raw))
        if im.width > 2 * width:
            im = im.resize((2 * width, max(1, round(im.height * 2 * width / im.width))), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, format="PNG", optimize=True)
            raw = buf.getvalue()
    data = base64.b64encode(raw).decode()
    mime = "image/gif" if p.suffix == ".gif" else "image/png"
    w = f' width="{width}"' if width else ""
    return f'<img src="data:{mime};base64,{data}"{w} style="image-rendering:pixelated">'


def _fmt(v, nd=3):
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    if isinstance(v, list) and len(v) == 2 and all(isinstance(x, float) for x in v):
        return f"[{v[0]:.{nd}f}, {v[1]:.{nd}f}]"
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c, ''))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def concordance_warning(c: dict) -> str:
    """A warning paragraph when the generator does not honour some of its conditions (weak
    concordance of a class below chance), else ''."""
    bad = c.get("below_chance") or []
    if not bad:
        return ""
    per = ", ".join(f"{k} ({c['per_class'][k]:.1%} of the tiles generated for it are assigned to it)" for k in bad)
    return (f"<p class=warn>The generator does not honour its condition for {html.escape(per)}: below chance "
            f"({c['chance']:.0%}). "
            "Its metrics then describe a generator of the other classes; look at the sample grid, and train longer "
            "or with another seed (short runs can settle on ignoring the condition).</p>")


# What "looks like its real tiles and honours its condition" means in the verdict: FID within
# 1.5x the real-vs-real floor, every class's FID within 2x the class's own floor, weak concordance
# at least 0.9, and every class's HED colour mean and spread within its real patients' range.
VERDICT_FID_RATIO, VERDICT_CLASS_FID_RATIO, VERDICT_CONCORDANCE = 1.5, 2.0, 0.9


def _colour_misses(colour: dict) -> list:
    """The colour check's statistics outside their range, farthest first, each with how far from
    the range's edge: a factor of the real patients' highest from 1.5x on, else a percentage."""
    rows = []
    for name in colour["outside"]:
        cls, _, stat = name.partition(" ")
        c = colour.get("per_class", {}).get(cls, {}).get("checks", {}).get(stat)
        if not c:
            rows.append((0.0, name))
            continue
        g, lo, hi = c["generated"], c["real_min"], c["real_max"]
        edge = hi if g > hi else lo
        if edge > 0 and g > 0:  # optical densities: a factor or a percentage of the edge
            far = g / edge if g > hi else edge / g
            how = (f"{far:.1f}x the highest" if far >= 1.5 else f"{far - 1:.0%} above") if g > hi \
                else f"{1 - g / edge:.0%} below"
        else:  # an edge or value at or below zero (DAB residual): the difference itself
            far, how = float("inf"), f"{abs(g - edge):.4f} {'above' if g > hi else 'below'}"
        rows.append((far, f"{name} {how}"))
    return [n for _, n in sorted(rows, key=lambda r: -r[0])]


def fidelity_verdict(metrics: dict, concordance: dict, colour: dict | None = None) -> dict:
    """A run's verdict in words from its FID against the real-vs-real floor (domain extractor when
    computed, else the first), each class's FID against the class's own floor (the overall floor
    for metrics computed without one), its concordance and its colour check
    (histosynth.evaluate.colour)."""
    ex = "domain" if "domain" in metrics else next(iter(metrics), None)
    if ex is None:
        return {"verdict": "not evaluated", "text": "No generative metrics were computed."}
    m = metrics[ex]
    floor = m["fid_real_vs_real"]
    if not floor > 0:
        return {"verdict": "not comparable", "extractor": ex,
                "text": f"The real-vs-real {ex}-FID floor is {floor:g}: there is no scale to judge the run's FID by."}
    ratio = m["fid"] / floor
    class_floor = m.get("per_class_floor") or {}
    per_class = {k: v / (class_floor[k] if class_floor.get(k, 0) > 0 else floor)
                 for k, v in (m.get("per_class_fid") or {}).items()}
    worst = max(per_class.items(), key=lambda kv: kv[1]) if per_class else None
    conc = concordance.get("weak") if "skipped" not in concordance else None
    problems = []
    if ratio > VERDICT_FID_RATIO:
        problems.append(f"its {ex}-FID is {ratio:.1f}x the real-vs-real floor (verdict threshold "
                        f"{VERDICT_FID_RATIO:g}x)")
    if worst and worst[1] > VERDICT_CLASS_FID_RATIO:
        problems.append(f"class {worst[0]}'s FID is {worst[1]:.1f}x {'its' if class_floor else 'the'} floor "
                        f"(threshold {VERDICT_CLASS_FID_RATIO:g}x)")
    if conc is not None and conc < VERDICT_CONCORDANCE:
        problems.append(f"only {conc:.1%} of its tiles are recognised as their condition (threshold "
                        f"{VERDICT_CONCORDANCE:.0%})")
    colour_ok = None if not colour or "passed" not in colour else colour["passed"]
    if colour_ok is False:
        out = _colour_misses(colour)
        problems.append(f"its colours leave the real patients' range ({len(out)} statistic{'s' if len(out) != 1 else ''}: "
                        + ", ".join(out[:4]) + (", ..." if len(out) > 4 else "") + ")")
    if problems:
        verdict = "not converged"
        text = ("Not converged: " + "; ".join(problems) + ". Its tiles do not yet look like the real tiles of their "
                "condition: look at the sample grid, and train longer (gan.kimg) before using them.")
    else:
        verdict = "close to real"
        text = (f"Close to real: {ex}-FID {ratio:.2f}x the real-vs-real floor"
                + (f", every class within {worst[1]:.2f}x" if worst else "")
                + (f", {conc:.1%} concordance" if conc is not None else "")
                + (", colours within the real patients' range" if colour_ok else "") + ".")
    if m.get("below_min_samples"):
        text += " (Below evaluate.min_samples: a small-sample FID, not comparable to published figures.)"
    return {"verdict": verdict, "extractor": ex, "fid_ratio": ratio, "worst_class": worst[0] if worst else None,
            "worst_class_ratio": worst[1] if worst else None, "concordance": conc, "colour_within_range": colour_ok, "text": text,
            "thresholds": {"fid_ratio": VERDICT_FID_RATIO, "class_fid_ratio": VERDICT_CLASS_FID_RATIO,
                           "concordance": VERDICT_CONCORDANCE}}


def colour_html(colour: dict | None) -> str:
    """The colour check (histosynth.evaluate.colour) as a table: per class and HED channel, the
    generated tiles' mean and spread against the real patients' range."""
    if not colour or "per_class" not in colour:
        return ""
    rows = []
    for cls, v in colour["per_class"].items():
        if v.get("no_range"):
            rows.append({"class": cls, "statistic": "-", "generated": "-", "real patients' range": "one patient: no range",
                         "within": "-"})
            continue
        for name, c in v["checks"].items():
            rows.append({"class": cls, "statistic": name.replace("_", " "), "generated": f"{c['generated']:.4f}",
                         "real patients' range": f"{c['real_min']:.4f} - {c['real_max']:.4f}"
                         + (" (to the pooled real tiles)" if c.get("extended") else ""),
                         "real tiles pooled": f"{c['real_pooled']:.4f}" if "real_pooled" in c else "-",
                         "within": "yes" if c["within"] else "NO"})
    return ("<h3>Colour</h3><p>Haematoxylin, eosin and DAB optical density (colour deconvolution): the mean and spread "
            "over the generated tiles' pixels of each class against the range over that class's real training "
            "patients. The control: the class's real training tiles pooled as the generated tiles are (each patient "
            "by its share of the tiles), which a generator that reproduced them would match; where a pooled spread "
            "lies above every patient's own (it also holds the differences between patients), the range reaches "
            "it.</p>" + _table(rows, list(rows[0]) if rows else []))


def verdict_html(v: dict) -> str:
    cls = "warn" if v["verdict"] == "not converged" else "ok"
    return f"<p class={cls}><b>Verdict</b>: {html.escape(v['text'])}</p>"


def _sites(tiles: pd.DataFrame) -> list[dict]:
    """Patients per site, partition and class, where the tiles carry a site (split.preserve_site,
    or a site column in the sample sheet)."""
    if "site" not in tiles.columns or "partition" not in tiles.columns:
        return []
    pats = tiles.drop_duplicates("patient_id")[["site", "partition", "patient_id"]].merge(
        tiles.groupby("patient_id")["label"].agg(lambda v: "|".join(sorted(set(map(str, v))))).reset_index(),
        on="patient_id")
    t = pats.groupby(["site", "partition", "label"]).size().unstack(fill_value=0)
    return [{"site": str(site), "partition": part, **{str(c): int(v) for c, v in row.items()}}
            for (site, part), row in t.iterrows()]


def _regions(tiles: pd.DataFrame) -> dict | None:
    """Annotated regions (tiles.roi): slides tiled inside regions, kept tiles per region class,
    and those dropped for an excluded or mixed region; None without regions."""
    if "roi_overlap" not in tiles.columns:
        return None
    inside = tiles[tiles["roi_overlap"].notna()]
    kept = inside[inside["kept"]]
    return {"slides_with_regions": int(inside["slide_id"].nunique()),
            "slides_without": int(tiles.loc[tiles["roi_overlap"].isna(), "slide_id"].nunique()),
            "kept_per_class": {str(k) or "(unclassified)": int(v) for k, v in kept["roi_class"].value_counts().items()},
            "dropped": {k: int((inside["reject_reason"] == k).sum()) for k in ("roi_excluded", "roi_mixed")}}


def training_record(gan_dir) -> dict:
    """What a run's folder says about how its network came to be: the snapshot metrics
    (metrics.jsonl), the network selected for everything downstream (selected.pt's record) and
    the network it was fine-tuned from."""
    from histosynth.gan.training.snapshots import read_series

    gan_dir = Path(gan_dir)
    opts = json.loads((gan_dir / "training_options.json").read_text())
    out = {}
    ft = opts.get("finetune")
    if ft:
        out["finetune"] = {k: ft.get(k) for k in ("source", "md5", "tool", "source_kind", "source_kimg", "classes",
                                                  "kept", "partly_kept", "new", "architecture_from_network")}
        out["finetune"]["freeze_d"] = opts.get("freeze_d", 0)
    series = read_series(gan_dir)
    if series:
        keys = ("kimg", "fid", "kid", "precision", "recall", "eval_sec", "eval_share")
        out["snapshot_metrics"] = {"extractor": series[0]["extractor"], "n_fake": series[0]["n_fake"],
                                   "n_real": series[0]["n_real"],
                                   "eval_share": float(sum(r["eval_sec"] for r in series)
                                                       / max(sum(r["train_sec"] for r in series), 1e-9)),
                                   "series": [{k: r[k] for k in keys if k in r} for r in series]}
    if (gan_dir / "selected.pt").is_file():
        from histosynth.gan.checkpoint import read_metadata

        out["selection"] = read_metadata(gan_dir / "selected.pt").get("selection")
    return out


def training_html(record: dict) -> str:
    """The selected network, the snapshot metrics and the fine-tuning start, as report paragraphs."""
    parts = []
    sel = record.get("selection")
    if sel:
        value = (f"; its {html.escape(str(sel['metric']).replace('one_minus_precision', '1 - precision'))} "
                 f"{sel['value']:.3f} ({html.escape(str(sel.get('extractor', '')))})" if sel.get("value") is not None
                 else "")
        parts.append(f"<p>Network used downstream (<code>generate.snapshot: {html.escape(str(sel['choice']))}</code>): "
                     f"the snapshot at <b>{sel['kimg']:g} kimg</b> of {sel['last_kimg']:g}{value}.</p>")
    sm = record.get("snapshot_metrics")
    if sm:
        rows = [{k: v for k, v in r.items() if k not in ("eval_share",)} for r in sm["series"]]
        parts.append(f"<p>Snapshot metrics during training ({sm['n_fake']} generated against {sm['n_real']} real "
                     f"training tiles, {html.escape(sm['extractor'])}): evaluation took {sm['eval_share']:.1%} of the "
                     f"training time.</p>" + _table(rows, list(rows[0])))
    ft = record.get("finetune")
    if ft:
        classes = ", ".join(f"{html.escape(k)} &larr; {html.escape(v) if v else 'new'}" for k, v in ft["classes"].items())
        parts.append(f"<p>Fine-tuned from <code>{html.escape(ft['source'])}</code> (MD5 {html.escape(ft['md5'])}, "
                     f"{html.escape(ft['tool'])}, {ft['source_kind']}, {ft['source_kimg']:g} kimg): {ft['kept']} tensors "
                     f"kept, partly kept: {html.escape(', '.join(ft['partly_kept']) or 'none')}; new: "
                     f"{html.escape(', '.join(ft['new']) or 'none')}. Label embedding per class: "
                     f"{classes or 'none (unconditional)'}. FreezeD: {ft['freeze_d']} discriminator blocks frozen.</p>")
    return "".join(parts)


def build_summary(sheet: pd.DataFrame, tiles: pd.DataFrame, gan_run: str, gan_dir, metrics: dict, study: dict) -> dict:
    kept = tiles[tiles["kept"]]
    per_slide = kept.groupby("slide_id").size().reindex(sheet["slide_id"], fill_value=0)
    opts = json.loads((Path(gan_dir) / "training_options.json").read_text())
    stats = [json.loads(x) for x in open(Path(gan_dir) / "stats.jsonl") if x.strip()]
    ev = metrics["metrics"]
    return {
        "slides": {"n": int(len(sheet)), "tiles": int(len(kept)), "zero_tile_slides": sorted(per_slide.index[per_slide == 0]),
                   "tiles_per_slide": {k: int(v) for k, v in per_slide.items()},
                   "rejected": {k: int(v) for k, v in tiles.loc[~tiles["kept"], "reject_reason"].value_counts().items()},
                   "patients": int(sheet["patient_id"].nunique()),
                   "md5_published": int((sheet.get("md5_checked_against", pd.Series(dtype=str)) == "published").sum()),
                   "partitions": {k: int(v) for k, v in kept.groupby("partition")["patient_id"].nunique().items()},
                   "sites": _sites(tiles), "regions": _regions(tiles)},
        "gan": {gan_run: {"kimg": stats[-1]["kimg"] if stats else 0, "resolution": opts["resolution"],
                          "conditioning": opts["conditioning"], "n_train_tiles": opts["n_train_tiles"],
                          "img_per_sec": stats[-1]["img_per_sec"] if stats else None, "device": opts["device"],
                          "imported": opts.get("imported"), **training_record(gan_dir)}},
        "metrics": {gan_run: ev},
        "concordance": {gan_run: metrics["concordance"]},
        "colour": {gan_run: metrics.get("colour")},
        "verdict": {gan_run: fidelity_verdict(ev, metrics["concordance"], metrics.get("colour"))},
        "classifier": study["metrics"],
        "classifier_differences": study.get("differences") or {},
        "classifier_baselines": study.get("baselines") or {},
        "study_gan_patients_known": study.get("gan_training_patients_known", True),
        "classifier_cross_validation": study.get("cross_validation"),
    }


def add_expression_run(summary: dict, run: str, gan_dir, eval_dir, expression_dir) -> None:
    """The expression-conditioned run's numbers into `summary` (gan, metrics, concordance,
    and `expression`: VAE reconstruction, profile specificity, what was generated)."""
    gan_dir, eval_dir, expression_dir = Path(gan_dir), Path(eval_dir), Path(expression_dir)
    if run not in summary["gan"]:
        opts = json.loads((gan_dir / "training_options.json").read_text())
        stats = [json.loads(x) for x in open(gan_dir / "stats.jsonl") if x.strip()]
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        summary["gan"][run] = {"kimg": stats[-1]["kimg"] if stats else 0, "resolution": opts["resolution"],
                               "conditioning": opts["conditioning"], "n_train_tiles": opts["n_train_tiles"],
                               "img_per_sec": stats[-1]["img_per_sec"] if stats else None, "device": opts["device"],
                               **training_record(gan_dir)}
        summary["metrics"][run] = metrics["metrics"]
        summary["concordance"][run] = metrics["concordance"]
        summary.setdefault("colour", {})[run] = metrics.get("colour")
    summary.setdefault("verdict", {})[run] = fidelity_verdict(summary["metrics"][run], summary["concordance"][run],
                                                              (summary.get("colour") or {}).get(run))
    vae = json.loads((expression_dir / "vae_report.json").read_text())
    spec = json.loads((eval_dir / "profiles.json").read_text())
    summary.setdefault("expression", {})[run] = {
        "key": vae["key"], "n_profiles": vae["n_keys"], "n_genes": vae["n_genes"], "latent": vae["options"]["latent"],
        "beta": vae["options"]["beta"], "vae_reconstruction": vae["reconstruction"],
        "profile_specificity": {ex: {k: v for k, v in r.items() if k != "per_key"} for ex, r in spec["extractors"].items()},
        "profile_specificity_per_key": {ex: r["per_key"] for ex, r in spec["extractors"].items()},
    }


def expression_html(summary: dict, run: str, eval_dir, expression_dir) -> str:
    eval_dir, expression_dir = Path(eval_dir), Path(expression_dir)
    e = summary["expression"][run]
    g = summary["gan"][run]
    parts = [f"<h2>Expression-conditioned run: {html.escape(run)}</h2>",
             f"<p>A β-VAE (latent {e['latent']}, β {e['beta']}) embeds each {'patient' if e['key'] == 'patient_id' else 'slide'}'s profile "
             f"({e['n_genes']} genes, standardised with training-patient statistics, {e['n_profiles']} profiles); the "
             f"GAN is conditioned on the embedding's posterior mean ({g['kimg']:.1f} kimg, {g['n_train_tiles']} training "
             f"tiles). The GAN and the VAE never saw the test patients.</p>" + training_html(g)]
    rows = [{"partition": p, "profiles": r["n"], "VAE MSE per gene": r["mse"], "mean-profile MSE": r["mse_mean_profile"],
             "R²": r["r2"]} for p, r in e["vae_reconstruction"].items()]
    parts.append("<h3>β-VAE reconstruction</h3><p>Error of the reconstruction from the posterior mean, against "
                 "predicting every gene at its training mean; the test row is patients the VAE never saw.</p>"
                 + _table(rows, list(rows[0])) + _img(expression_dir / "vae.png", 760))
    rows = []
    for ex, m in summary["metrics"][run].items():
        rows.append({"extractor": ex, "FID": m["fid"], "FID real-vs-real floor": m["fid_real_vs_real"], "KID": m["kid_mean"],
                     "precision": m["precision"], "recall": m["recall"], "n per side": m["n_real"],
                     "flag": "BELOW min_samples" if m["below_min_samples"] else ""})
    c = summary["concordance"][run]
    parts.append("<h3>Generative metrics (tiles from training patients' profiles)</h3>" + _table(rows, list(rows[0]))
                 + f"<p>Concordance: the reference classifier assigns {c['weak']:.1%} of these tiles to the class of the "
                   f"patient whose profile generated them ({c['strong']:.1%} strongly).</p>" + concordance_warning(c)
                 + (verdict_html(summary["verdict"][run]) if run in summary.get("verdict", {}) else "")
                 + colour_html((summary.get("colour") or {}).get(run))
                 + copies_html((summary.get("copies_full") or {}).get(run), eval_dir)
                 + projection_html((summary.get("projection") or {}).get(run), eval_dir))
    parts.append("<h3>Does the profile carry tissue information? (held-out test patients)</h3>"
                 "<p>For each test patient, tiles generated from its profile are compared with its own real tiles and, "
                 "at the same sample size, with each other test patient's real tiles; gap = FID(other) − FID(same), "
                 "so a positive gap means the generated tiles look more like their own patient. Small per-patient "
                 "samples make each FID noisy; the sign-flip test over patients is one-sided and its smallest "
                 "attainable p-value is shown.</p>")
    for ex, r in e["profile_specificity"].items():
        if not r.get("pairs"):
            parts.append(f"<p class=warn>[{html.escape(ex)}] {html.escape(r.get('note', 'no comparison possible'))}</p>")
            continue
        parts.append(f"<p>[{html.escape(ex)}] mean FID of a patient's generated tiles to its own real tiles "
                     f"<b>{r['mean_fid_same']:.3f}</b>, to other test patients' <b>{r['mean_fid_other']:.3f}</b>; "
                     f"own patient closer in {r['share_pairs_closer_to_own']:.0%} of {r['pairs']} pairs.</p>")
        rows = []
        for name, what in (("all_others", "all other test patients (mostly: does the profile carry the class?)"),
                           ("same_class", "other test patients of the same class (anything beyond the class?)")):
            t = r.get(name)
            if t:
                rows.append({"compared with": what, "patients": t["n_keys"], "mean gap": t["mean_gap"],
                             "patients closer to own": f"{t['share_keys_closer_to_own']:.0%}",
                             "sign-flip p": t["p_value_sign_flip"], "smallest attainable p": t["min_attainable_p"]})
            else:
                rows.append({"compared with": what, "patients": 0, "mean gap": "n/a (one test patient per class)"})
        parts.append(_table(rows, ["compared with", "patients", "mean gap", "patients closer to own", "sign-flip p",
                                   "smallest attainable p"]))
        cols = ["key", "label", "n_real", "n_fake", "fid_same", "fid_other", "gap", "gap_same_class", "gap_other_class"]
        parts.append(_table(e["profile_specificity_per_key"][ex], cols))
    parts.append("<p>Per test patient: real tiles (left), tiles generated from its profile (right).</p>"
                 + _img(eval_dir / "heldout.png", 760))
    parts.append("<h3>Interpolating between two training profiles</h3><p>Same latent seed per row; the condition "
                 "moves from a profile of the first class to one of the second.</p>" + _img(eval_dir / "blend.png", 640)
                 + "<p>Latent interpolation, one training profile per class per row.</p>" + _img(eval_dir / "latent.png", 640))
    if (eval_dir / "profiles.png").exists():
        parts.append("<h3>Tiles from new and sampled profiles</h3><p>One row per profile: the CSV of new profiles "
                     "(<code>profile-*</code>) and samples from the VAE prior (<code>vae-sample-*</code>).</p>"
                     + _img(eval_dir / "profiles.png", 640))
    return "".join(parts)


def add_mask_run(summary: dict, run: str, gan_dir, eval_dir) -> None:
    """The layout-conditioned run into `summary`: gan, metrics (tiles from training maps) and
    `masks.<run>` (layout fidelity and FID on held-out maps)."""
    gan_dir, eval_dir = Path(gan_dir), Path(eval_dir)
    opts = json.loads((gan_dir / "training_options.json").read_text())
    stats = [json.loads(x) for x in open(gan_dir / "stats.jsonl") if x.strip()]
    lay = json.loads((eval_dir / "layout.json").read_text())
    summary["gan"][run] = {"kimg": stats[-1]["kimg"] if stats else 0, "resolution": opts["resolution"],
                           "conditioning": "mask", "method": opts["mask"]["method"], "n_train_tiles": opts["n_train_tiles"],
                           "img_per_sec": stats[-1]["img_per_sec"] if stats else None, "device": opts["device"],
                           **training_record(gan_dir)}
    summary["metrics"][run] = lay["metrics"]
    summary.setdefault("masks", {})[run] = {"method": lay["method"], "source": lay["source"], "segmenter": lay["segmenter"],
                                            "layout": lay["layout"], "metrics_heldout": lay["metrics_heldout"]}


def mask_html(summary: dict, run: str, gan_dir, eval_dir) -> str:
    gan_dir, eval_dir = Path(gan_dir), Path(eval_dir)
    g, mk = summary["gan"][run], summary["masks"][run]
    lay = mk["layout"]
    src = {"auto": "colour deconvolution of each real tile (background / stroma / nuclei)",
           "geojson": "QuPath GeoJSON annotations rasterised at each tile's microns",
           "pannuke": "PanNuke nucleus masks"}[mk["source"]]
    seg = ("the same colour-deconvolution segmenter that made the maps" if mk["segmenter"].endswith(".json")
           else "a U-Net trained on real training tiles and their maps")
    parts = [f"<h2>Layout-conditioned run: {html.escape(run)}</h2>",
             f"<p>{html.escape(mk['method'])} generator conditioned on semantic label maps from {src}; "
             f"{g['kimg']:.1f} kimg on {g['n_train_tiles']} training tiles. Test patients' maps were never seen in "
             f"training.</p>",
             "<h3>Held-out triplets: label map, real tile, synthetic tile</h3>" + _img(eval_dir / "triplets.png", 480),
             f"<h3>Layout fidelity ({lay['n_maps']} held-out maps, {lay['n_patients']} patients)</h3>"
             f"<p>Each generated tile is segmented with {seg} and compared with the map it was generated from "
             f"(IoU per class over all pixels; 95% CI by bootstrap over patients). <b>real</b>: the real tiles "
             f"segmented the same way (the ceiling{'; 1 by construction, since the maps are that segmentation' if mk['segmenter'].endswith('.json') else ''}); "
             f"<b>chance</b>: generated tiles against other tiles' maps (a generator ignoring the layout).</p>"]
    rows = []
    for what in ("generated", "real", "chance"):
        r = lay.get(what)
        if r:
            rows.append({"": what, "mIoU": r["miou"], "mIoU 95% CI": r["miou_ci95"] or "n/a", "pixel accuracy": r["pixel_accuracy"],
                         **{f"IoU {k}": (v if v is not None else "n/a") for k, v in r["iou"].items()}})
    parts.append(_table(rows, list(rows[0])))
    rows = []
    for name, ms in (("tiles from training maps vs real training tiles", summary["metrics"][run]),
                     ("tiles from held-out maps vs real test tiles", mk["metrics_heldout"])):
        for ex, m in ms.items():
            rows.append({"set": name, "extractor": ex, "FID": m["fid"], "FID real-vs-real floor": m["fid_real_vs_real"],
                         "KID": m["kid_mean"], "precision": m["precision"], "recall": m["recall"], "n per side": m["n_real"],
                         "flag": "BELOW min_samples" if m["below_min_samples"] else ""})
    parts.append("<h3>Generative metrics</h3>" + _table(rows, list(rows[0])))
    parts.append(copies_html((summary.get("copies_full") or {}).get(run), eval_dir))
    parts.append("<p>Training: losses by kimg.</p>" + _img(eval_dir / "training.png") + training_html(g))
    return "".join(parts)


def copies_summary(copies: dict) -> dict:
    """The copy audit (copies.json) as summary.json keeps it: the verdict and, per feature space,
    the nearest-neighbour test at the null's 1st percentile, C_T and authenticity."""
    per = {}
    for ex, r in copies["extractors"].items():
        p1 = r["nearest_neighbour"]["p1"]
        per[ex] = {"share_below_p1": p1["share"], "expected": p1["expected"], "p_value": p1["p_value"],
                   "c_t": r["data_copying"]["c_t"], "authenticity": r["authenticity"]["generated"],
                   "authenticity_heldout": r["authenticity"]["heldout"], "flagged": copies["n_flagged"].get(ex, 0)}
    return {"verdict": copies["verdict"]["verdict"], "text": copies["verdict"]["text"],
            "thresholds": copies["verdict"]["thresholds"], "n": copies["n"], "transforms": copies["transforms"],
            "spaces": per}


def copies_html(copies: dict | None, eval_dir) -> str:
    """The copy audit's section: verdict, the tests per feature space and the closest pairs."""
    if not copies:
        return ""
    s = copies_summary(copies)
    voting = copies["verdict"].get("voting", list(s["spaces"]))
    rows = [{"space": ex, "in the verdict": "yes" if ex in voting else "no (reported)",
             "below null's 1st pct.": f"{v['share_below_p1']:.1%} (expected {v['expected']:.0%})",
             "binomial p": f"{v['p_value']:.2g}", "C_T": "-" if v["c_t"] is None else f"{v['c_t']:.2f}",
             "authenticity": f"{v['authenticity']:.3f} (held-out {v['authenticity_heldout']:.3f})",
             "flagged tiles": v["flagged"]} for ex, v in s["spaces"].items()]
    n = s["n"]
    cls = "warn" if s["verdict"] == "copying" else ""
    return (f"<h3>Copy audit</h3><p>{n['audited']} generated tiles against {n['training']} training tiles "
            f"({n['training_patients']} patients), with {n['heldout']} tiles of {n['heldout_patients']} held-out "
            f"patients as the null, each tile searched in {copies['views']} views ({html.escape(s['transforms'])}). "
            "A tile is flagged when it lies closer to a training tile than 99% of held-out patients' tiles do.</p>"
            f"<p class='{cls}'><b>{html.escape(s['verdict'])}</b>: {html.escape(s['text'])}</p>"
            + "".join(f"<p>{html.escape(ex)} is reported, not counted: {html.escape(why)}.</p>"
                      for ex, why in copies["verdict"].get("not_voting", {}).items())
            + _table(rows, list(rows[0]) if rows else [])
            + "<p>Closest pairs (generated, training):</p>" + _img(Path(eval_dir) / "copies.png", 640))


def projection_html(p: dict | None, eval_dir) -> str:
    """The projection section: reconstruction quality against the class-mean image, the
    counterfactuals' probabilities, and the grid (generate.project)."""
    if not p:
        return ""
    rec, base, ci = p["reconstruction"], p["mean_image"], p["reconstruction_ci95"]
    text = (f"<h3>Real tiles projected</h3><p>{p['n_tiles']} real {html.escape(p['partition'])} tiles projected "
            f"({p['steps']} steps, {'W+' if p['w_plus'] else 'one w'}, noise {html.escape(p['noise'])}, "
            f"{p['seconds_per_tile']:.1f} s per tile). Reconstruction: PSNR {rec['psnr']:.2f} dB (95% CI "
            f"{ci['psnr'][0]:.2f}-{ci['psnr'][1]:.2f}), SSIM {rec['ssim']:.3f}, perceptual distance "
            f"{rec['feature_distance']:.3f}; the tile's class-mean image: {base['psnr']:.2f} dB, {base['ssim']:.3f}, "
            f"{base['feature_distance']:.3f}. The reconstruction is closer than the class-mean image for "
            f"{p['better_than_mean_image']:.0%} of tiles.</p>")
    if p["counterfactual"]:
        rows = [{"layers": g, "P(other class) at the tile": v["p_target_start"],
                 "P(other class) moved": v["p_target_end"], "tiles moved towards it": f"{v['moved_towards_target']:.0%}",
                 "tiles crossing 0.5": f"{v['crossed']:.0%}", "mean crossing point": v["crossing_mean"]}
                for g, v in p["counterfactual"].items()]
        text += ("<p>Counterfactuals: the projected w moved to the other condition (the other condition's mean w "
                 "minus the tile's: the next class, attribute value, or another label's training profile), in all "
                 "layers or one group; the reference classifier's probability of the other class:</p>"
                 + _table(rows, list(rows[0])))
    elif p.get("counterfactual_skipped"):
        text += f"<p>{html.escape(p['counterfactual_skipped'])}.</p>"
    return (text + "<p>Rows: real tile, reconstruction, the mean image of its condition, counterfactual in "
            + html.escape(", ".join(p["groups"])) + " layers.</p>" + _img(eval_dir / "projection.png", 560))


def _crossing_text(t) -> str:
    return "never" if t is None else f"{t:.2f}"


def write_html(summary: dict, out_html, *, gan_run, gan_dir, eval_dir, classify_dir, qc_thumbs: dict, notes: dict,
               extra_sections=()):
    gan_dir, eval_dir, classify_dir = Path(gan_dir), Path(eval_dir), Path(classify_dir)
    fakes = sorted((gan_dir / "samples").glob("fakes*.png"))
    parts = [f"<h1>histosynth report</h1><p>{html.escape(notes.get('run', ''))}</p>"]
    s = summary["slides"]
    parts.append(f"<h2>Slides and tiles</h2><p>{s['n']} slides from {s['patients']} patients "
                 f"({s['md5_published']} verified against a published MD5, the others' MD5 recorded by us in "
                 f"results/acquire/slides.verified.tsv); {s['tiles']} tiles kept. "
                 f"Patients per partition: {html.escape(json.dumps(s['partitions']))}. "
                 f"Rejected tiles by filter: {html.escape(json.dumps(s['rejected']))}.</p>")
    if s.get("regions"):
        r = s["regions"]
        parts.append(f"<p>Tiled inside QuPath regions (tiles.roi): {r['slides_with_regions']} slides with a region "
                     f"file, {r['slides_without']} without; kept tiles per region class "
                     f"{html.escape(json.dumps(r['kept_per_class']))}; dropped for an excluded region "
                     f"{r['dropped']['roi_excluded']}, for lying in two classes' regions {r['dropped']['roi_mixed']}. "
                     f"The thumbnails outline the regions in their QuPath colours.</p>")
    if s.get("sites"):
        parts.append("<p>Patients per tissue source site, partition and class (every site in one partition: "
                     "split.preserve_site):</p>" + _table(s["sites"], list(s["sites"][0])))
    if s["zero_tile_slides"]:
        parts.append(f"<p class=warn><b>Slides with zero tiles:</b> {html.escape(', '.join(s['zero_tile_slides']))}</p>")
    else:
        parts.append("<p>No slide yielded zero tiles.</p>")
    parts.append(_table([{"slide": k, "tiles": v} for k, v in s["tiles_per_slide"].items()], ["slide", "tiles"]))
    parts.append("<p>QC thumbnails: tissue mask (dark blue outside), kept tiles green, rejected: blue pen, "
                 "grey white/grayspace, orange blur"
                 + ("; regions outlined in their QuPath colours, excluded regions shaded, magenta: tile in an "
                    "excluded region, violet: tile in two classes' regions" if s.get("regions") else "")
                 + ".</p><div class=grid>")
    for sid, p in qc_thumbs.items():
        parts.append(f"<figure>{_img(p, 220)}<figcaption>{html.escape(sid)}</figcaption></figure>")
    parts.append("</div>")
    g = summary["gan"][gan_run]
    if g.get("imported"):
        imp = g["imported"]
        parts.append(f"<h2>GAN: {html.escape(gan_run)}</h2><p class=warn>Network <b>imported</b>, not trained by this "
                     f"workflow: {html.escape(imp['source'])} (MD5 {html.escape(imp['md5'])}, from "
                     f"{html.escape(imp['tool'])}); {g['conditioning']}-conditional, {g['resolution']} px. Which "
                     f"patients it was trained on is {'recorded in the file' if imp['tool'] == 'histosynth' else 'unknown to histosynth'}."
                     f"</p>")
    else:
        parts.append(f"<h2>GAN: {html.escape(gan_run)}</h2><p>{g['conditioning']}-conditional, {g['resolution']} px, "
                     f"{g['kimg']:.1f} kimg on {html.escape(str(g['device']))}, {g['n_train_tiles']} training tiles.</p>")
    parts.append("<div class=grid><figure>" + _img(gan_dir / "samples" / "reals.png", 420) +
                 "<figcaption>real training tiles (one row per class)</figcaption></figure><figure>" +
                 (_img(fakes[-1], 420) if fakes else "") + "<figcaption>generated, same classes per row (G_ema)</figcaption></figure></div>")
    parts.append(_img(eval_dir / "training.png") + training_html(g))
    parts.append("<h3>Class blending</h3><p>Same latent seed per row; the class condition moves from the first class "
                 "to the second, left to right.</p>" + _img(eval_dir / "blend.png", 640) + " " + _img(eval_dir / "blend.gif", 640))
    bp = summary.get("blend", {}).get(gan_run)
    if bp and "groups" in bp:
        cross = "; ".join(f"{g}: {_crossing_text(v['crossing'])}" for g, v in bp["groups"].items())
        parts.append(f"<h3>Blending analysed</h3><p>The reference classifier's probability of "
                     f"<i>{html.escape(bp['class'])}</i> along the blend from {html.escape(bp['from'])} to "
                     f"{html.escape(bp['to'])}, with the embedding blended in all layers or in one group of layers "
                     f"only; it reaches 0.5 at blend point {html.escape(cross)} (mean over {len(bp['seeds'])} "
                     f"seeds). Rows of the second image: the layer groups, first seed. Video: "
                     f"<a href='../evaluate/{html.escape(gan_run)}/blend.mp4'>blend.mp4</a>.</p>"
                     + _img(eval_dir / "blend_probability.png", 520) + " " + _img(eval_dir / "blend_layers.png", 640))
    parts.append(projection_html((summary.get("projection") or {}).get(gan_run), eval_dir))
    if (eval_dir / "attributes.png").exists():
        parts.append("<h3>Per-attribute interpolation</h3><p>One seed; from the first combination of attribute values, "
                     "each row moves one attribute to another of its values while the others stay fixed.</p>"
                     + _img(eval_dir / "attributes.png", 640))
    parts.append("<h3>Latent interpolation</h3><p>Same class per row; the latent moves along the great circle between "
                 "two seeds, left to right.</p>" + _img(eval_dir / "latent.png", 640) + " " + _img(eval_dir / "latent.gif", 640))
    parts.append("<h2>Generative metrics</h2>")
    parts.append(f"<p>{html.escape(notes.get('extractors', ''))}</p>")
    rows = []
    for ex, m in summary["metrics"][gan_run].items():
        rows.append({"extractor": ex, "FID": m["fid"], "FID real-vs-real floor": m["fid_real_vs_real"], "KID": m["kid_mean"],
                     "KID std": m["kid_std"], "precision": m["precision"], "recall": m["recall"], "n per side": m["n_real"],
                     "per-class FID (its floor)": ", ".join(
                         f"{k}: {v:.2f}" + (f" ({m['per_class_floor'][k]:.2f})" if k in (m.get("per_class_floor") or {})
                                            else "") for k, v in m["per_class_fid"].items()),
                     "flag": "BELOW min_samples: not comparable to published FIDs" if m["below_min_samples"] else ""})
    parts.append(_table(rows, list(rows[0]) if rows else []))
    if gan_run in summary.get("verdict", {}):
        parts.append(verdict_html(summary["verdict"][gan_run]))
    parts.append(colour_html((summary.get("colour") or {}).get(gan_run)))
    parts.append(copies_html((summary.get("copies_full") or {}).get(gan_run), eval_dir))
    for ex, m in summary["metrics"][gan_run].items():
        if m["fid"] <= m["fid_real_vs_real"] or m["kid_mean"] <= m["kid_real_vs_real"]:
            parts.append(f"<p class=warn>[{html.escape(ex)}] FID or KID is at or below the real-vs-real floor. The floor "
                         "compares real tiles of <i>other</i> patients, while the generator learned from all training "
                         "patients, so a generator that reproduces class-level statistics can reach it; read it together "
                         f"with recall ({m['recall']:.2f}: the share of real tiles the generated set covers) and the "
                         "sample grids, not as 'indistinguishable from real'.</p>")
    for ex, m in summary["metrics"][gan_run].items():
        for col, fids in (m.get("per_attribute_fid") or {}).items():
            parts.append(f"<p>[{html.escape(ex)}] FID per value of <i>{html.escape(col)}</i>: "
                         + html.escape(", ".join(f"{k}: {v:.2f}" for k, v in fids.items())) + "</p>")
    c = summary["concordance"][gan_run]
    if "skipped" in c:
        parts.append(f"<h3>Concordance</h3><p>Not computed: {html.escape(c['skipped'])}.</p>")
    else:
        parts.append(f"<h3>Concordance</h3><p>The reference classifier (real training tiles only, predicting "
                     f"<i>{html.escape(c.get('target', 'label'))}</i>) assigns "
                     f"<b>{c['weak']:.1%}</b> of generated tiles to their intended class (weak concordance) and "
                     f"<b>{c['strong']:.1%}</b> with probability ≥ {c['strong_threshold']} (strong), over {c['n']} "
                     f"tiles.</p>" + concordance_warning(c))
    cv = summary.get("classifier_cross_validation")
    if cv:
        parts.append(f"<h2>Augmentation study ({cv['folds']}-fold cross-validation by patient)</h2>"
                     + _img(classify_dir / "study.png")
                     + f"<p>Every one of the {cv['test_patients']} patients is a test patient once: for each fold a GAN "
                     f"and every arm were trained on the other folds' patients only (results/folds/). Each metric is "
                     f"the mean over folds of the seed-averaged fold metric; its 95% interval comes from a bootstrap "
                     f"over patients within each fold, with the models fixed, so it does not include the variation "
                     f"between folds' models: read it with the SD over folds beside it.</p>")
        rows = [{"arm": a, **{f"fold {f['fold']} AUC": f["auc"] for f in m["folds"]}, "SD over folds": m["auc_fold_std"],
                 **{f"fold {f['fold']} bal. acc.": f["balanced_accuracy"] for f in m["folds"]},
                 "bal. acc. SD over folds": m["balanced_accuracy_fold_std"]}
                for a, m in summary["classifier"].items()]
        parts.append("<h3>Per fold</h3>" + _table(rows, list(rows[0]) if rows else []))
    else:
        parts.append("<h2>Augmentation study (held-out real test patients)</h2>" + _img(classify_dir / "study.png"))
    if not summary.get("study_gan_patients_known", True):
        parts.append("<p class=warn>The generator's training patients are unknown (imported network), so it may have "
                     "seen this study's test patients: the synthetic and mixed arms can be optimistic. Read their gains "
                     "as an upper bound.</p>")
    rows = [{"arm": a, "AUC": m["auc"], "AUC 95% CI": m["auc_ci95"], "balanced acc.": m["balanced_accuracy"],
             "bal. acc. 95% CI": m["balanced_accuracy_ci95"], "F1": m["f1"], "seeds": m["n_seeds"],
             "test patients": m["n_test_patients"], "real train tiles": m["n_train_real"],
             "synthetic train tiles": m["n_train_synthetic"]} for a, m in summary["classifier"].items()]
    parts.append(_table(rows, list(rows[0]) if rows else []))
    diffs = summary.get("classifier_differences") or {}
    if diffs:
        rows = [{"comparison": k, "AUC difference": d["auc"], "AUC diff. 95% CI": d["auc_ci95"] if d["auc_ci95"][0]
                 is not None else "n/a", "p (AUC)": "n/a" if d["auc_p"] is None else f"{d['auc_p']:.3g}",
                 "bal. acc. difference": d["balanced_accuracy"], "bal. acc. diff. 95% CI": d["balanced_accuracy_ci95"],
                 "p (bal. acc.)": "n/a" if d["balanced_accuracy_p"] is None else f"{d['balanced_accuracy_p']:.3g}"}
                for k, d in diffs.items()]
        parts.append("<h3>Paired differences</h3><p>Each arm against real tiles alone, on the same test patients and "
                     "seeds: the difference of the seed-averaged metric, its 95% interval from a paired bootstrap over "
                     "test patients (both arms recomputed on each replicate's patients) and a two-sided p-value for no "
                     "difference. This, not the overlap of the arms' own intervals, says whether an arm differs; "
                     "with few test patients the smallest attainable p-value is large.</p>"
                     + _table(rows, list(rows[0])))
    for frac, b in (summary.get("classifier_baselines") or {}).items():
        lines = []
        for k in b["comparisons"]:
            d = diffs.get(k)
            if d and d["auc_ci95"][0] is not None:
                lines.append(f"{html.escape(k)}: AUC {d['auc']:+.3f} (95% CI {d['auc_ci95'][0]:+.3f} to "
                             f"{d['auc_ci95'][1]:+.3f}, p {d['auc_p']:.3g})")
        if lines:
            parts.append(f"<p><b>Against the best augmentation-only arm</b> ({html.escape(b['best_baseline'])}, AUC "
                         f"{b['auc']:.3f}{'' if frac == '1' else f', real fraction {html.escape(frac)}'}): "
                         + "; ".join(lines) + ". This is the comparison that says whether synthetic tiles add "
                         "anything that standard augmentation does not.</p>")
    parts.append(f"<p>{html.escape(notes.get('study', ''))}</p>")
    parts.extend(extra_sections)
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:8px}"
           "figure{margin:0}figcaption{font-size:12px}.warn{color:#a00}")
    doc = f"<!doctype html><html><head><meta charset=utf-8><title>histosynth report</title><style>{css}</style></head><body>{''.join(parts)}</body></html>"
    with atomic_path(out_html) as tmp:
        tmp.write_text(doc)


def notes_for(run_name: str, metrics: dict) -> dict:
    """The report's explanatory notes: the run's name, what each extractor is, how the study reads."""
    ex = "; ".join(f"{k}: {'standard TF-compatible Inception-v3 (torch-fidelity)' if k == 'inception-v3' else metrics['domain_extractor'] + ' - needs no download; comparable only within this run, not with published FIDs'}"
                   for k in metrics["metrics"])
    return {"run": run_name,
            "extractors": "Extractors - " + ex + ". The floor is FID between two patient-disjoint halves of the real "
            "training tiles with the same n; a FID near the floor means the generated set is as close to the reals as "
            "reals are to each other.",
            "study": "Each arm: same architecture and number of steps, several seeds; metrics on tiles of held-out test "
            "patients (never seen by the GAN or any classifier), averaged over seeds; 95% CIs from a bootstrap over test "
            "patients. With few test patients the intervals are wide; whether two arms differ is read from the "
            "paired differences."}


def write_summary_json(summary, path):
    write_json(path, summary)
