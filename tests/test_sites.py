"""Site-preserved splits (split.preserve_site): every site in one partition, class shares as
close to the requested fractions as the sites allow (checked against every assignment of a small
cohort), impossible requests refused by name, sites read from a column or from TCGA barcodes."""
import itertools

import numpy as np
import pandas as pd
import pytest

from histosynth.split.sites import patient_sites, site_table, split_by_site
from histosynth.utils import UserError


def _cohort(spec, tcga=False):
    """spec: {site: {class: patients}} -> a sample sheet (one slide per patient)."""
    rows, k = [], 0
    for site, per in spec.items():
        for label, n in per.items():
            for _ in range(n):
                pid = f"TCGA-{site}-{k:04d}" if tcga else f"P{k:03d}"
                rows.append({"slide_id": f"{pid}-S1", "patient_id": pid, "label": label,
                             **({} if tcga else {"site": site})})
                k += 1
    return pd.DataFrame(rows)


def _deviation(split, sheet, fractions):
    per = split.groupby(["label", "partition"]).size().unstack(fill_value=0)
    tot = per.sum(axis=1)
    return sum(abs(per.get(p, 0)[c] - f * tot[c]) / tot[c] for c in per.index for p, f in fractions.items())


def test_sites_never_cross_partitions_and_the_assignment_is_optimal():
    rng = np.random.default_rng(0)
    spec = {f"S{i}": {"tumor": int(rng.integers(0, 6)), "normal": int(rng.integers(0, 6))} for i in range(8)}
    spec["S0"], spec["S1"] = {"tumor": 3, "normal": 1}, {"tumor": 1, "normal": 4}
    sheet = _cohort(spec)
    split = split_by_site(sheet, 0.25, 0.0)
    assert split.groupby("site")["partition"].nunique().max() == 1
    for c in ("tumor", "normal"):
        assert {"train", "test"} <= set(split.loc[split["label"] == c, "partition"])
    fr = {"train": 0.75, "test": 0.25}
    got = _deviation(split, sheet, fr)
    sites = sorted(spec)
    best = np.inf
    for combo in itertools.product(["train", "test"], repeat=len(sites)):  # every assignment of 8 sites
        part = dict(zip(sites, combo))
        s = split.assign(partition=split["site"].map(part))
        if all({"train", "test"} <= set(s.loc[s["label"] == c, "partition"]) for c in ("tumor", "normal")):
            best = min(best, _deviation(s, sheet, fr))
    assert got == pytest.approx(best, abs=1e-9)
    t = site_table(split)
    assert set(t.columns) == {"site", "partition", "normal", "tumor"} and t["site"].is_unique


def test_an_impossible_split_is_refused_naming_the_sites():
    sheet = _cohort({"A1": {"tumor": 5}, "B2": {"tumor": 3, "normal": 4}})  # normal only at B2
    with pytest.raises(UserError, match=r"no assignment of the 2 sites.*A1: tumor 5; B2: normal 4, tumor 3"):
        split_by_site(sheet, 0.3, 0.0)
    sheet = _cohort({"A1": {"tumor": 5, "normal": 2}, "B2": {"tumor": 3, "normal": 4}})
    with pytest.raises(UserError, match="validation"):  # two sites cannot give train, val and test
        split_by_site(sheet, 0.3, 0.1)


def test_sites_from_tcga_barcodes_or_a_column_and_their_errors():
    sheet = _cohort({"05": {"tumor": 2}, "18": {"normal": 2}, "44": {"tumor": 2, "normal": 2}}, tcga=True)
    assert set(patient_sites(sheet)) == {"05", "18", "44"}
    split = split_by_site(sheet, 0.3, 0.0)
    assert split.groupby("site")["partition"].nunique().max() == 1
    with pytest.raises(UserError, match="not TCGA barcodes.*site"):
        patient_sites(_cohort({"x": {"a": 1}}).drop(columns="site"))
    two = pd.concat([sheet, sheet.iloc[:1].assign(slide_id="extra", patient_id=sheet["patient_id"].iloc[0])])
    two["site"] = ["05", "05", "18", "18", "44", "44", "44", "44", "99"]
    with pytest.raises(UserError, match="several sites"):
        patient_sites(two)
