"""k-fold cross-validation by patient (classify.folds): the deal of patients into folds (stratified,
or site-preserved and exact), the fold-aware statistics, and the cross-validated DAG."""
import itertools
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy.stats import norm

from histosynth.classify.stats import _seed_rows, arm_metrics, paired_difference, patient_replicates
from histosynth.split.folds import assign_folds, fold_table, fold_tiles
from histosynth.utils import UserError


def _split(spec, sites=False):
    """spec: {site: {label: patients}} -> a split table (patient_id, label, partition[, site])."""
    rows, k = [], 0
    for site, per in spec.items():
        for label, n in per.items():
            for _ in range(n):
                rows.append({"patient_id": f"P{k:03d}", "label": label, "partition": "train",
                             **({"site": site} if sites else {})})
                k += 1
    return pd.DataFrame(rows)


def test_stratified_folds_hold_every_class_and_balance_sizes():
    split = _split({"x": {"a": 7, "b": 5, "c": 4}})
    folds = assign_folds(split, 4, seed=0)
    assert sorted(folds["patient_id"]) == sorted(split["patient_id"])  # each patient exactly once
    per = folds.groupby(["label", "fold"]).size().unstack(fill_value=0)
    assert (per > 0).all().all()  # every class in every fold: every fold tests every class
    assert (per.max(axis=1) - per.min(axis=1) <= 1).all()  # each class dealt evenly
    sizes = folds["fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1 and set(sizes.index) == {0, 1, 2, 3}
    assert folds.equals(assign_folds(split, 4, seed=0))  # reproducible
    assert not folds.equals(assign_folds(split, 4, seed=1))
    assert set(fold_table(folds).columns) == {"fold", "a", "b", "c"}
    with pytest.raises(UserError, match=r"'c' \(4 patient\(s\)\).*at most 4"):
        assign_folds(split, 5, seed=0)
    with pytest.raises(UserError, match="at least 2 folds"):
        assign_folds(split, 1, seed=0)


def test_a_fold_tests_its_patients_and_trains_on_all_others():
    split = _split({"x": {"a": 3, "b": 3}})
    folds = assign_folds(split, 3, seed=0)
    tiles = pd.DataFrame({"patient_id": np.repeat(split["patient_id"], 2), "partition": "val", "kept": True})
    for i in range(3):
        t = fold_tiles(tiles, folds, i)
        test = set(t.loc[t["partition"] == "test", "patient_id"])
        assert test == set(folds.loc[folds["fold"] == i, "patient_id"])
        assert set(t["partition"]) == {"train", "test"} and (t["fold"] == i).all()
    with pytest.raises(UserError, match="no fold"):
        fold_tiles(tiles.assign(patient_id="P999"), folds, 0)


def _deviation(folds, k):
    per = folds.groupby(["label", "fold"]).size().unstack(fill_value=0).reindex(columns=range(k), fill_value=0)
    tot = per.sum(axis=1)
    return sum(abs(per.at[c, f] - tot[c] / k) / tot[c] for c in per.index for f in range(k))


def test_site_preserved_folds_never_share_a_site_and_are_optimal():
    rng = np.random.default_rng(3)
    spec = {f"S{i}": {"tumor": int(rng.integers(0, 5)), "normal": int(rng.integers(0, 5))} for i in range(6)}
    spec["S0"], spec["S1"], spec["S2"] = {"tumor": 2, "normal": 1}, {"tumor": 1, "normal": 3}, {"tumor": 2, "normal": 2}
    split = _split(spec, sites=True)
    folds = assign_folds(split, 3, seed=0, preserve_site=True)
    assert folds.groupby("site")["fold"].nunique().max() == 1
    assert (folds.groupby(["label", "fold"]).size().unstack(fill_value=0) > 0).all().all()
    sites = sorted(spec)
    best = np.inf
    for combo in itertools.product(range(3), repeat=len(sites)):  # every assignment of the 6 sites
        f = folds.assign(fold=folds["site"].map(dict(zip(sites, combo))))
        if (f.groupby(["label", "fold"]).size().unstack(fill_value=0).reindex(columns=range(3), fill_value=0) > 0).all().all():
            best = min(best, _deviation(f, 3))
    assert _deviation(folds, 3) == pytest.approx(best, abs=1e-9)
    t = fold_table(folds)
    assert {"site", "fold", "tumor", "normal"} == set(t.columns) and t["site"].is_unique


def test_impossible_site_preserved_folds_are_refused_naming_the_sites():
    split = _split({"A1": {"tumor": 4, "normal": 2}, "B2": {"tumor": 2, "normal": 1}, "C3": {"tumor": 3}}, sites=True)
    with pytest.raises(UserError, match=r"no assignment of the 3 sites.*A1: normal 2, tumor 4; B2: normal 1, tumor 2; "
                                        r"C3: tumor 3.*lower classify.folds"):
        assign_folds(split, 3, seed=0, preserve_site=True)  # normal at two sites cannot fill three folds
    with pytest.raises(UserError, match="site column"):
        assign_folds(split.drop(columns="site"), 2, seed=0, preserve_site=True)


def _fold_study(rng, d, k=5, n_pat=8, n_tiles=4, sd_patient=0.5, seeds=(0,)):
    """k folds of a simulated study (scores = d * y + patient effect + tile noise), one model
    per fold and seed: the tile-level AUC of every fold is Phi(d / sqrt(2 (1 + sd_patient^2)))."""
    rows = []
    for f in range(k):
        for p in range(2 * n_pat):
            y, u = p % 2, rng.normal(0, sd_patient)
            for s in seeds:
                sc = d * y + u + rng.normal(0, 1, n_tiles)
                rows += [dict(fold=f, seed=s, patient_id=f"F{f}P{p}", y=y, p0=1 - q, p1=q) for q in 1 / (1 + np.exp(-sc))]
    return pd.DataFrame(rows)


def test_cross_validated_interval_covers_a_known_auc_and_reports_the_folds():
    d, sd_patient = 0.8, 0.5
    true_auc = norm.cdf(d / np.sqrt(2 * (1 + sd_patient**2)))
    rng = np.random.default_rng(1)
    hits, n = 0, 80
    for i in range(n):
        m = arm_metrics(_fold_study(rng, d, k=4), n_boot=100, seed=i)
        hits += m["auc_ci95"][0] <= true_auc <= m["auc_ci95"][1]
    # nominal 95% (about 90% in simulations with 8 patients per class and fold: a percentile
    # bootstrap of small strata is slightly narrow); fewer than 68 of 80 would be a real under-coverage
    assert hits >= 68, f"{hits}/{n} intervals covered the true AUC {true_auc:.3f}"
    assert m["auc_ci95"][1] - m["auc_ci95"][0] < 0.25
    pred = _fold_study(rng, d, k=3, seeds=(0, 1))
    m = arm_metrics(pred, n_boot=50)
    assert m["n_folds"] == 3 and m["n_seeds"] == 2 and m["n_test_patients"] == 48 and len(m["folds"]) == 3
    per_fold = [arm_metrics(pred[pred["fold"] == f].drop(columns="fold"), n_boot=10)["auc"] for f in range(3)]
    assert [f["auc"] for f in m["folds"]] == pytest.approx(per_fold)
    assert m["auc"] == pytest.approx(np.mean(per_fold)) and m["auc_fold_std"] == pytest.approx(np.std(per_fold, ddof=1))
    # each bootstrap replicate keeps every fold's patients per class: its size and classes
    groups = _seed_rows(pred)
    assert len(groups) == 6
    for rows in itertools.islice(patient_replicates(pred, groups, 5, 0), 5):
        for r, g in zip(rows, groups):
            assert len(r) == len(g) and pred["fold"].to_numpy()[r].tolist() == pred["fold"].to_numpy()[g].tolist()
            assert np.bincount(pred["y"].to_numpy()[r]).tolist() == np.bincount(pred["y"].to_numpy()[g]).tolist()


def test_paired_difference_over_folds_is_zero_for_identical_arms_and_detects_a_real_one():
    rng = np.random.default_rng(2)
    a = _fold_study(rng, 1.5, k=3, seeds=(0, 1))
    same = paired_difference(a, a.copy(), n_boot=100)
    assert same["auc"] == 0 and same["auc_ci95"] == [0.0, 0.0] and same["auc_p"] == 1.0
    assert same["n_folds"] == 3 and same["n_seeds"] == 2
    z = np.log(a["p1"] / a["p0"]) - 1.5 * a["y"]  # the same patients and noise without the class signal
    b = a.assign(p1=1 / (1 + np.exp(-(z + 0.3 * a["y"]))))
    b["p0"] = 1 - b["p1"]
    diff = paired_difference(a, b, n_boot=200)
    assert diff["auc"] > 0.1 and diff["auc_ci95"][0] > 0 and diff["auc_p"] < 0.05
    with pytest.raises(ValueError, match="same tiles"):
        paired_difference(a, b.assign(fold=(b["fold"] + 1) % 3), n_boot=10)


def test_the_cross_validated_study_runs_through_the_workflow(e2e_workdir, tmp_path):
    """classify.folds 2 on the tiny cohort: a GAN per fold trained without the fold's patients,
    every arm tested on each fold, gathered into the study and the report."""
    from e2e import run

    from histosynth.gan.checkpoint import read_metadata

    d = tmp_path / "cv"
    shutil.copytree(e2e_workdir, d, symlinks=True, ignore=shutil.ignore_patterns(".snakemake"))
    cfg = yaml.safe_load((d / "config" / "config.yaml").read_text())
    cfg["classify"].update(folds=2, arms=["real", "mixed"], seeds=[0])  # the folds' mechanics, at less cost
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    for done in ("results/classify", "results/report"):  # the single-split study and the report it fed
        shutil.rmtree(d / done)
    r = run(["results/report/summary.json", "--rerun-triggers", "mtime"], d)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    ran = set(re.findall(r"\(Rule: (\w+)\)", r.stdout + r.stderr))
    assert {"folds", "train_gan_fold", "generate_fold", "classify_fold", "classify", "report"} <= ran
    assert "train_gan" not in ran  # the single-split runs are reused
    folds = pd.read_csv(d / "results/folds/folds.tsv", sep="\t")
    split = pd.read_csv(d / "results/split/split.tsv", sep="\t")
    assert sorted(folds["patient_id"]) == sorted(split["patient_id"])
    for i in range(2):
        held = set(folds.loc[folds["fold"] == i, "patient_id"])
        trained = set(read_metadata(d / f"results/folds/{i}/gan/stylegan2-class/selected.pt")["training_set"]["patients"])
        assert trained == set(folds["patient_id"]) - held  # the fold's GAN saw every other patient, none of its own
        tested = set(pd.read_parquet(d / f"results/folds/{i}/classify/predictions.parquet")["patient_id"])
        assert tested == held
    study = json.loads((d / "results/classify/study.json").read_text())
    assert study["cross_validation"] == {"folds": 2, "test_patients": len(folds)}
    m = study["metrics"]["mixed_x1"]
    assert m["n_folds"] == 2 and len(m["folds"]) == 2 and m["n_test_patients"] == len(folds)
    assert m["auc"] == pytest.approx(np.mean([f["auc"] for f in m["folds"]]))
    assert "mixed_x1 - real" in study["differences"] and study["differences"]["mixed_x1 - real"]["n_folds"] == 2
    summary = json.loads((d / "results/report/summary.json").read_text())
    assert summary["classifier_cross_validation"]["folds"] == 2
    html = (d / "results/report/summary.html").read_text()
    assert "2-fold cross-validation by patient" in html and "fold 1 AUC" in html
