"""TCGA (and other GDC programs) through the NCI GDC API.

The query goes to ``<api_url>/files`` (POST with a JSON body, or GET with the same
parameters in the query string) with GDC ``filters``, a ``fields`` list and ``size``/``from``
paging until ``from >= pagination.total``. Each hit becomes one sample-sheet row: the label
from a configurable field (default ``cases.project.project_id``), the patient from
``cases.submitter_id``, the published ``md5sum`` and ``file_size``, and the download URL
``<api_url>/data/<file_id>``. A gdc-client manifest (``id filename md5 size state``) is
written beside the sheet so the same cohort can be fetched with gdc-client.

Controlled-access files need a token: read from ``acquire.gdc.token_file`` or the environment
variable named by ``acquire.gdc.token_env``, sent as ``X-Auth-Token`` to the API host only,
never logged and never written into any output."""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from histosynth.acquire.http import SourceError, origin, request
from histosynth.utils import UserError, atomic_path

log = logging.getLogger(__name__)

BASE_FIELDS = ["file_id", "file_name", "md5sum", "file_size", "state", "data_format", "experimental_strategy",
               "cases.submitter_id"]


def build_filters(o: dict) -> dict:
    """GDC filters for slide images of the configured projects, strategy and sample types."""
    strategies = o["experimental_strategy"]
    strategies = [strategies] if isinstance(strategies, str) else list(strategies)

    def isin(field, values):
        return {"op": "in", "content": {"field": field, "value": list(values)}}

    content = [isin("data_type", ["Slide Image"]), isin("data_format", [o["data_format"]]),
               isin("cases.project.project_id", o["projects"]), isin("experimental_strategy", strategies)]
    if o.get("sample_types"):
        content.append(isin("cases.samples.sample_type", o["sample_types"]))
    return {"op": "and", "content": content}


def query_fields(o: dict) -> list[str]:
    fields = BASE_FIELDS + [o["label_field"]] + list(o.get("extra_fields") or [])
    return list(dict.fromkeys(fields))


def query_files(o: dict, *, session=None, sleep=None) -> list[dict]:
    """All hits of the query, following the pagination to the end."""
    url = o["api_url"].rstrip("/") + "/files"
    filters, fields = build_filters(o), ",".join(query_fields(o))
    hits, frm, page = [], 0, 0
    kw = {"sleep": sleep} if sleep else {}
    while True:
        page += 1
        params = {"filters": json.dumps(filters), "fields": fields, "format": "JSON", "size": str(o["page_size"]),
                  "from": str(frm)}
        what = f"GDC /files query (page {page}, from {frm})"
        if o["query_method"] == "post":
            body = dict(params, filters=filters)
            resp = request("POST", url, json=body, session=session, what=what, **kw)
        else:
            resp = request("GET", url, params=params, session=session, what=what, **kw)
        try:
            data = resp.json()["data"]
            page_hits, total = data["hits"], int(data["pagination"]["total"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(f"{what}: {url} did not answer a GDC files response (JSON with data.hits and "
                              f"data.pagination.total); is acquire.gdc.api_url right? Got: {resp.text[:200]!r}") from None
        hits += page_hits
        frm += len(page_hits)
        log.info("GDC: %d of %d files listed", frm, total)
        if frm >= total:
            return hits
        if not page_hits:
            raise SourceError(f"{what}: the API returned an empty page before the end ({frm} of {total})")


def field_values(hit: dict, dotted: str) -> list:
    """Values of a dotted GDC field in a hit; nested lists (cases, samples) are flattened."""
    level = [hit]
    for part in dotted.split("."):
        nxt = []
        for item in level:
            v = item.get(part) if isinstance(item, dict) else None
            if isinstance(v, list):
                nxt.extend(v)
            elif v is not None:
                nxt.append(v)
        level = nxt
    return list(dict.fromkeys(level))


def _slide_id(file_name: str) -> str:
    """The TCGA barcode part of a slide file name (``TCGA-05-4244-01Z-00-DX1.<uuid>.svs``)."""
    stem = file_name.split(".")[0]
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "slide"


def column_name(field: str) -> str:
    """Sample-sheet column for an extra GDC field: ``cases.samples.sample_type`` -> ``sample_type``."""
    return field.split(".")[-1]


def hits_to_sheet(hits: list[dict], o: dict) -> pd.DataFrame:
    """Sample-sheet rows for the hits, capped per class (seeded), with clear warnings for skips."""
    api = o["api_url"].rstrip("/")
    rows, skipped = [], []
    for h in hits:
        fid, name = h.get("file_id") or h.get("id"), h.get("file_name", "")
        patients = field_values(h, "cases.submitter_id")
        labels = field_values(h, o["label_field"])
        if not fid or not name:
            skipped.append(f"{fid or '?'}: no file_id/file_name")
            continue
        if len(patients) != 1 or len(labels) != 1:
            skipped.append(f"{name}: {len(patients)} patients and labels {labels} in {o['label_field']} (need exactly one each)")
            continue
        row = {"slide_id": _slide_id(name), "patient_id": str(patients[0]), "label": str(labels[0]),
               "source": f"{api}/data/{quote(str(fid), safe='')}", "md5": (h.get("md5sum") or "").lower(),
               "size": str(h["file_size"]) if h.get("file_size") is not None else "",
               "file_id": fid, "file_name": name, "state": h.get("state", "released")}
        for f in o.get("extra_fields") or []:
            vals = field_values(h, f)
            row[column_name(f)] = ";".join(str(v) for v in vals)
        rows.append(row)
    for s in skipped:
        log.warning("GDC: skipped %s", s)
    if not rows:
        raise UserError(f"GDC query found no usable slides for projects {o['projects']} "
                        f"({o['experimental_strategy']}, {o['data_format']}, sample types {o.get('sample_types') or 'any'}); "
                        f"{len(hits)} hits, {len(skipped)} skipped. Check acquire.gdc.* in the config.")
    df = pd.DataFrame(rows)
    dup = df["slide_id"].duplicated(keep=False)
    # the same barcode twice (re-scans): told apart by the file id, made file-safe like the barcode
    df.loc[dup, "slide_id"] = df.loc[dup, "slide_id"] + "_" + df.loc[dup, "file_id"].map(
        lambda f: re.sub(r"[^A-Za-z0-9-]", "_", str(f))[:8])
    return cap_per_class(df, o["max_slides_per_class"], o["seed"], key="file_id")


def cap_per_class(df: pd.DataFrame, cap, seed: int, key: str) -> pd.DataFrame:
    """At most `cap` rows per label, chosen by a seeded shuffle of rows sorted by `key`
    (so the choice does not depend on the order the server listed them in)."""
    df = df.sort_values(key, kind="stable").reset_index(drop=True)
    if cap is None:
        return df
    rng = np.random.default_rng(seed)
    keep = []
    for label, grp in df.groupby("label", sort=True):
        idx = grp.index.to_numpy()
        keep.extend(rng.permutation(idx)[:cap] if len(idx) > cap else idx)
        if len(idx) > cap:
            log.info("label %s: %d slides, keeping %d (seed %d)", label, len(idx), cap, seed)
    return df.loc[sorted(keep)].reset_index(drop=True)


def write_gdc_manifest(df: pd.DataFrame, path) -> None:
    """A manifest gdc-client can download: ``gdc-client download -m <path>``."""
    out = pd.DataFrame({"id": df["file_id"], "filename": df["file_name"], "md5": df["md5"], "size": df["size"],
                        "state": df["state"]})
    with atomic_path(path) as tmp:
        out.to_csv(tmp, sep="\t", index=False)


def read_token(o: dict) -> str | None:
    """The GDC token from acquire.gdc.token_file or the environment variable acquire.gdc.token_env."""
    if o.get("token_file"):
        p = Path(o["token_file"]).expanduser()
        if not p.is_file():
            raise UserError(f"acquire.gdc.token_file {p} does not exist; download a token from the GDC portal "
                            f"(user menu > Download Token) or unset the key for open-access files")
        token = p.read_text().strip()
        if not token:
            raise UserError(f"acquire.gdc.token_file {p} is empty")
        return token
    env = o.get("token_env")
    return os.environ.get(env) or None if env else None


def auth_headers(source_url: str, o: dict) -> dict:
    """``X-Auth-Token`` for requests to the GDC API host only (a token never goes elsewhere)."""
    if origin(source_url) != origin(o["api_url"]):
        return {}
    token = read_token(o)
    return {"X-Auth-Token": token} if token else {}
