import pandas as pd
import pytest

from histosynth.split.patients import assign_tiles, check_disjoint, split_patients
from histosynth.utils import UserError


def sheet(n_per_class=10):
    rows = []
    for label in ("a", "b"):
        for p in range(n_per_class):
            for s in range(1 + p % 2):
                rows.append(dict(slide_id=f"{label}{p}s{s}", patient_id=f"{label}{p}", label=label))
    return pd.DataFrame(rows)


def test_split_is_by_patient_stratified_and_deterministic():
    sh = sheet()
    s1 = split_patients(sh, 0.2, 0.1, seed=0)
    assert s1.equals(split_patients(sh, 0.2, 0.1, seed=0))
    assert not s1.equals(split_patients(sh, 0.2, 0.1, seed=1))
    assert s1["patient_id"].is_unique
    counts = s1.groupby(["label", "partition"]).size().unstack()
    assert (counts["test"] == 2).all() and (counts["val"] == 1).all() and (counts["train"] == 7).all()
    tiles = pd.DataFrame({"patient_id": sh["patient_id"].repeat(5).to_numpy()})
    t = assign_tiles(tiles, s1)
    assert t.groupby("patient_id")["partition"].nunique().max() == 1


def test_too_few_patients_is_an_error():
    with pytest.raises(UserError, match="too few"):
        split_patients(sheet(2), 0.5, 0.5, seed=0)


def test_mixed_label_patient_is_an_error():
    sh = sheet(3)
    sh.loc[1, "label"] = "b"  # patient a1 has two slides: now one of each label
    with pytest.raises(UserError, match="different labels"):
        split_patients(sh, 0.2, 0.0, 0)


def test_shared_patient_refused():
    with pytest.raises(UserError, match="both"):
        check_disjoint(pd.DataFrame({"patient_id": ["p1", "p2"]}), pd.DataFrame({"patient_id": ["p2"]}))
