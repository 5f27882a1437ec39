"""The dataset card of an exported run: what generated the tiles, from which cohort, how faithful
they are (every metric with its extractor and floor), what the copy audit found, and the limits
of use. Written as dataset.json (machine-readable) and DATASET.md (for people)."""
from __future__ import annotations

import json

LIMITS = [
    "Synthetic, not real: every tile was drawn by a generative network. It shows no real patient, but the network "
    "learned from real patients' tiles; the copy audit in this card is evidence, not proof, that none of them is reproduced.",
    "Labels are the conditions the tiles were generated for, not annotations by a pathologist; the concordance in this "
    "card says how often a classifier trained on real tiles agrees with them.",
    "Not for diagnosis, and not a substitute for real data when a model is validated: test models on real tiles of "
    "patients neither they nor this generator saw.",
    "The tiles inherit the training cohort's make-up (sites, scanners, stains, demographics) and its biases, and "
    "cover only what its patients showed.",
    "The source cohort's data-use terms (e.g. TCGA's, GTEx's) apply to data derived from it; check them before sharing.",
]


def _metric_rows(metrics: dict) -> dict:
    out = {}
    for ex, m in metrics.items():
        out[ex] = {k: m.get(k) for k in ("fid", "fid_real_vs_real", "kid_mean", "kid_std", "kid_real_vs_real",
                                         "precision", "recall", "n_real", "below_min_samples")}
        if m.get("per_class_fid"):
            out[ex]["per_class_fid"] = m["per_class_fid"]
            out[ex]["per_class_floor"] = m.get("per_class_floor") or {}
    return out


def build_card(*, run: str, fmt: str, files: list, exported, n_generated: int, network: dict, evaluation: dict,
               cohort: dict, copies: dict | None, dropped: int, config_digest: str | None, version: str) -> dict:
    """The card as a dict. `exported`: the index of the exported tiles; `network`: what
    histosynth.commands.export reads of network.pt; `evaluation`: metrics (and verdict, concordance,
    layout) of the run; `cohort`: the training cohort's counts."""
    classes = (exported["label"].astype(str).value_counts().sort_index().to_dict()
               if "label" in exported.columns else {})
    seeds = exported["seed"].astype(int) if "seed" in exported.columns else None
    card = {
        "name": f"histosynth-{run}",
        "dataset": {"format": fmt, "files": files, "n_tiles": int(len(exported)), "n_generated": int(n_generated),
                    "dropped_by_copy_audit": int(dropped), "classes": {k: int(v) for k, v in classes.items()},
                    "tile_px": int(exported["tile_px"].iloc[0]) if "tile_px" in exported.columns else None,
                    "tile_um": float(exported["tile_um"].iloc[0]) if "tile_um" in exported.columns else None,
                    "mpp": float(exported["mpp"].iloc[0]) if "mpp" in exported.columns else None},
        "generator": {**network,
                      "seeds": {"min": int(seeds.min()), "max": int(seeds.max()), "n": int(seeds.nunique())}
                      if seeds is not None and len(seeds) else None,
                      "truncation_psi": sorted({float(v) for v in exported["truncation"]})
                      if "truncation" in exported.columns else None,
                      "histosynth_version": version, "config_digest": config_digest},
        "training_cohort": cohort,
        "evaluation": {"metrics": _metric_rows(evaluation.get("metrics") or {}),
                       "verdict": evaluation.get("verdict"), "concordance": evaluation.get("concordance"),
                       "layout": evaluation.get("layout")},
        "copy_audit": None if copies is None else {
            "verdict": copies["verdict"]["verdict"], "text": copies["verdict"]["text"],
            "thresholds": copies["verdict"]["thresholds"], "n": copies["n"], "transforms": copies["transforms"],
            "not_voting": copies["verdict"].get("not_voting", {}),
            "spaces": {ex: {"in_verdict": ex in copies["verdict"].get("voting", list(copies["extractors"])),
                            "share_below_null_p1": r["nearest_neighbour"]["p1"]["share"],
                            "expected": r["nearest_neighbour"]["p1"]["expected"],
                            "p_value": r["nearest_neighbour"]["p1"]["p_value"], "c_t": r["data_copying"]["c_t"],
                            "authenticity": r["authenticity"]["generated"],
                            "authenticity_heldout": r["authenticity"]["heldout"]}
                       for ex, r in copies["extractors"].items()}},
        "limits_of_use": LIMITS,
    }
    return json.loads(json.dumps(card, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def _f(v, nd=4):
    return "n/a" if v is None else (f"{v:.{nd}g}" if isinstance(v, float) else str(v))


def card_markdown(card: dict) -> str:
    d, g, c, e, a = (card["dataset"], card["generator"], card["training_cohort"], card["evaluation"],
                     card["copy_audit"])
    lines = [f"# {card['name']}", "",
             f"{d['n_tiles']} synthetic histology tiles of {d['tile_px']} px covering {d['tile_um']} µm "
             f"({d['mpp']} µm per pixel), in the `{d['format']}` format, made by histosynth "
             f"{g['histosynth_version']} from the run `{g['run']}`.", ""]
    if d["classes"]:
        lines += ["| class | tiles |", "|---|---|"] + [f"| {k} | {v} |" for k, v in d["classes"].items()] + [""]
    lines += ["## Files", ""] + [f"- `{f}`" for f in d["files"]] + [""]
    lines += ["## What generated them", "",
              f"- network: `{g['network']}` (MD5 `{g['network_md5']}`), a {g['kind']}-conditioned "
              f"{g['architecture']} at {g['kimg']:.1f} kimg ({g['snapshot']})",
              f"- conditions: {', '.join(map(str, g['conditions'])) or 'none'}",
              f"- seeds: {g['seeds']['min']}-{g['seeds']['max']} ({g['seeds']['n']} distinct)" if g.get("seeds")
              else "- seeds: n/a",
              f"- truncation ψ: {', '.join(map(str, g['truncation_psi'] or [])) or 'n/a'}",
              f"- configuration digest (SHA-256 of the resolved config): `{g['config_digest'] or 'not recorded'}`", ""]
    lines += ["## Training cohort", "",
              (f"- {c['patients']} patients, {c['slides']} slides, {c['tiles']} tiles in the generator's training "
               f"partitions ({', '.join(c['partitions'])}); tiles of {c['tile_px']} px covering {c['tile_um']} µm"
               if c["patients"] is not None else
               "- unknown: the network was imported, and whose tiles it was trained on is not recorded in it"),
              "- patients per partition of the split: "
              + ", ".join(f"{k} {v}" for k, v in c["split_patients"].items()),
              "- patients in no training partition never reached the generator; they form the copy audit's null.", ""]
    lines += ["## Fidelity", ""]
    if e["metrics"]:
        lines += ["| extractor | FID | real-vs-real floor | KID | precision | recall | n per side |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {ex} | {_f(m['fid'])} | {_f(m['fid_real_vs_real'])} | {_f(m['kid_mean'])} | "
                  f"{_f(m['precision'])} | {_f(m['recall'])} | {m['n_real']}"
                  f"{' (below min_samples)' if m['below_min_samples'] else ''} |" for ex, m in e["metrics"].items()]
        lines.append("")
    if e.get("verdict"):
        lines += [f"Verdict: **{e['verdict']['verdict']}**. {e['verdict']['text']}", ""]
    conc = e.get("concordance") or {}
    if "weak" in conc:
        lines += [f"Concordance: a classifier trained on real tiles assigns {conc['weak']:.1%} of the tiles to their "
                  f"generated class.", ""]
    if e.get("layout"):
        lay = e["layout"]
        lines += [f"Layout fidelity: mIoU {lay['generated']['miou']:.3f} of tiles from held-out maps (real tiles "
                  f"{lay['real']['miou']:.3f}, chance {lay['chance']['miou']:.3f}).", ""]
    lines += ["## Copy audit", ""]
    if a is None:
        lines += ["Not run (evaluate.audit.enabled is false): nothing is known about copies of training tiles.", ""]
    else:
        n = a["n"]
        lines += [f"**{a['verdict']}**. {a['text']}", "",
                  f"{n['audited']} generated tiles against {n['training']} training tiles, with {n['heldout']} tiles "
                  f"of {n['heldout_patients']} held-out patients as the null; views searched: {a['transforms']}. "
                  f"Tiles flagged (closer to a training tile than 99% of held-out patients' tiles) and left out of "
                  f"this dataset: {d['dropped_by_copy_audit']}.", "",
                  "| space | in the verdict | below the null's 1st percentile | binomial p | Meehan's C_T | "
                  "authenticity (held-out) |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {ex} | {'yes' if s['in_verdict'] else 'no (reported)'} | {s['share_below_null_p1']:.1%} "
                  f"(expected {s['expected']:.0%}) | {s['p_value']:.2g} | {_f(s['c_t'], 2)} | "
                  f"{s['authenticity']:.3f} ({s['authenticity_heldout']:.3f}) |" for ex, s in a["spaces"].items()]
        lines += [""] + [f"{ex} is reported, not counted: {why}." for ex, why in a["not_voting"].items()]
        lines.append("")
    lines += ["## Limits of use", ""] + [f"- {x}" for x in card["limits_of_use"]] + [""]
    return "\n".join(lines)
