"""Deterministic train / val / test split by patient, stratified by label.

Tiles inherit their patient's partition, so no patient's tissue is on both sides of any
evaluation. Each class keeps at least one test patient (and one val patient when
``val_fraction > 0``) as long as it has enough patients for a training patient to remain."""
from __future__ import annotations

import numpy as np
import pandas as pd

from histosynth.utils import UserError


def patient_labels(sheet: pd.DataFrame) -> pd.DataFrame:
    """One row per patient with its label; a patient with slides of several labels is an error
    (the classifier's target is per patient)."""
    labels = sheet.groupby("patient_id")["label"].agg(lambda s: sorted(set(s)))
    mixed = labels[labels.map(len) > 1]
    if len(mixed):
        raise UserError(f"patient(s) {list(mixed.index[:5])} have slides with different labels {list(mixed.iloc[:5])}; "
                        f"the split is by patient, so each patient needs one label")
    return labels.map(lambda v: v[0]).rename("label").reset_index()


def split_patients(sheet: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int) -> pd.DataFrame:
    pats = patient_labels(sheet)
    rng = np.random.default_rng(seed)
    parts = []
    for label, grp in pats.groupby("label", sort=True):
        ids = np.array(sorted(grp["patient_id"]))
        rng.shuffle(ids)
        n = len(ids)
        n_test = max(1, int(round(test_fraction * n))) if test_fraction > 0 else 0
        n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
        if n - n_test - n_val < 1:
            raise UserError(f"class {label!r} has {n} patient(s) ({', '.join(map(str, ids[:5]))}): too few for a test "
                            f"({n_test}), val ({n_val}) and training patient, since patients are never shared between "
                            f"partitions. Add patients of this class, or lower split.test_fraction / "
                            f"split.val_fraction (val_fraction 0 needs two patients per class).")
        part = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(pd.DataFrame({"patient_id": ids, "label": label, "partition": part}))
    return pd.concat(parts, ignore_index=True).sort_values(["partition", "label", "patient_id"]).reset_index(drop=True)


def assign_tiles(tiles: pd.DataFrame, split: pd.DataFrame) -> pd.DataFrame:
    part = dict(zip(split["patient_id"], split["partition"]))
    missing = sorted(set(tiles["patient_id"]) - set(part))
    if missing:
        raise UserError(f"tiles of patient(s) {missing[:5]} have no partition in the split")
    out = tiles.copy()
    out["partition"] = out["patient_id"].map(part)
    return out


def check_disjoint(train: pd.DataFrame, test: pd.DataFrame, what: str = "training and test") -> None:
    """Refuse any evaluation whose two sides share a patient."""
    shared = sorted(set(train["patient_id"]) & set(test["patient_id"]))
    if shared:
        raise UserError(f"patient(s) {shared[:5]} appear in both the {what} sets; the split must be by patient")
