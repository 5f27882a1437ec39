"""GTEx histology slides: labels from the sample attributes file, images from the image server.

The GTEx sample attributes file (``GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt``,
tab-separated) has one row per sample (``SAMPID`` like ``GTEX-1117F-0126-SM-5GZZ7``) with the
tissue in ``SMTSD`` (detailed) and ``SMTS`` (site). A slide is a tissue sample: its id is the
first three dash-separated parts of the sample id (``GTEX-1117F-0126``), the donor (patient)
the first two. Images are served at ``<image_url>/<tissue sample id>``.

GTEx publishes no checksums: the query asks each chosen image's size (HEAD, falling back to a
GET that reads no body), download checks it against ``Content-Length`` and that OpenSlide opens
the file, and records the MD5 it computed."""
from __future__ import annotations

import difflib
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.acquire.http import SourceError, request
from histosynth.utils import UserError

log = logging.getLogger(__name__)


def read_annotations(path, label_field: str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"GTEx sample attributes file {path} does not exist (acquire.gtex.annotations); download "
                        f"GTEx_Analysis_v8_Annotations_SampleAttributesDS.txt from the GTEx portal")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    missing = [c for c in ("SAMPID", label_field) if c not in df.columns]
    if missing:
        raise UserError(f"GTEx sample attributes file {path}: missing column(s) {missing} "
                        f"(acquire.gtex.label_field is {label_field!r}); it has {list(df.columns)[:12]}...")
    return df


def tissue_sample_id(sampid: str) -> str | None:
    parts = sampid.split("-")
    return "-".join(parts[:3]) if len(parts) >= 3 and all(parts[:3]) else None


def donor_id(sampid: str) -> str:
    return "-".join(sampid.split("-")[:2])


def candidates(ann: pd.DataFrame, o: dict, source_file="annotations") -> pd.DataFrame:
    """One row per tissue sample of the chosen tissues (label = the label field's value)."""
    field = o["label_field"]
    known = sorted(set(ann[field]) - {""})
    for t in o["tissues"]:
        if t not in known:
            close = difflib.get_close_matches(t, known, n=3, cutoff=0.5)
            raise UserError(f"acquire.gtex.tissues: {t!r} is not a value of {field} in {source_file}"
                            + (f"; did you mean {close}?" if close else f"; values include {known[:8]}"))
    sel = ann[ann[field].isin(o["tissues"])].copy()
    sel["slide_id"] = sel["SAMPID"].map(tissue_sample_id)
    bad = sel["SAMPID"][sel["slide_id"].isna()].tolist()
    if bad:
        log.warning("GTEx: %d sample ids without three dash-separated parts skipped, e.g. %s", len(bad), bad[:3])
    sel = sel.dropna(subset=["slide_id"])
    conflict = sel.groupby("slide_id")[field].nunique()
    conflict = conflict[conflict > 1].index.tolist()
    if conflict:
        log.warning("GTEx: %d tissue samples map to several %s values and are skipped, e.g. %s", len(conflict), field, conflict[:3])
        sel = sel[~sel["slide_id"].isin(conflict)]
    sel = sel.drop_duplicates("slide_id").reset_index(drop=True)
    base = o["image_url"].rstrip("/")
    out = pd.DataFrame({"slide_id": sel["slide_id"], "patient_id": sel["SAMPID"].map(donor_id), "label": sel[field],
                        "source": [f"{base}/{s}" for s in sel["slide_id"]], "md5": "", "size": ""})
    for f in o.get("extra_fields") or []:
        if f not in sel.columns:
            raise UserError(f"acquire.gtex.extra_fields: {f!r} is not a column of {source_file}")
        out[f] = sel[f].to_numpy()
    return out


def remote_size(url: str, *, session=None, sleep=None) -> int | None:
    """Size of the image at `url` from its headers; None when the server has no such image."""
    kw = {"sleep": sleep} if sleep else {}
    what = f"GTEx image size of {url.rsplit('/', 1)[-1]}"
    resp = request("HEAD", url, session=session, what=what, ok=(200, 404, 405), allow_redirects=True, **kw)
    if resp.status_code == 405:  # HEAD not allowed: a GET whose body we never read
        resp.close()
        resp = request("GET", url, session=session, what=what, ok=(200, 404), stream=True, allow_redirects=True, **kw)
    with resp:
        if resp.status_code == 404:
            return None
        n = resp.headers.get("Content-Length")
        if n is None or not n.isdigit():
            raise SourceError(f"GTEx image server sent no Content-Length for {url}; sizes cannot be checked")
        return int(n)


def select(ann: pd.DataFrame, o: dict, *, session=None, sleep=None, source_file="annotations") -> pd.DataFrame:
    """Choose up to max_slides_per_class available slides per tissue (seeded) and record their sizes.

    Candidates are probed in the seeded order, so a missing image is replaced by the next one."""
    cand = candidates(ann, o, source_file)
    order = cand.sort_values("slide_id", kind="stable")  # server-independent order before the seeded shuffle
    rng = np.random.default_rng(o["seed"])
    chosen, missing = [], []
    cap = o["max_slides_per_class"]
    with ThreadPoolExecutor(max(1, o["probe_threads"])) as pool:
        for label, grp in order.groupby("label", sort=True):
            rows = grp.iloc[rng.permutation(len(grp))]
            got = 0
            for start in range(0, len(rows), max(1, o["probe_threads"]) * 2):
                if cap is not None and got >= cap:
                    break
                batch = rows.iloc[start:start + max(1, o["probe_threads"]) * 2]
                sizes = list(pool.map(lambda u: remote_size(u, session=session, sleep=sleep), batch["source"]))
                for (_, row), size in zip(batch.iterrows(), sizes):
                    if size is None:
                        missing.append(row["slide_id"])
                    elif cap is None or got < cap:
                        chosen.append(dict(row, size=str(size)))
                        got += 1
            log.info("GTEx %s: %d slides chosen of %d candidates", label, got, len(grp))
    if missing:
        log.warning("GTEx: %d tissue samples have no image on the server and were replaced: %s", len(missing), missing[:10])
    if not chosen:
        raise UserError(f"GTEx: none of the chosen tissues' images exist at {o['image_url']} (acquire.gtex.image_url)")
    return pd.DataFrame(chosen).sort_values(["label", "slide_id"]).reset_index(drop=True)
