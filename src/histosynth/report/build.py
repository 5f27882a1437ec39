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
                   "partitions": {k: int(v) for k, v in kept.groupby("partition")["patient_id"].nunique().items()}},
        "gan": {gan_run: {"kimg": stats[-1]["kimg"] if stats else 0, "resolution": opts["resolution"],
                          "conditioning": opts["conditioning"], "n_train_tiles": opts["n_train_tiles"],
                          "img_per_sec": stats[-1]["img_per_sec"] if stats else None, "device": opts["device"]}},
        "metrics": {gan_run: ev},
        "concordance": {gan_run: metrics["concordance"]},
        "classifier": study["metrics"],
    }


def write_html(summary: dict, out_html, *, gan_run, gan_dir, eval_dir, classify_dir, qc_thumbs: dict, notes: dict):
    gan_dir, eval_dir, classify_dir = Path(gan_dir), Path(eval_dir), Path(classify_dir)
    fakes = sorted((gan_dir / "samples").glob("fakes*.png"))
    parts = [f"<h1>histosynth report</h1><p>{html.escape(notes.get('run', ''))}</p>"]
    s = summary["slides"]
    parts.append(f"<h2>Slides and tiles</h2><p>{s['n']} slides from {s['patients']} patients "
                 f"({s['md5_published']} verified against a published MD5, the others' MD5 recorded by us in "
                 f"results/acquire/slides.verified.tsv); {s['tiles']} tiles kept. "
                 f"Patients per partition: {html.escape(json.dumps(s['partitions']))}. "
                 f"Rejected tiles by filter: {html.escape(json.dumps(s['rejected']))}.</p>")
    if s["zero_tile_slides"]:
        parts.append(f"<p class=warn><b>Slides with zero tiles:</b> {html.escape(', '.join(s['zero_tile_slides']))}</p>")
    else:
        parts.append("<p>No slide yielded zero tiles.</p>")
    parts.append(_table([{"slide": k, "tiles": v} for k, v in s["tiles_per_slide"].items()], ["slide", "tiles"]))
    parts.append("<p>QC thumbnails: tissue mask (dark blue outside), kept tiles green, rejected: blue pen, "
                 "grey white/grayspace, orange blur.</p><div class=grid>")
    for sid, p in qc_thumbs.items():
        parts.append(f"<figure>{_img(p, 220)}<figcaption>{html.escape(sid)}</figcaption></figure>")
    parts.append("</div>")
    g = summary["gan"][gan_run]
    parts.append(f"<h2>GAN: {html.escape(gan_run)}</h2><p>{g['conditioning']}-conditional, {g['resolution']} px, "
                 f"{g['kimg']:.1f} kimg on {html.escape(str(g['device']))}, {g['n_train_tiles']} training tiles.</p>")
    parts.append("<div class=grid><figure>" + _img(gan_dir / "samples" / "reals.png", 420) +
                 "<figcaption>real training tiles (one row per class)</figcaption></figure><figure>" +
                 (_img(fakes[-1], 420) if fakes else "") + "<figcaption>generated, same classes per row (G_ema)</figcaption></figure></div>")
    parts.append(_img(eval_dir / "training.png"))
    parts.append("<h3>Class blending</h3><p>Same latent seed per row; the class condition moves from the first class "
                 "to the second, left to right.</p>" + _img(eval_dir / "blend.png", 640) + " " + _img(eval_dir / "blend.gif", 640))
    parts.append("<h2>Generative metrics</h2>")
    parts.append(f"<p>{html.escape(notes.get('extractors', ''))}</p>")
    rows = []
    for ex, m in summary["metrics"][gan_run].items():
        rows.append({"extractor": ex, "FID": m["fid"], "FID real-vs-real floor": m["fid_real_vs_real"], "KID": m["kid_mean"],
                     "KID std": m["kid_std"], "precision": m["precision"], "recall": m["recall"], "n per side": m["n_real"],
                     "per-class FID": ", ".join(f"{k}: {v:.2f}" for k, v in m["per_class_fid"].items()),
                     "flag": "BELOW min_samples: not comparable to published FIDs" if m["below_min_samples"] else ""})
    parts.append(_table(rows, list(rows[0]) if rows else []))
    for ex, m in summary["metrics"][gan_run].items():
        if m["fid"] <= m["fid_real_vs_real"] or m["kid_mean"] <= m["kid_real_vs_real"]:
            parts.append(f"<p class=warn>[{html.escape(ex)}] FID or KID is at or below the real-vs-real floor. The floor "
                         "compares real tiles of <i>other</i> patients, while the generator learned from all training "
                         "patients, so a generator that reproduces class-level statistics can reach it; read it together "
                         f"with recall ({m['recall']:.2f}: the share of real tiles the generated set covers) and the "
                         "sample grids, not as 'indistinguishable from real'.</p>")
    c = summary["concordance"][gan_run]
    parts.append(f"<h3>Concordance</h3><p>The reference classifier (real training tiles only) assigns "
                 f"<b>{c['weak']:.1%}</b> of generated tiles to their intended class (weak concordance) and "
                 f"<b>{c['strong']:.1%}</b> with probability ≥ {c['strong_threshold']} (strong), over {c['n']} tiles.</p>")
    parts.append("<h2>Augmentation study (held-out real test patients)</h2>" + _img(classify_dir / "study.png"))
    rows = [{"arm": a, "AUC": m["auc"], "AUC 95% CI": m["auc_ci95"], "balanced acc.": m["balanced_accuracy"],
             "bal. acc. 95% CI": m["balanced_accuracy_ci95"], "F1": m["f1"], "seeds": m["n_seeds"],
             "test patients": m["n_test_patients"], "real train tiles": m["n_train_real"],
             "synthetic train tiles": m["n_train_synthetic"]} for a, m in summary["classifier"].items()]
    parts.append(_table(rows, list(rows[0]) if rows else []))
    parts.append(f"<p>{html.escape(notes.get('study', ''))}</p>")
    css = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}table{border-collapse:collapse;margin:1em 0}"
           "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}.grid{display:flex;flex-wrap:wrap;gap:8px}"
           "figure{margin:0}figcaption{font-size:12px}.warn{color:#a00}")
    doc = f"<!doctype html><html><head><meta charset=utf-8><title>histosynth report</title><style>{css}</style></head><body>{''.join(parts)}</body></html>"
    with atomic_path(out_html) as tmp:
        tmp.write_text(doc)


def write_summary_json(summary, path):
    write_json(path, summary)
