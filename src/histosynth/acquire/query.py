"""The acquire_query step: list the cohort's slides from the configured source into the sample
sheet, and after the downloads, record what was verified."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from histosynth.acquire.manifest import (
    read_manifest,
    read_sample_sheet,
    write_sample_sheet,
)
from histosynth.utils import UserError, atomic_path

log = logging.getLogger(__name__)


def gdc_manifest_path(sheet_path) -> Path:
    return Path(sheet_path).with_name("gdc_manifest.txt")


def build_sample_sheet(o: dict, out, *, manifest=None, session=None, sleep=None) -> pd.DataFrame:
    """Write the sample sheet `out` for acquire options `o`; return it."""
    src = o["source"]
    if src == "manifest":
        df = read_manifest(manifest or o["manifest"])
    elif src == "gdc":
        from histosynth.acquire import gdc

        hits = gdc.query_files(o["gdc"], session=session, sleep=sleep)
        df = gdc.hits_to_sheet(hits, o["gdc"])
    elif src == "gtex":
        from histosynth.acquire import gtex

        ann_path = _annotations_path(o["gtex"], Path(out).parent)
        ann = gtex.read_annotations(ann_path, o["gtex"]["label_field"])
        df = gtex.select(ann, o["gtex"], session=session, sleep=sleep, source_file=str(ann_path))
    else:  # the schema forbids this
        raise UserError(f"acquire.source: unknown source {src!r}")
    sheet = write_sample_sheet(df, o["slide_dir"], out)
    if src == "gdc":
        from histosynth.acquire.gdc import write_gdc_manifest

        write_gdc_manifest(sheet, gdc_manifest_path(out))
    return sheet


def _annotations_path(o: dict, workdir: Path) -> Path:
    ann = o.get("annotations")
    if not ann:
        raise UserError("acquire.gtex.annotations is not set: give the path or URL of the GTEx sample attributes file "
                        "(GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt from the GTEx portal)")
    if "://" in ann and not ann.startswith("file://"):
        from histosynth.acquire.download import fetch

        dest = workdir / "gtex_sample_attributes.txt"
        fetch(ann, dest, label="GTEx sample attributes", progress=False)
        return dest
    return Path(ann.removeprefix("file://"))


def verified_record(row, result, md5_published: bool) -> dict:
    return {"slide_id": row["slide_id"], "path": str(result.path), "md5": result.md5, "size": result.size,
            "md5_checked_against": "published" if md5_published else "none published: recorded ours"}


def write_verified_sheet(sheet_path, records, out) -> pd.DataFrame:
    """The sample sheet with the MD5 and size of every downloaded file filled in (`records` are the
    per-slide JSON files the download jobs wrote), so a later run can verify the same bytes."""
    sheet = read_sample_sheet(sheet_path)
    recs = {}
    for r in records:
        d = json.loads(Path(r).read_text())
        recs[d["slide_id"]] = d
    missing = [s for s in sheet["slide_id"] if s not in recs]
    if missing:
        raise UserError(f"no download record for slide(s) {missing[:5]}; run their download jobs")
    sheet = sheet.copy()
    for col in ("md5", "size"):
        published = sheet[col].astype(str).str.strip()
        ours = sheet["slide_id"].map(lambda s, c=col: str(recs[s][c]))
        clash = (published != "") & (published.str.lower() != ours.str.lower())
        if clash.any():
            raise UserError(f"download records disagree with the sample sheet's {col} for {sheet['slide_id'][clash].tolist()[:5]}")
        sheet[col] = ours
    sheet["md5_checked_against"] = sheet["slide_id"].map(lambda s: recs[s]["md5_checked_against"])
    with atomic_path(out) as tmp:
        sheet.to_csv(tmp, sep="\t", index=False)
    return sheet
