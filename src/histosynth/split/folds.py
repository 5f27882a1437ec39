"""k-fold cross-validation by patient (``classify.folds``).

Small cohorts tested on one split rest on a handful of test patients. With k folds, every
patient is a test patient once: patients are dealt into k folds, and for fold i the study trains
a GAN and every classifier on the other folds' patients and tests on fold i's.

The deal is stratified like the split: within each label (or label set) the patients, shuffled
with ``split.seed``, go round-robin into the folds, each stratum starting where the previous one
ended, so the folds' sizes differ by at most one patient and each class's by at most one. Every
class needs a patient in every fold (each fold's test set must hold every class; the training
side then does too): a class with fewer than k patients is refused by name.

With ``split.preserve_site`` the folds are site-preserved (slideflow's "k-fold-preserved-site";
Howard et al. 2021): whole sites are assigned to folds by the same exact integer programme as the
site-preserved split (histosynth.split.sites.assign_sites), each class's patients per fold as
close to 1/k of them as the sites allow, every class in every fold, or refused naming the sites.

A fold's tiles (``fold_tiles``) are the split's tiles with partition "test" for the fold's
patients and "train" for everyone else (the split's val patients included)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from histosynth.split.patients import SEP
from histosynth.utils import UserError


def assign_folds(split: pd.DataFrame, k: int, seed: int, preserve_site: bool = False) -> pd.DataFrame:
    """`split`: the split's table (patient_id, label, partition[, site]). Returns patient_id,
    label, fold (0..k-1) and site when present, sorted by fold, label, patient."""
    if k < 2:
        raise UserError(f"classify.folds {k}: cross-validation needs at least 2 folds (1 means the split's test set)")
    pats = split.drop(columns=["partition"], errors="ignore").drop_duplicates("patient_id").reset_index(drop=True)
    pats["label"] = pats["label"].astype(str)
    single = pats.assign(one=pats["label"].str.split(SEP, regex=False)).explode("one")
    per_class = single.groupby("one")["patient_id"].nunique()
    few = per_class[per_class < k]
    if len(few):
        raise UserError(f"classify.folds {k}: class(es) {', '.join(f'{c!r} ({n} patient(s))' for c, n in few.items())} "
                        f"have fewer patients than folds; every fold needs a test patient of each class. Lower "
                        f"classify.folds to at most {int(per_class.min())}, or add patients")
    if preserve_site:
        if "site" not in pats.columns:
            raise UserError("classify.folds with split.preserve_site needs the split's site column; re-run the split "
                            "rule with split.preserve_site: true")
        from histosynth.split.sites import assign_sites

        names = [f"fold{i}" for i in range(k)]
        site_fold = assign_sites(pats, names, {n: 1 / k for n in names}, set(names), "a test patient in every fold",
                                 "lower classify.folds, or set split.preserve_site: false")
        fold = pats["site"].map(lambda s: names.index(site_fold[s]))
    else:
        rng = np.random.default_rng(seed)
        fold, start = {}, 0
        for _, grp in pats.groupby("label", sort=True):
            ids = np.array(sorted(grp["patient_id"].astype(str)))
            rng.shuffle(ids)
            for j, pid in enumerate(ids):
                fold[pid] = (start + j) % k
            start = (start + len(ids)) % k
        fold = pats["patient_id"].astype(str).map(fold)
    out = pats.assign(fold=fold.astype(int).to_numpy())
    _check(out, k)
    cols = ["patient_id", "label", "fold"] + (["site"] if "site" in out.columns else [])
    return out[cols].sort_values(["fold", "label", "patient_id"]).reset_index(drop=True)


def _check(folds: pd.DataFrame, k: int) -> None:
    per = folds.assign(one=folds["label"].str.split(SEP, regex=False)).explode("one")
    for label, grp in per.groupby("one"):
        missing = sorted(set(range(k)) - set(grp["fold"]))
        if missing:
            raise UserError(f"classify.folds {k}: label {label!r} has no patient in fold(s) {missing} (its "
                            f"{len(grp)} patient(s) also carry other labels); lower classify.folds or add patients "
                            f"with only this label")


def fold_tiles(tiles: pd.DataFrame, folds: pd.DataFrame, fold: int) -> pd.DataFrame:
    """The split's tiles with the fold's patients as the test partition, all others as train."""
    of = dict(zip(folds["patient_id"].astype(str), folds["fold"].astype(int)))
    missing = sorted(set(tiles["patient_id"].astype(str)) - set(of))
    if missing:
        raise UserError(f"tiles of patient(s) {missing[:5]} have no fold; re-run the folds rule")
    out = tiles.copy()
    out["partition"] = np.where(out["patient_id"].astype(str).map(of) == fold, "test", "train")
    out["fold"] = fold
    return out


def fold_table(folds: pd.DataFrame) -> pd.DataFrame:
    """Patients per fold and class (one row per fold; with sites, per site and fold)."""
    per = folds.assign(one=folds["label"].str.split(SEP, regex=False)).explode("one")
    keys = ["site", "fold"] if "site" in per.columns else ["fold"]
    t = per.groupby(keys + ["one"]).size().unstack(fill_value=0)
    t.columns.name = None
    return t.reset_index()
