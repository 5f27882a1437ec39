"""Deterministic train / val / test split by patient, stratified by label.

Tiles inherit their patient's partition, so no patient's tissue is on both sides of any
evaluation. Each class keeps at least one test patient (and one val patient when
``val_fraction > 0``) as long as it has enough patients for a training patient to remain.
A patient may carry several labels (slides of several tissues, or tumour and normal slides):
it is one unit all the same, stratified with the patients of the same label set.

When tiles carry their own labels (``tiles.roi.labels``: the classes of annotated regions), a
slide's labels are those of its kept tiles (``tile_label_sheet``)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from histosynth.utils import UserError

SEP = "|"  # joins a patient's labels into its stratum, e.g. "Brain - Cortex|Lung"


def patient_labels(sheet: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: `label`, its label, or its labels sorted and joined by "|" when its
    slides carry several (a GTEx donor with lung and brain slides, a TCGA patient with tumour and
    normal slides), and `n_labels`."""
    bad = sorted({str(v) for v in sheet["label"] if SEP in str(v)})
    if bad:
        raise UserError(f"label(s) {bad[:5]} contain {SEP!r}, which joins a patient's labels in the split; rename them "
                        f"in the sample sheet")
    labels = sheet.groupby("patient_id")["label"].agg(lambda s: sorted(set(map(str, s))))
    return pd.DataFrame({"patient_id": labels.index, "label": labels.map(SEP.join).to_numpy(),
                         "n_labels": labels.map(len).to_numpy()})


def tile_label_sheet(sheet: pd.DataFrame, tiles: pd.DataFrame) -> pd.DataFrame:
    """The sample sheet with each slide's label replaced by the labels of its kept tiles, one row
    per slide and label (a slide without kept tiles keeps its sheet label). Identical to the sheet
    when tiles carry their slide's label."""
    kept = tiles.loc[tiles["kept"].astype(bool), ["slide_id", "label"]].astype(str).drop_duplicates()
    by_slide = kept.groupby("slide_id")["label"].agg(sorted)
    rows = []
    for _, r in sheet.iterrows():
        for lab in by_slide.get(str(r["slide_id"]), [str(r["label"])]):
            rows.append({**r.to_dict(), "label": lab})
    return pd.DataFrame(rows, columns=sheet.columns)


def split_patients(sheet: pd.DataFrame, test_fraction: float, val_fraction: float, seed: int) -> pd.DataFrame:
    """Patients into train / val / test, stratified by their label (set): every patient with all
    its slides in one partition. Each single-label class keeps at least one test (and val) patient
    and one training patient; patients with several labels form strata of their own (rounded
    shares, no minimum, unless one of its labels has no single-label patients: then it keeps the
    minimums too), and every label must end with a training patient and, when test_fraction > 0,
    a test patient."""
    pats = patient_labels(sheet)
    rng = np.random.default_rng(seed)
    parts = []
    single = {lab for lab in pats["label"] if SEP not in lab}
    for label, grp in pats.groupby("label", sort=True):
        ids = np.array(sorted(grp["patient_id"]))
        rng.shuffle(ids)
        n = len(ids)
        if SEP in label and (set(label.split(SEP)) <= single or n < 2):
            # several labels, each also a class of its own: the share of this combination, without a minimum
            n_test, n_val = int(round(test_fraction * n)), int(round(val_fraction * n))
        else:  # one label, or a combination holding a label no single-label patient has (annotated regions)
            n_test = max(1, int(round(test_fraction * n))) if test_fraction > 0 else 0
            n_val = max(1, int(round(val_fraction * n))) if val_fraction > 0 else 0
            if n - n_test - n_val < 1:
                raise UserError(f"class {label!r} has {n} patient(s) ({', '.join(map(str, ids[:5]))}): too few for a "
                                f"test ({n_test}), val ({n_val}) and training patient, since patients are never shared "
                                f"between partitions. Add patients of this class, or lower split.test_fraction / "
                                f"split.val_fraction (val_fraction 0 needs two patients per class).")
        n_test = min(n_test, n)
        n_val = min(n_val, n - n_test)
        part = ["test"] * n_test + ["val"] * n_val + ["train"] * (n - n_test - n_val)
        parts.append(pd.DataFrame({"patient_id": ids, "label": label, "partition": part}))
    out = pd.concat(parts, ignore_index=True).sort_values(["partition", "label", "patient_id"]).reset_index(drop=True)
    _check_coverage(out, test_fraction)
    return out


def _check_coverage(split: pd.DataFrame, test_fraction: float) -> None:
    """Every single label has a training patient, and a test patient when there is a test set."""
    per = split.assign(one=split["label"].str.split(SEP, regex=False)).explode("one")
    for label, grp in per.groupby("one"):
        parts = set(grp["partition"])
        need = {"train"} | ({"test"} if test_fraction > 0 else set())
        if need - parts:
            raise UserError(f"label {label!r} has no {' or '.join(sorted(need - parts))} patient after the split "
                            f"(its {len(grp)} patient(s) all carry other labels too); add patients with only this "
                            f"label, or change split.test_fraction")


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
