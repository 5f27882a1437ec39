"""Reading expression matrices into one shape: a samples x genes DataFrame of raw values
(TPM or counts) plus, where the file says, each gene's symbol and type.

* GTEx GCT 1.2 (``#1.2``, a dimensions line, then ``Name  Description  <sample ids...>``;
  gzipped or not). Only the samples asked for are parsed (the GTEx v8 TPM file has 17,382
  columns; reading it whole would take ~8 GB).
* GDC STAR gene counts (``*.rna_seq.augmented_star_gene_counts.tsv``): one file per sample,
  a ``# gene-model`` comment, ``N_*`` summary rows, then ``gene_id gene_name gene_type
  unstranded ... tpm_unstranded ...``. A manifest TSV (``sample_id``, ``path``) lists them.
* A plain CSV: first column the sample id, one column per gene.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.utils import UserError


def _open_text(path: Path):
    return gzip.open(path, "rt") if str(path).endswith(".gz") else open(path)


def read_gct(path, samples=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(samples x genes values, genes table with `gene_id`, `gene_name`). `samples`: a
    collection of column names or a predicate on a column name, to read only those."""
    path = Path(path)
    with _open_text(path) as fh:
        version = fh.readline().strip()
        if not version.startswith("#1."):
            raise UserError(f"{path}: not a GCT file (first line {version!r}, expected '#1.2')")
        dims = fh.readline().split()
        header = fh.readline().rstrip("\n").split("\t")
    if len(dims) < 2 or header[:2] != ["Name", "Description"]:
        raise UserError(f"{path}: GCT header must be a dimensions line then 'Name<TAB>Description<TAB>samples...'; "
                        f"got {dims!r} and {header[:3]!r}")
    cols = header[2:]
    if samples is not None:
        keep = [c for c in cols if (samples(c) if callable(samples) else c in samples)]
    else:
        keep = cols
    if not keep:
        raise UserError(f"{path}: none of its {len(cols)} samples belong to the cohort "
                        f"(first ids: {cols[:3]}); check expression.id_regex and the sample sheet")
    df = pd.read_csv(path, sep="\t", skiprows=2, usecols=["Name", "Description", *keep],
                     dtype={"Name": str, "Description": str, **{c: np.float32 for c in keep}})
    n_rows = int(dims[0])
    if len(df) != n_rows:
        raise UserError(f"{path}: the dimensions line says {n_rows} genes but the file has {len(df)} rows "
                        f"(truncated download?)")
    genes = pd.DataFrame({"gene_id": df["Name"].to_numpy(), "gene_name": df["Description"].to_numpy()})
    values = df[keep].T
    values.columns = genes["gene_id"].to_numpy()
    values.index.name = "sample_id"
    return values, genes


STAR_SUMMARY_ROWS = ("N_unmapped", "N_multimapping", "N_noFeature", "N_ambiguous")


def read_star_counts(path, column="tpm_unstranded") -> tuple[pd.Series, pd.DataFrame]:
    """One GDC STAR counts file: (values by gene_id, genes table with name and type)."""
    path = Path(path)
    try:
        df = pd.read_csv(path, sep="\t", comment="#", dtype={"gene_id": str, "gene_name": str, "gene_type": str})
    except (OSError, pd.errors.ParserError) as e:
        raise UserError(f"{path}: cannot read as a STAR gene counts TSV: {e}") from e
    need = {"gene_id", column}
    if not need <= set(df.columns):
        raise UserError(f"{path}: a STAR gene counts file needs columns {sorted(need)}; has {list(df.columns)[:8]} "
                        f"(expression.star_column picks the value column)")
    df = df[~df["gene_id"].isin(STAR_SUMMARY_ROWS)]
    genes = df[["gene_id"] + [c for c in ("gene_name", "gene_type") if c in df.columns]].reset_index(drop=True)
    return pd.Series(df[column].to_numpy(np.float32), index=df["gene_id"].to_numpy(), name=column), genes


def read_star_manifest(path, column="tpm_unstranded", samples=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A TSV with `sample_id` and `path` (relative to the TSV) of STAR counts files."""
    path = Path(path)
    man = pd.read_csv(path, sep="\t", dtype=str)
    if not {"sample_id", "path"} <= set(man.columns):
        raise UserError(f"{path}: a STAR manifest needs columns sample_id and path; has {list(man.columns)}")
    if samples is not None:
        man = man[[(samples(s) if callable(samples) else s in samples) for s in man["sample_id"]]]
    if man.empty:
        raise UserError(f"{path}: none of its samples belong to the cohort; check expression.id_regex")
    series, genes = {}, None
    for sid, p in zip(man["sample_id"], man["path"]):
        f = Path(p) if Path(p).is_absolute() else path.parent / p
        s, g = read_star_counts(f, column)
        if genes is not None and not np.array_equal(genes["gene_id"].to_numpy(), g["gene_id"].to_numpy()):
            raise UserError(f"{f}: its genes differ from the other STAR files' (another gene model?)")
        genes = g
        series[sid] = s
    values = pd.DataFrame(series).T
    values.index.name = "sample_id"
    return values, genes


def read_csv_matrix(path, samples=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = Path(path)
    df = pd.read_csv(path, index_col=0)
    df.index = df.index.astype(str)
    if samples is not None:
        df = df[[(samples(s) if callable(samples) else s in samples) for s in df.index]]
    bad = [c for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])]
    if bad:
        raise UserError(f"{path}: expected samples x genes numbers (first column the sample id); "
                        f"non-numeric columns {bad[:5]}")
    df.index.name = "sample_id"
    df.columns = df.columns.astype(str)
    return df.astype(np.float32), pd.DataFrame({"gene_id": df.columns.to_numpy()})


def read_matrix(path, fmt="auto", samples=None, star_column="tpm_unstranded"):
    """Dispatch on `fmt` (gct | star | csv) or, for auto, on the file name. Whatever the file
    holds, the outcome is (values, genes) with finite values, or a UserError naming the file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"expression matrix {path} does not exist (config key expression.matrix)")
    if fmt == "auto":
        name = path.name.lower()
        fmt = "gct" if ".gct" in name else "csv" if name.endswith((".csv", ".csv.gz")) else "star"
    readers = {"gct": lambda: read_gct(path, samples), "star": lambda: read_star_manifest(path, star_column, samples),
               "csv": lambda: read_csv_matrix(path, samples)}
    if fmt not in readers:
        raise UserError(f"expression.format {fmt!r}: use auto, gct, star or csv")
    try:
        values, genes = readers[fmt]()
    except UserError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, UnicodeDecodeError, MemoryError,
            pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"expression matrix {path} cannot be read as {fmt.upper()} ({type(exc).__name__}: "
                        f"{str(exc)[:200]}); check the file and expression.format") from None
    if values.empty:
        raise UserError(f"expression matrix {path}: no values for the cohort's samples")
    if values.columns.duplicated().any():
        dup = values.columns[values.columns.duplicated()].tolist()[:5]
        raise UserError(f"expression matrix {path}: gene ids {dup} appear more than once")
    arr = values.to_numpy(np.float32, copy=False)
    if not np.isfinite(arr).all():
        r, c = np.argwhere(~np.isfinite(arr))[0]
        raise UserError(f"expression matrix {path}: sample {values.index[r]!r}, gene {values.columns[c]!r} is "
                        f"{arr[r, c]} (missing or not a finite number); fill or drop it")
    return values, genes
