"""Site-preserved splits: every tissue source site's patients in one partition.

Slides carry their site's stain and scanner signature, and a classifier can learn the site
instead of the biology (Howard et al., Nature Communications 2021); with a site on both sides of
the split, a held-out score measures that too. ``split.preserve_site`` assigns whole sites to
partitions. The assignment is an integer programme solved exactly (scipy's MILP, HiGHS): each
site goes to one partition; every class has at least one training patient, one test patient
(when ``test_fraction`` > 0) and one validation patient (when ``val_fraction`` > 0); and the
patients of each class in each partition are as close as the sites allow to the class's
requested share (the sum over classes and partitions of the absolute deviation, each class
weighted by 1 / its number of patients). No assignment meeting the minimums is refused, naming
the sites and their patients per class: there is no greedy fallback that could fail silently.

A patient's site: the sample sheet's ``site`` column where it has one (any cohort's manifest can
carry it), else the tissue source site code of a TCGA barcode (``TCGA-<TSS>-<participant>``).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from histosynth.split.patients import SEP, patient_labels
from histosynth.utils import UserError

TCGA = re.compile(r"^TCGA-([A-Z0-9]{2})-[A-Z0-9]{4}")


def patient_sites(sheet: pd.DataFrame) -> pd.Series:
    """site per patient_id (see the module docstring); a patient with slides of two sites, or
    with none, is refused by name."""
    if "site" in sheet.columns and (sheet["site"].astype(str).str.strip() != "").any():
        s = sheet.assign(site=sheet["site"].astype(str).str.strip())
        missing = sorted(s.loc[s["site"].isin(["", "nan", "None"]), "patient_id"].astype(str).unique())
        if missing:
            raise UserError(f"split.preserve_site: patient(s) {missing[:5]} have no value in the sample sheet's site "
                            f"column; give every slide its tissue source site")
    else:
        codes = sheet["patient_id"].astype(str).str.extract(TCGA)[0]
        missing = sorted(sheet.loc[codes.isna(), "patient_id"].astype(str).unique())
        if missing:
            raise UserError(f"split.preserve_site: patient(s) {missing[:5]} are not TCGA barcodes and the sample sheet "
                            f"has no site column; add a `site` column to the manifest (the tissue source site, "
                            f"hospital or scanner of each slide)")
        s = sheet.assign(site=codes)
    per = s.groupby("patient_id")["site"].agg(lambda v: sorted(set(v)))
    two = {p: v for p, v in per.items() if len(v) > 1}
    if two:
        p, v = next(iter(two.items()))
        raise UserError(f"split.preserve_site: patient {p} has slides of several sites ({', '.join(v)}); a patient "
                        f"stays whole, so its sites cannot be kept apart. Give its slides one site in the site column")
    return per.map(lambda v: v[0])


def split_by_site(sheet: pd.DataFrame, test_fraction: float, val_fraction: float) -> pd.DataFrame:
    """Patients into train / val / test with every site in one partition (see the module's
    docstring). Returns patient_id, label, partition, site."""
    pats = patient_labels(sheet)
    pats["site"] = pats["patient_id"].map(patient_sites(sheet))
    parts = ["train", "test"] + (["val"] if val_fraction > 0 else [])
    share = {"test": test_fraction, "val": val_fraction, "train": 1 - test_fraction - val_fraction}
    need = {"train"} | ({"test"} if test_fraction > 0 else set()) | ({"val"} if val_fraction > 0 else set())
    what = "a training and a test" + (" and a validation" if val_fraction > 0 else "") + " patient"
    site_part = assign_sites(pats, parts, share, need, what,
                             "lower split.val_fraction to 0, or set split.preserve_site: false")
    out = pats.assign(partition=pats["site"].map(site_part))[["patient_id", "label", "partition", "site"]]
    return out.sort_values(["partition", "label", "patient_id"]).reset_index(drop=True)


def assign_sites(pats: pd.DataFrame, parts: list, share: dict, need: set, what: str, remedy: str) -> dict:
    """{site: partition}: the exact assignment of whole sites to `parts` (an integer programme)
    that puts at least one patient of every class in each partition of `need` and keeps each
    class's patients per partition as close to `share` as the sites allow (the sum of absolute
    deviations, each class weighted by 1 / its patients). `pats`: patient_id, label (labels
    joined by "|"), site. Refused, naming the sites, when no assignment meets the minimums."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    single = pats.assign(one=pats["label"].str.split(SEP, regex=False)).explode("one")
    classes = sorted(single["one"].unique())
    sites = sorted(pats["site"].unique())
    n = single.groupby(["site", "one"]).size().unstack(fill_value=0).reindex(index=sites, columns=classes, fill_value=0)
    S, P, C = len(sites), len(parts), len(classes)
    nx, nd = S * P, C * P  # x[s, p] binary; d[c, p] >= 0 the absolute deviations
    xi = lambda s, p: s * P + p  # noqa: E731
    di = lambda c, p: nx + c * P + p  # noqa: E731
    total = n.sum(axis=0).to_numpy().astype(float)
    rows, lo, hi = [], [], []

    def row(entries, low, high):
        r = np.zeros(nx + nd)
        for i, v in entries:
            r[i] += v
        rows.append(r)
        lo.append(low)
        hi.append(high)

    for s in range(S):  # each site in exactly one partition
        row([(xi(s, p), 1) for p in range(P)], 1, 1)
    for c in range(C):
        for p, name in enumerate(parts):
            counts = [(xi(s, p), float(n.iat[s, c])) for s in range(S)]
            target = share[name] * total[c]
            row(counts + [(di(c, p), -1)], -np.inf, target)  # count - d <= target
            row(counts + [(di(c, p), 1)], target, np.inf)  # count + d >= target
            if name in need:
                row(counts, 1, np.inf)  # at least one patient of the class here
    cost = np.zeros(nx + nd)
    for c in range(C):
        for p in range(P):
            cost[di(c, p)] = 1 / total[c]
    res = milp(cost, constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.r_[np.ones(nx), np.zeros(nd)], bounds=Bounds(0, np.r_[np.ones(nx), np.full(nd, np.inf)]))
    if res.status != 0 or res.x is None:
        table = "; ".join(f"{s}: " + ", ".join(f"{c} {int(n.at[s, c])}" for c in classes if n.at[s, c]) for s in sites)
        raise UserError(f"split.preserve_site: no assignment of the {S} sites to {'/'.join(parts)} gives every class "
                        f"{what} with each site in one partition. Patients per site and class: {table}. Add "
                        f"sites (or patients of the missing classes at other sites), {remedy}")
    x = res.x[:nx].reshape(S, P)
    return {sites[s]: parts[int(np.argmax(x[s]))] for s in range(S)}


def site_table(split: pd.DataFrame) -> pd.DataFrame:
    """Patients per site, partition and class (one row per site and partition)."""
    single = split.assign(one=split["label"].str.split(SEP, regex=False)).explode("one")
    t = single.groupby(["site", "partition", "one"]).size().unstack(fill_value=0)
    t.columns.name = None
    return t.reset_index()
