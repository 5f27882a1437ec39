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


def test_patients_with_several_labels_stay_whole():
    """A TCGA tumour/normal cohort: every patient has a tumour slide, most a normal slide too.
    Each patient is one unit in one partition; each label keeps training and test patients."""
    rows = []
    for p in range(12):
        rows.append(dict(slide_id=f"TCGA-{p:02d}-01Z", patient_id=f"TCGA-{p:02d}", label="tumor"))
        if p % 4:
            rows.append(dict(slide_id=f"TCGA-{p:02d}-11A", patient_id=f"TCGA-{p:02d}", label="normal"))
    sh = pd.DataFrame(rows)
    s = split_patients(sh, 0.25, 0.0, seed=0)
    assert s["patient_id"].is_unique and len(s) == 12
    assert set(s["label"]) == {"tumor", "normal|tumor"}
    counts = s.groupby(["label", "partition"]).size().unstack(fill_value=0)
    assert counts.loc["normal|tumor", "test"] == 2 and counts.loc["tumor", "test"] == 1
    tiles = assign_tiles(sh.assign(patient_id=sh["patient_id"]), s)
    assert tiles.groupby("patient_id")["partition"].nunique().max() == 1
    for label in ("tumor", "normal"):
        assert {"train", "test"} <= set(tiles.loc[tiles["label"] == label, "partition"])
    assert s.equals(split_patients(sh.sample(frac=1, random_state=3), 0.25, 0.0, seed=0))  # row order does not matter


def test_a_label_only_on_multi_label_patients_without_a_test_patient_is_an_error():
    sh = pd.DataFrame([dict(slide_id=f"s{p}{lab}", patient_id=f"p{p}", label=lab)
                       for p in range(4) for lab in ("a", "b")] + [dict(slide_id=f"x{q}", patient_id=f"q{q}", label="a") for q in range(2)])
    # "b" is only on the 4 patients "a|b": that stratum keeps the minimum of one test patient
    s = split_patients(sh, 0.1, 0.0, 0)
    assert s.loc[s["label"] == "a|b", "partition"].value_counts().to_dict() == {"train": 3, "test": 1}
    with pytest.raises(UserError, match="label 'b' has no"):  # one "a|b" patient: no test patient is possible
        split_patients(sh[sh["patient_id"].isin(["p0", "q0", "q1"])], 0.1, 0.0, 0)
    with pytest.raises(UserError, match="contain '\\|'"):
        split_patients(pd.DataFrame([dict(slide_id="s", patient_id="p", label="a|b")]), 0.2, 0.0, 0)


def test_shared_patient_refused():
    with pytest.raises(UserError, match="both"):
        check_disjoint(pd.DataFrame({"patient_id": ["p1", "p2"]}), pd.DataFrame({"patient_id": ["p2"]}))
