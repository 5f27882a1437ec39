"""Sample sheets: read a user's manifest TSV, validate it, and write the workflow's sheet.

Columns (tab-separated): ``slide_id``, ``patient_id``, ``label``, and ``path`` or ``url``;
optional ``md5``, ``size`` and any attribute columns (kept as they are). Relative paths are
taken relative to the manifest file."""
from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

import pandas as pd

from histosynth.utils import UserError, atomic_path

REQUIRED = ("slide_id", "patient_id", "label")
SLIDE_ID = re.compile(r"[A-Za-z0-9_-]+")
SHEET_COLUMNS = ["slide_id", "patient_id", "label", "source", "md5", "size", "path"]


def _read_tsv(path: Path, what: str, missing_hint: str) -> pd.DataFrame:
    """A tab-separated table of strings; a UserError naming the file for anything unreadable."""
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist ({missing_hint})")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise UserError(f"{what} {path} is empty; write a header line ({', '.join(REQUIRED)}, path) and one "
                        f"line per slide, tab-separated") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} cannot be read as a tab-separated table ({str(exc)[:200]}); save it as "
                        f"UTF-8 TSV") from None
    dup = sorted({c.split(".")[0] for c in df.columns if re.fullmatch(r".+\.\d+", str(c)) and c.split(".")[0] in df.columns})
    if dup:
        raise UserError(f"{what} {path}: column(s) {dup} appear more than once in the header")
    return df


def read_manifest(path) -> pd.DataFrame:
    path = Path(path)
    df = _read_tsv(path, "manifest", "config key acquire.manifest")
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing and len(df.columns) == 1 and any(sep in df.columns[0] for sep in ",;"):
        sep = "," if "," in df.columns[0] else ";"
        raise UserError(f"manifest {path} looks {'comma' if sep == ',' else 'semicolon'}-separated (its header is "
                        f"{df.columns[0]!r}); histosynth reads tab-separated manifests: save it as TSV (tabs between "
                        f"columns)")
    if missing:
        raise UserError(f"manifest {path}: missing column(s) {missing}; it has {list(df.columns)}. "
                        f"Required: {list(REQUIRED)} and 'path' or 'url' (tab-separated).")
    if "path" not in df.columns and "url" not in df.columns:
        raise UserError(f"manifest {path}: needs a 'path' or a 'url' column")
    if df.empty:
        raise UserError(f"manifest {path} lists no slides")
    bad = [s for s in df["slide_id"] if not SLIDE_ID.fullmatch(s)]
    if bad:
        raise UserError(f"manifest {path}: slide_id {bad[:5]} cannot be used: slide ids name files and Snakemake "
                        f"targets, so they may hold only ASCII letters, digits, '_' and '-' (no '/', '..', spaces or "
                        f"accents). Rename them in the slide_id column (patient_id and label may hold anything).")
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        raise UserError(f"manifest {path}: duplicate slide_id(s) {dup[:5]}")
    for col in ("patient_id", "label"):
        empty = df["slide_id"][df[col].str.strip() == ""].tolist()
        if empty:
            raise UserError(f"manifest {path}: empty {col} for slide(s) {empty[:5]}")
    sources = []
    for _, row in df.iterrows():
        src = (row.get("url") or "").strip() or (row.get("path") or "").strip()
        if not src:
            raise UserError(f"manifest {path}: slide {row['slide_id']} has neither path nor url")
        if not urlparse(src).scheme or len(urlparse(src).scheme) == 1:
            p = Path(src)
            src = str(p if p.is_absolute() else (path.parent / p).resolve())
        sources.append(src)
    out = df.drop(columns=[c for c in ("path", "url") if c in df.columns]).copy()
    out["source"] = sources
    if "md5" not in out.columns:
        out["md5"] = ""
    if "size" not in out.columns:
        out["size"] = ""
    bad_md5 = out["slide_id"][(out["md5"] != "") & ~out["md5"].str.fullmatch(r"[0-9a-fA-F]{32}")].tolist()
    if bad_md5:
        raise UserError(f"manifest {path}: md5 is not 32 hex digits for slide(s) {bad_md5[:5]}")
    labels = sorted(set(df["label"]))
    if len(labels) < 2:
        raise UserError(f"manifest {path}: every slide has the label {labels[0]!r}; the GAN is class-conditional and "
                        f"the study trains a classifier, so the label column needs at least two classes")
    return out


def local_slide_path(slide_dir, slide_id: str, source: str, file_name: str | None = None) -> str:
    """Where a slide is stored locally: ``<slide_dir>/<slide_id><original extension>``.

    The original extension (of `file_name` when the source URL has none, as GDC's
    ``/data/<id>``) is kept because OpenSlide needs it for some formats (.ndpi, .mrxs)."""
    name = file_name or PurePosixPath(urlparse(source).path).name
    suffix = "".join(PurePosixPath(name).suffixes[-1:]).lower() or ".svs"
    if not re.fullmatch(r"\.[a-z0-9]+", suffix):
        suffix = ".svs"
    return str(Path(slide_dir) / f"{slide_id}{suffix}")


def check_slide_ids(ids, where: str) -> None:
    """Slide ids name files and Snakemake wildcards: each must match SLIDE_ID (no path
    separators, dots or spaces) and be unique, also ignoring case (a case-insensitive file
    system would store two in one file)."""
    ids = [str(s) for s in ids]
    bad = [s for s in ids if not SLIDE_ID.fullmatch(s)]
    if bad:
        raise UserError(f"{where}: slide id(s) {[b[:80] for b in bad[:5]]} cannot be used: slide ids name files, so "
                        f"they may hold only letters, digits, '_' and '-'. The source gave ids that would name paths "
                        f"outside the slide folder or clash; check the source, or list the slides in a manifest.")
    seen = {}
    for s in ids:
        if s.lower() in seen:
            raise UserError(f"{where}: slide ids {seen[s.lower()]!r} and {s!r} clash (the same file name, or the same "
                            f"ignoring case); every slide needs its own id")
        seen[s.lower()] = s


def write_sample_sheet(df: pd.DataFrame, slide_dir, out) -> pd.DataFrame:
    check_slide_ids(df["slide_id"], f"sample sheet {out}")
    df = df.copy()
    names = df["file_name"] if "file_name" in df.columns else [None] * len(df)
    df["path"] = [local_slide_path(slide_dir, s, src, n) for s, src, n in zip(df["slide_id"], df["source"], names)]
    extra = [c for c in df.columns if c not in SHEET_COLUMNS]
    df = df[SHEET_COLUMNS + extra]
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df


def read_sample_sheet(path) -> pd.DataFrame:
    path = Path(path)
    df = _read_tsv(path, "sample sheet", "run the acquire_query rule first")
    missing = [c for c in ("slide_id", "patient_id", "label", "path") if c not in df.columns]
    if missing:
        raise UserError(f"sample sheet {path}: missing column(s) {missing}")
    check_slide_ids(df["slide_id"], f"sample sheet {path}")
    return df


def sheet_row(path, slide_id: str):
    """One slide's row of the sample sheet at `path`, or a clear error."""
    sheet = read_sample_sheet(path)
    row = sheet[sheet["slide_id"] == slide_id]
    if row.empty:
        raise UserError(f"slide {slide_id} is not in the sample sheet {path}")
    return row.iloc[0]
