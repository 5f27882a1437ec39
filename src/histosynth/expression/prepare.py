"""From a raw expression matrix to standardised per-patient (or per-slide) profiles.

Samples are matched to the cohort by a key: ``patient_id`` (TCGA: one tumour sample per
case) or ``slide_id`` (GTEx: the RNA-seq aliquot of the same tissue sample as the slide).
The key is read from each sample id by ``id_regex`` (its first group), or by the naming
scheme: GTEx ``GTEX-<donor>-<tissue sample>-SM-...``, TCGA barcodes ``TCGA-<TSS>-<case>-...``.
Several samples of one key are averaged in log space. Gene selection (protein-coding, then
the top-variance N), the mean and the standard deviation are fitted on the keys of training
patients only, and saved as a transform that new profiles go through unchanged.
"""
from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from histosynth.utils import UserError

log = logging.getLogger(__name__)


def key_of(sample_id: str, key: str, id_regex: str | None) -> str:
    if id_regex:
        m = re.match(id_regex, sample_id)
        return m.group(1) if m else ""
    parts = sample_id.split("-")
    if sample_id.startswith("GTEX-"):
        return "-".join(parts[:3] if key == "slide_id" else parts[:2])
    if sample_id.startswith("TCGA-"):
        return "-".join(parts[:3])
    return sample_id


def cohort_keys(sheet: pd.DataFrame, split: pd.DataFrame, key: str) -> pd.DataFrame:
    """One row per key: key, patient_id, label, partition."""
    part = split[["patient_id", "partition"]]
    if key == "patient_id":
        rows = split[["patient_id", "label", "partition"]].assign(key=split["patient_id"])
    else:
        rows = sheet[["slide_id", "patient_id", "label"]].merge(part, on="patient_id").rename(columns={"slide_id": "key"})
    return rows[["key", "patient_id", "label", "partition"]].drop_duplicates("key").reset_index(drop=True)


def log_values(values: pd.DataFrame, transform: str) -> pd.DataFrame:
    if (values.to_numpy() < 0).any():
        raise UserError("expression values must be non-negative TPM or counts (found negatives); "
                        "give raw values, histosynth log-transforms them itself")
    return np.log2(values + 1.0) if transform == "log2p1" else values


def prepare(values: pd.DataFrame, genes: pd.DataFrame, sheet: pd.DataFrame, split: pd.DataFrame, opts: dict):
    """(profiles: key, patient_id, label, partition + standardised genes; transform dict)."""
    key = opts["key"]
    keys = cohort_keys(sheet, split, key)
    sample_keys = pd.Series([key_of(s, key, opts.get("id_regex")) for s in values.index], index=values.index)
    matched = sample_keys[sample_keys.isin(set(keys["key"]))]
    if matched.empty:
        raise UserError(f"no expression sample matches a {key} of the cohort (sample ids like {list(values.index[:3])}, "
                        f"cohort keys like {list(keys['key'][:3])}); set expression.id_regex or expression.key")
    logged = log_values(values.loc[matched.index], opts["transform"])
    per_key = logged.groupby(matched.to_numpy()).mean()
    n_multi = int((matched.value_counts() > 1).sum())
    if n_multi:
        log.info("expression: %d %s(s) have several samples; averaged in log space", n_multi, key)
    missing = sorted(set(keys["key"]) - set(per_key.index))
    if missing:
        log.warning("expression: %d of %d %ss have no expression sample (e.g. %s); their tiles get no profile",
                    len(missing), len(keys), key, missing[:5])
    keys = keys[keys["key"].isin(per_key.index)].reset_index(drop=True)
    per_key = per_key.loc[keys["key"]]
    train = keys["partition"].isin(opts["fit_partitions"]).to_numpy()
    if train.sum() < 2:
        raise UserError(f"expression: only {int(train.sum())} training {key}(s) have a profile; the gene selection "
                        f"and standardisation are fitted on training patients and need at least 2")

    cols = list(per_key.columns)
    if opts["protein_coding"]:
        if "gene_type" not in genes.columns:
            raise UserError("expression.genes.protein_coding needs gene types, which only STAR counts files carry; "
                            "for GCT or CSV set it to false (and select genes by top_variance)")
        pc = set(genes.loc[genes["gene_type"] == "protein_coding", "gene_id"])
        cols = [c for c in cols if c in pc]
    x_train = per_key.loc[per_key.index[train], cols]
    var = x_train.var(axis=0, ddof=1)
    var = var[var > 1e-8]
    top = var.sort_values(ascending=False, kind="stable")
    if opts["top_variance"]:
        top = top.iloc[: opts["top_variance"]]
    cols = [c for c in cols if c in top.index]  # file order, for readability
    mean = x_train[cols].mean(axis=0)
    std = x_train[cols].std(axis=0, ddof=1).clip(lower=1e-6)
    z = (per_key[cols] - mean) / std
    profiles = pd.concat([keys.reset_index(drop=True), z.reset_index(drop=True)], axis=1)
    names = dict(zip(genes["gene_id"], genes.get("gene_name", genes["gene_id"])))
    transform = {"key": key, "id_regex": opts.get("id_regex"), "transform": opts["transform"], "genes": cols,
                 "gene_names": [names.get(c, c) for c in cols], "mean": mean.to_numpy().tolist(),
                 "std": std.to_numpy().tolist(), "fitted_on": {"partitions": opts["fit_partitions"],
                                                              "n_keys": int(train.sum())}}
    log.info("expression: %d %ss x %d genes (%d training), from %d samples", len(profiles), key, len(cols),
             int(train.sum()), len(matched))
    return profiles, transform


def apply_transform(values: pd.DataFrame, transform: dict, max_missing=0.1) -> pd.DataFrame:
    """New raw profiles (samples x genes) -> standardised values in the training gene space.
    Genes the new data lack are set to the training mean (0 after standardising), with a
    warning; more than `max_missing` of them missing is an error."""
    genes = transform["genes"]
    have = [g for g in genes if g in values.columns]
    if not have:
        # accept gene symbols where ids are not given
        sym = dict(zip(transform["gene_names"], genes))
        values = values.rename(columns=sym)
        have = [g for g in genes if g in values.columns]
    frac = 1 - len(have) / len(genes)
    if frac > max_missing:
        raise UserError(f"the new profiles lack {frac:.0%} of the {len(genes)} genes the model was trained on "
                        f"(e.g. {[g for g in genes if g not in values.columns][:5]}); use the same gene ids "
                        f"(or symbols) as the training matrix")
    if frac:
        log.warning("new profiles: %d of %d genes missing; set to the training mean", len(genes) - len(have), len(genes))
    logged = log_values(values.reindex(columns=genes), transform["transform"])
    z = (logged - np.asarray(transform["mean"])) / np.asarray(transform["std"])
    return z.fillna(0.0).astype(np.float32)


def attach_embeddings(tiles: pd.DataFrame, emb: pd.DataFrame) -> pd.DataFrame:
    """Tiles joined with the embedding of their patient or slide (column `expression_key`).
    Tiles whose key has no profile are dropped, with a count in the log."""
    key = "slide_id" if set(emb["key"]) & set(tiles["slide_id"]) else "patient_id"
    cols = ["key"] + [c for c in emb.columns if c.startswith(("z_mu_", "z_sd_"))]
    out = tiles.merge(emb[cols].rename(columns={"key": "expression_key"}), left_on=key, right_on="expression_key",
                      how="inner")
    lost = len(tiles) - len(out)
    if lost:
        log.warning("expression: %d of %d tiles belong to a %s without a profile and are left out", lost, len(tiles), key)
    if out.empty:
        raise UserError("no tile has an expression profile: the embeddings' keys match neither slide_id nor patient_id")
    return out
