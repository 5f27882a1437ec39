"""Metrics of the augmentation study with bootstrap confidence intervals over test patients.

Tiles of one patient are not independent, so the unit of resampling is the patient: each
bootstrap replicate draws test patients with replacement (stratified by class) and
recomputes the metric on their tiles, averaged over the arm's seeds."""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score


def tile_metrics(y: np.ndarray, prob: np.ndarray) -> dict:
    pred = prob.argmax(1)
    n_cls = prob.shape[1]
    if len(np.unique(y)) < 2:
        auc = float("nan")
    elif n_cls == 2:
        auc = roc_auc_score(y, prob[:, 1])
    else:
        auc = roc_auc_score(y, prob, multi_class="ovr", average="macro", labels=list(range(n_cls)))
    return {"auc": float(auc), "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
            "accuracy": float((pred == y).mean()), "f1": float(f1_score(y, pred, average="macro"))}


def arm_metrics(pred: pd.DataFrame, n_boot=1000, seed=0) -> dict:
    """`pred`: one row per (seed, test tile) with columns seed, patient_id, y, p0..p{k-1}."""
    pcols = sorted([c for c in pred.columns if c.startswith("p") and c[1:].isdigit()], key=lambda c: int(c[1:]))

    def on(df):
        per_seed = [tile_metrics(g["y"].to_numpy(), g[pcols].to_numpy()) for _, g in df.groupby("seed")]
        return {k: float(np.mean([m[k] for m in per_seed])) for k in per_seed[0]}, per_seed

    point, per_seed = on(pred)
    patients = pred.groupby("patient_id")["y"].first()
    by_class = [patients.index[patients == c].to_numpy() for c in sorted(patients.unique())]
    groups = {p: g for p, g in pred.groupby("patient_id")}
    rng = np.random.default_rng(seed)
    boot = {k: [] for k in point}
    for _ in range(n_boot):
        chosen = np.concatenate([rng.choice(ids, len(ids), replace=True) for ids in by_class])
        df = pd.concat([groups[p].assign(_rep=i) for i, p in enumerate(chosen)], ignore_index=True)
        m, _ = on(df)
        for k, v in m.items():
            boot[k].append(v)
    out = dict(point)
    for k, vals in boot.items():
        vals = np.asarray(vals)
        vals = vals[np.isfinite(vals)]
        out[f"{k}_ci95"] = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) else [None, None]
        out[f"{k}_seed_std"] = float(np.std([m[k] for m in per_seed]))
    out["n_seeds"] = int(pred["seed"].nunique())
    out["n_test_patients"] = int(len(patients))
    out["n_test_tiles"] = int(len(pred) // max(out["n_seeds"], 1))
    return out
