"""Metrics of the augmentation study with bootstrap confidence intervals over test patients.

Tiles of one patient are not independent, so the unit of resampling is the patient: each
bootstrap replicate draws test patients with replacement (stratified by class) and
recomputes the metric on their tiles, averaged over the arm's seeds.

Cross-validated predictions (a ``fold`` column, classify.folds) are scored per fold and seed
(each fold's models only rank that fold's tiles) and averaged; the replicates then draw
patients within each fold and class, so every fold keeps its size and classes."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def binary_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of scores for y == 1 (Mann-Whitney, ties counted half): sklearn's value without its
    per-call overhead, which dominates the thousands of bootstrap replicates."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    if n1 == 0 or n0 == 0:
        return float("nan")
    return float((rankdata(score)[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tile_metrics(y: np.ndarray, prob: np.ndarray) -> dict:
    """AUC (one-vs-rest macro for more than two classes), balanced accuracy, accuracy and macro F1."""
    pred = prob.argmax(1)
    n_cls = prob.shape[1]
    if len(np.unique(y)) < 2:
        auc = float("nan")
    elif n_cls == 2:
        auc = binary_auc(y, prob[:, 1])
    else:
        auc = roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(n_cls)))
    present = np.unique(y)
    recall = [float((pred[y == c] == c).mean()) for c in present]
    f1 = []
    for c in np.union1d(present, np.unique(pred)):
        tp, fp, fn = int(((pred == c) & (y == c)).sum()), int(((pred == c) & (y != c)).sum()), int(((pred != c) & (y == c)).sum())
        f1.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return {"auc": float(auc), "balanced_accuracy": float(np.mean(recall)), "accuracy": float((pred == y).mean()),
            "f1": float(np.mean(f1))}


def _seed_rows(pred: pd.DataFrame) -> list:
    """The rows of each scoring group, in order: each seed, or with a fold column each (fold, seed)."""
    keys = ["fold", "seed"] if "fold" in pred.columns else ["seed"]
    return [np.asarray(idx) for _, idx in sorted(pred.groupby(keys).indices.items())]


def patient_replicates(pred: pd.DataFrame, seed_rows: list, n_boot: int, seed: int):
    """Bootstrap replicates over test patients: each draws patients with replacement, stratified
    by class (and fold), and yields the drawn patients' rows group by group (a list like `seed_rows`)."""
    keys = ["fold", "y"] if "fold" in pred.columns else ["y"]
    patients = pred.groupby("patient_id")[keys].first()
    strata = [ids.to_numpy() for _, ids in sorted(patients.groupby(keys if len(keys) > 1 else keys[0]).groups.items())]
    pid = pred["patient_id"].to_numpy()
    rows = {p: [r[pid[r] == p] for r in seed_rows] for p in patients.index}  # each patient's rows per group
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        chosen = np.concatenate([rng.choice(ids, len(ids), replace=True) for ids in strata])
        yield [np.concatenate([rows[p][k] for p in chosen]) for k in range(len(seed_rows))]


def arm_metrics(pred: pd.DataFrame, n_boot=1000, seed=0) -> dict:
    """`pred`: one row per (seed, test tile) with columns seed, patient_id, y, p0..p{k-1}."""
    pcols = sorted([c for c in pred.columns if c.startswith("p") and c[1:].isdigit()], key=lambda c: int(c[1:]))
    y_all, p_all = pred["y"].to_numpy(), pred[pcols].to_numpy()
    seed_rows = _seed_rows(pred)

    def on(rows_of_seed):
        per_seed = [tile_metrics(y_all[r], p_all[r]) for r in rows_of_seed]
        return {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}, per_seed

    point, per_seed = on(seed_rows)
    boot = {k: [] for k in point}
    for rows in patient_replicates(pred, seed_rows, n_boot, seed):
        for k, v in on(rows)[0].items():
            boot[k].append(v)
    out = dict(point)
    for k, vals in boot.items():
        vals = np.asarray(vals)
        vals = vals[np.isfinite(vals)]
        out[f"{k}_ci95"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else [None, None]
        out[f"{k}_seed_std"] = float(np.std([m[k] for m in per_seed]))
    if "fold" in pred.columns:  # per fold: seed-averaged values; their spread; the seed spread within folds
        fold_of = [pred["fold"].iat[r[0]] for r in seed_rows]
        folds = sorted(set(fold_of))
        per_fold = [{k: float(np.mean([m[k] for m, f in zip(per_seed, fold_of) if f == fo])) for k in point}
                    for fo in folds]
        for k in point:
            out[f"{k}_fold_std"] = float(np.std([m[k] for m in per_fold], ddof=1)) if len(folds) > 1 else 0.0
            out[f"{k}_seed_std"] = float(np.mean([np.std([m[k] for m, f in zip(per_seed, fold_of) if f == fo])
                                                  for fo in folds]))
        out["folds"] = [{"fold": int(fo), **m, "n_test_patients": int(pred.loc[pred["fold"] == fo, "patient_id"].nunique())}
                        for fo, m in zip(folds, per_fold)]
        out["n_folds"] = len(folds)
    out["n_seeds"] = int(pred["seed"].nunique())
    out["n_test_patients"] = int(pred["patient_id"].nunique())
    out["n_test_tiles"] = int(len(pred) // max(out["n_seeds"], 1))
    return out


PAIRED_KEYS = ("auc", "balanced_accuracy")


def paired_difference(pred_a: pd.DataFrame, pred_b: pd.DataFrame, n_boot=1000, seed=0, keys=PAIRED_KEYS) -> dict:
    """Arm A minus arm B on the same test tiles and seeds: for each metric the difference of the
    seed-averaged values, its 95% interval from a paired bootstrap over test patients (each
    replicate draws patients with replacement, stratified by class, and recomputes *both* arms
    on them, so the patients' shared difficulty cancels), and a two-sided p-value for no
    difference (the share of replicates whose difference lies as far from the observed one as
    the observed one lies from 0: the bootstrap distribution shifted to the null)."""
    key = ["seed", "patient_id", "y"] + (["fold"] if "fold" in pred_a.columns else [])
    for p in (pred_a, pred_b):
        if not {"seed", "patient_id", "y"} <= set(p.columns):
            raise ValueError("paired_difference: predictions need seed, patient_id and y")
    a = pred_a.reset_index(drop=True)
    b = pred_b.reset_index(drop=True)
    if len(a) != len(b) or not a[key].equals(b[key]):
        raise ValueError("paired_difference: the arms were not tested on the same tiles and seeds in the same order")
    pcols = sorted([c for c in a.columns if c.startswith("p") and c[1:].isdigit()], key=lambda c: int(c[1:]))
    y = a["y"].to_numpy()
    pa, pb = a[pcols].to_numpy(), b[pcols].to_numpy()
    seed_rows = _seed_rows(a)

    def diff(rows_of_seed):
        da = [tile_metrics(y[r], pa[r]) for r in rows_of_seed]
        db = [tile_metrics(y[r], pb[r]) for r in rows_of_seed]
        return {k: float(np.mean([m[k] for m in da]) - np.mean([m[k] for m in db])) for k in keys}

    point = diff(seed_rows)
    boot = {k: [] for k in keys}
    for rows in patient_replicates(a, seed_rows, n_boot, seed):  # the same patients for both arms
        d = diff(rows)
        for k in keys:
            boot[k].append(d[k])
    out = {}
    for k in keys:
        vals = np.asarray(boot[k])
        vals = vals[np.isfinite(vals)]
        out[k] = point[k]
        if len(vals) and np.isfinite(point[k]):
            out[f"{k}_ci95"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))]
            out[f"{k}_p"] = float(min(1.0, (np.abs(vals - point[k]) >= abs(point[k]) - 1e-12).mean()))
        else:
            out[f"{k}_ci95"], out[f"{k}_p"] = [None, None], None
    out["n_test_patients"] = int(a["patient_id"].nunique())
    out["n_seeds"] = int(a["seed"].nunique())
    if "fold" in a.columns:
        out["n_folds"] = int(a["fold"].nunique())
    out["n_boot"] = int(n_boot)
    return out
