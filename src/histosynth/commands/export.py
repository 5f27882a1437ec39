"""The export stage's command: a run's generated tiles as a dataset with its card
(``histosynth export``)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

from histosynth.utils import UserError, md5_of

log = logging.getLogger("histosynth")

# Index columns a shared dataset keeps: never slide, patient or source identifiers (an expression
# run's profile and a layout run's source map name real patients; they become pseudonyms or go).
KEEP = ("label", "seed", "truncation")


def _read_json(path: Path, what: str, target: str):
    if not path.exists():
        raise UserError(f"{path} is missing: the {what}. Make it first (`snakemake --cores all {target}`)")
    return json.loads(path.read_text())


def _snapshot_text(sel: dict | None) -> str:
    """How the network was chosen among the run's snapshots (generate.snapshot), in words."""
    if not sel:
        return "the run's final G_ema"
    what = {"last": "the last snapshot", "best": "the best snapshot"}.get(sel["choice"], "the snapshot asked for")
    text = f"G_ema of {what} (generate.snapshot: {sel['choice']}), {sel['kimg']:g} of {sel['last_kimg']:g} kimg"
    if sel.get("value") is not None:
        text += f", {sel['metric'].replace('one_minus_precision', '1 - precision')} {sel['value']:.3f} in {sel['extractor']}"
    return text


def _metadata(syn, kind: str, conditioning: dict):
    """The columns the dataset keeps, and the index with them."""
    cols = [c for c in KEEP if c in syn.columns]
    if kind in ("class", "attributes", "none") and "condition" in syn.columns:
        cols.append("condition")
    for c in (conditioning or {}).get("columns") or []:
        if kind == "attributes" and c in syn.columns and c not in cols:
            cols.append(c)
    if kind == "expression" and "expression_key" in syn.columns:  # which tiles share a profile, not whose it is
        keys = sorted(syn["expression_key"].astype(str).unique())
        pseud = {k: f"profile-{i:04d}" for i, k in enumerate(keys)}
        syn = syn.assign(profile=syn["expression_key"].astype(str).map(pseud))
        cols.append("profile")
    return syn, cols


def _cohort(index, patients, tile_px) -> dict:
    """The training cohort's counts; `patients` None: unknown (an imported network), then only
    the split is described."""
    per = (index.groupby("partition")["patient_id"].nunique().to_dict() if "partition" in index.columns else {})
    common = {"tile_px": int(tile_px), "tile_um": float(index["tile_um"].iloc[0]) if "tile_um" in index.columns else None,
              "split_patients": {k: int(v) for k, v in per.items()}}
    if patients is None:
        return {"patients": None, "slides": None, "tiles": None, "partitions": [], **common}
    train = index[index["patient_id"].astype(str).isin(patients)]
    if "kept" in train.columns:
        train = train[train["kept"].astype(bool)]
    return {"patients": len(set(patients)), "slides": int(train["slide_id"].nunique()), "tiles": int(len(train)),
            "partitions": sorted(train["partition"].unique().tolist()) if "partition" in train.columns else [],
            **common}


def export(opts: dict, run: str, format: str, out, results: str = "results", config: str | None = None,
           config_digest: str | None = None, force: bool = False, progress: bool = True) -> dict:
    """Write run `run`'s generated tiles (results/generate/<run>/synthetic.parquet) as a dataset
    in `format` into the folder `out`, with DATASET.md and dataset.json. Tiles the copy audit
    flagged are left out (export.drop_flagged); a run whose audit found copying is refused unless
    export.allow_copying. The folder appears complete or not at all."""
    import importlib.metadata

    from histosynth.report.build import fidelity_verdict
    from histosynth.report.card import build_card, card_markdown
    from histosynth.report.dataset import FORMATS, write_hdf5, write_imagefolder, write_webdataset
    from histosynth.slides.store import read_index

    if format not in FORMATS:
        raise UserError(f"export format {format!r}: use one of {', '.join(FORMATS)}")
    res, out = Path(results), Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise UserError(f"{out} exists and is not empty: choose another --out, or --force to replace it")
    syn_path = res / "generate" / run / "synthetic.parquet"
    if not syn_path.exists():
        raise UserError(f"{syn_path} is missing: run {run!r} has no generated tiles in {res} (`snakemake --cores all "
                        f"{syn_path}`), or the run name is wrong")
    net_path = res / "gan" / run / "selected.pt"
    if not net_path.exists():
        raise UserError(f"{net_path} is missing: the network that generated run {run!r}'s tiles (the select_snapshot "
                        f"rule writes it: `snakemake --cores all {net_path}`)")
    from histosynth.gan.checkpoint import read_metadata

    net = read_metadata(net_path)
    kind = net.get("kind", "class")
    opts_json = _read_json(res / "gan" / run / "training_options.json", "run's training options", str(net_path))
    syn = read_index(syn_path).reset_index(drop=True)
    ev_dir = res / "evaluate" / run
    if kind == "mask":
        lay = _read_json(ev_dir / "layout.json", "run's layout evaluation", str(ev_dir / "layout.json"))
        evaluation = {"metrics": lay["metrics"], "layout": lay["layout"]}
        cohort_index = read_index(res / "masks" / "index.parquet")
    else:
        met = _read_json(ev_dir / "metrics.json", "run's evaluation", str(ev_dir / "metrics.json"))
        evaluation = {"metrics": met["metrics"], "concordance": met.get("concordance"),
                      "verdict": fidelity_verdict(met["metrics"], met.get("concordance") or {}, met.get("colour"))}
        cohort_index = read_index(res / "split" / "tiles.parquet")
    copies = None
    dropped = 0
    if (ev_dir / "copies.json").exists():
        copies = json.loads((ev_dir / "copies.json").read_text())
        if copies["verdict"]["verdict"] == "copying" and not opts["allow_copying"]:
            raise UserError(f"run {run!r}: the copy audit found copying ({ev_dir / 'copies.json'}: "
                            f"{copies['verdict']['text']}) Its tiles are not exported as a dataset; retrain, or set "
                            f"export.allow_copying: true to export them anyway (the card says so)")
        if opts["drop_flagged"] and (ev_dir / "copies.parquet").exists():
            flags = read_index(ev_dir / "copies.parquet")
            voting = copies["verdict"].get("voting", sorted(flags["extractor"].unique()))
            hit = flags["below_p1"] & flags["extractor"].isin(voting)  # flagged in a space that votes
            bad = set(zip(flags.loc[hit, "store"].astype(str), flags.loc[hit, "page"]))
            keep = [k not in bad for k in zip(syn["store"].astype(str), syn["page"].astype(int))]
            dropped = int(len(syn) - sum(keep))
            syn = syn[keep].reset_index(drop=True)
    else:
        log.warning("run %s has no copy audit (%s): the card says nothing is known about copies", run,
                    ev_dir / "copies.json")
    syn, meta_cols = _metadata(syn, kind, net.get("conditioning") or {})
    classes = sorted(syn["label"].astype(str).unique()) if "label" in syn.columns else []
    if config and not config_digest:
        from histosynth.config import load_config

        config_digest = hashlib.sha256(json.dumps(load_config(config), sort_keys=True, default=str).encode()).hexdigest()
    network = {"run": run, "kind": kind, "network": str(net_path), "network_md5": md5_of(net_path),
               "architecture": opts_json.get("mask", {}).get("method", "spade") if kind == "mask" else "StyleGAN2",
               "kimg": float(net.get("cur_nimg", 0)) / 1000, "snapshot": _snapshot_text(net.get("selection")),
               "selection": net.get("selection"),
               "conditions": (sum(((net.get("conditioning") or {}).get("categories") or {}).values(), [])
                              if kind in ("class", "attributes") else classes)}
    cohort = _cohort(cohort_index, (net.get("training_set") or {}).get("patients"), opts_json["resolution"])
    version = importlib.metadata.version("histosynth")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        prefix = f"histosynth-{run}"
        base = dict(run=run, fmt=format, exported=syn, n_generated=len(syn) + dropped, network=network,
                    evaluation=evaluation, cohort=cohort, copies=copies, dropped=dropped,
                    config_digest=config_digest, version=version)
        if format == "imagefolder":
            files = write_imagefolder(syn, meta_cols, classes, tmp, prefix, progress=progress)
        elif format == "webdataset":
            files = write_webdataset(syn, meta_cols, classes, tmp, prefix, opts["shard_size"], progress=progress)
        else:
            files = write_hdf5(syn, meta_cols, classes, tmp, prefix, build_card(files=[f"{prefix}.h5"], **base),
                               progress=progress)
        card = build_card(files=files + ["DATASET.md", "dataset.json"], **base)
        (tmp / "dataset.json").write_text(json.dumps(card, indent=2) + "\n")
        (tmp / "DATASET.md").write_text(card_markdown(card))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("exported %d tiles of run %s as %s into %s (%d flagged by the copy audit left out)", len(syn), run,
             format, out, dropped)
    return card
