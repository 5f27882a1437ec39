"""Does the profile carry tissue information? Tiles generated from a held-out patient's
profile, compared with that patient's real tiles and with other held-out patients' tiles.

For each pair of held-out keys (p, q) the generated set of p is compared, at one sample size
n = min(|fake p|, |real p|, |real q|), with the real tiles of p ("same") and of q ("other");
FID is biased by n, so both sides of a comparison always use the same n. A positive gap
(other - same) means p's tiles look more like p than like q. Per key the gaps are averaged
over all other keys and over other keys of the same class: the first mostly asks whether the
profile carries the class, the second whether it carries anything beyond the class. For each,
a one-sided sign-flip permutation test over keys asks whether the mean gap exceeds what
chance gives. With few held-out patients the test has little power (its smallest p-value is
2^-k for k keys).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from histosynth.evaluate import metrics as M


def _dist(a, b, rng, n, kid_subset):
    ia, ib = rng.choice(len(a), n, replace=False), rng.choice(len(b), n, replace=False)
    fid = M.fid(a[ia], b[ib])
    kid, _ = M.kid(a[ia], b[ib], subsets=50, subset_size=min(kid_subset, n))
    return fid, kid


def profile_specificity(real: pd.DataFrame, f_real: np.ndarray, fake: pd.DataFrame, f_fake: np.ndarray,
                        key: str, seed=0, kid_subset=1000) -> dict:
    """`real`/`fake` rows align with `f_real`/`f_fake`; `real[key]` and `fake['expression_key']`
    name the profile. Returns per-key rows and the summary."""
    rng = np.random.default_rng(seed)
    keys = sorted(set(fake["expression_key"]) & set(real[key]))
    label = {k: str(fake.loc[fake["expression_key"] == k, "label"].iloc[0]) for k in keys}
    R = {k: f_real[(real[key] == k).to_numpy()] for k in keys}
    F = {k: f_fake[(fake["expression_key"] == k).to_numpy()] for k in keys}
    pairs = []
    for p, q in itertools.permutations(keys, 2):
        n = min(len(F[p]), len(R[p]), len(R[q]))
        if n < 4:
            continue
        fs, ks = _dist(F[p], R[p], rng, n, kid_subset)
        fo, ko = _dist(F[p], R[q], rng, n, kid_subset)
        pairs.append({"key": p, "other": q, "same_class": label[p] == label[q], "n": n, "fid_same": fs, "fid_other": fo,
                      "kid_same": ks, "kid_other": ko})
    pairs = pd.DataFrame(pairs)
    if pairs.empty:
        return {"n_keys": len(keys), "per_key": [], "pairs": 0, "note": "too few held-out tiles per profile"}
    pairs["gap"] = pairs["fid_other"] - pairs["fid_same"]
    pairs["kid_gap"] = pairs["kid_other"] - pairs["kid_same"]
    per_key = []
    for k, g in pairs.groupby("key"):
        row = {"key": k, "label": label[k], "n_real": int(len(R[k])), "n_fake": int(len(F[k])),
               "fid_same": float(g["fid_same"].mean()), "fid_other": float(g["fid_other"].mean()),
               "gap": float(g["gap"].mean()), "kid_gap": float(g["kid_gap"].mean())}
        for tag, sel in (("same_class", g["same_class"]), ("other_class", ~g["same_class"])):
            row[f"gap_{tag}"] = float(g.loc[sel, "gap"].mean()) if sel.any() else None
        per_key.append(row)
    def summary(gap_col, rows):
        gaps = np.array([r[gap_col] for r in rows if r[gap_col] is not None])
        if not len(gaps):
            return None
        k = len(gaps)
        # one-sided sign-flip permutation test of mean gap > 0 (exact when few keys)
        signs = (np.array(list(itertools.product([1, -1], repeat=k))) if k <= 16
                 else np.random.default_rng(seed).choice([1, -1], size=(20000, k)))
        null = (signs * gaps).mean(1)
        return {"n_keys": k, "mean_gap": float(gaps.mean()), "share_keys_closer_to_own": float((gaps > 0).mean()),
                "p_value_sign_flip": float((null >= gaps.mean() - 1e-12).mean()),
                "min_attainable_p": float(1 / len(signs))}

    same = pairs[pairs["same_class"]]
    out = {"n_keys": len(per_key), "pairs": int(len(pairs)),
           "mean_fid_same": float(np.mean([r["fid_same"] for r in per_key])),
           "mean_fid_other": float(np.mean([r["fid_other"] for r in per_key])),
           "share_pairs_closer_to_own": float((pairs["gap"] > 0).mean()),
           "share_pairs_closer_to_own_same_class": float((same["gap"] > 0).mean()) if len(same) else None,
           "all_others": summary("gap", per_key), "same_class": summary("gap_same_class", per_key),
           "per_key": per_key}
    return out
