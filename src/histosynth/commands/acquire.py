"""The acquire stage's commands: demo slides, the sample sheet, one verified download, the
verified sheet (``histosynth demo-slides | acquire-query | download | acquire-record``)."""
from __future__ import annotations

import logging
from pathlib import Path

from histosynth.utils import write_json

log = logging.getLogger("histosynth")


def demo_slides(opts: dict, outdir=None, manifest=None, progress=True):
    from histosynth.slides.synthetic import write_demo_cohort

    out = Path(outdir or opts["outdir"])
    manifest = manifest or out / "manifest.tsv"
    df = write_demo_cohort(out / "slides", manifest, opts["patients_per_class"], opts["size_px"], opts["mpp"],
                           opts["seed"], progress=progress)
    log.info("wrote %d demo slides (%d patients) and %s", len(df), df["patient_id"].nunique(), manifest)


def acquire_query(opts: dict, out, manifest=None, slide_dir=None):
    from histosynth.acquire.query import build_sample_sheet

    if slide_dir:
        opts = dict(opts, slide_dir=slide_dir)
    df = build_sample_sheet(opts, out, manifest=manifest)
    log.info("sample sheet %s (source %s): %d slides, %d patients, labels %s", out, opts["source"], len(df),
             df["patient_id"].nunique(), df["label"].value_counts().to_dict())


def download(opts: dict, sheet, slide_id, out=None, record=None, progress=True):
    from histosynth.acquire.download import fetch
    from histosynth.acquire.gdc import auth_headers
    from histosynth.acquire.manifest import sheet_row
    from histosynth.acquire.query import verified_record
    from histosynth.slides.reader import openslide_problem

    row = sheet_row(sheet, slide_id)
    size = int(row["size"]) if str(row.get("size", "")).strip() else None
    md5 = str(row.get("md5", "")).strip() or None
    res = fetch(row["source"], out or row["path"], md5=md5, size=size, label=slide_id,
                headers=auth_headers(row["source"], opts["gdc"]), max_attempts=opts["max_attempts"],
                check=openslide_problem if opts["check_openslide"] else None, progress=progress)
    if record:
        write_json(record, verified_record(row, res, md5 is not None))
    log.info("%s: %s verified (md5 %s%s, %d bytes, %d attempt(s))", slide_id, res.path, res.md5,
             "" if md5 else " recorded: none published", res.size, res.attempts)


def acquire_record(sheet, records, out):
    from histosynth.acquire.query import write_verified_sheet

    df = write_verified_sheet(sheet, records, out)
    log.info("verified sheet %s: %d slides, %d against published MD5s", out, len(df),
             int((df["md5_checked_against"] == "published").sum()))
