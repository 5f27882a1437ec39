"""Copy audit: does a generator reproduce the tiles it was trained on? Pure functions of feature
arrays (the command in histosynth.commands.evaluate extracts them).

Three tests, in one extractor's feature space, of the generated tiles G against the real training
tiles T the generator saw and real tiles H of held-out patients it never saw:

* **Nearest-neighbour test.** Each tile's distance to its nearest training tile. The held-out
  tiles' distances are the null: how close a tile of a *new patient* comes to the training set.
  A generated tile closer than the null's 1st (5th) percentile is flagged; under the null 1% (5%)
  of tiles are, and a one-sided binomial test says whether the generated set has more. Per class,
  the class's generated and held-out tiles are measured against that class's training tiles.
* **Data-copying test** of Meehan, Chaudhuri & Dasgupta (AISTATS 2020). The training features
  (projected on their first ``dims`` principal components) are partitioned into cells by k-means;
  in each cell, a Mann-Whitney U test compares the generated and held-out tiles' distances to the
  cell's nearest training tile, Z-scored under the null; C_T is the mean of the cells' Z weighted
  by the held-out share of each cell, over the cells holding at least ``min_cell`` generated
  tiles. C_T well below 0 (generated tiles closer to the training set than new patients' tiles
  are) is data copying; well above 0, under-fitting.
* **Authenticity** of Alaa et al. (ICML 2022): a generated tile is authentic when it lies farther
  from its nearest training tile than that training tile lies from its own nearest other
  training tile. The held-out tiles' authenticity is the reference a non-copying generator
  reaches.

Copies may be mirrored or rotated (the generator's augmentations flip and rotate its inputs):
each audited tile is presented in every view of ``transforms`` (1, 2 or the 8 of the dihedral
group) and its distance is the smallest over the views, for the generated and the held-out tiles
alike, so the null stays comparable.

Besides the configured extractors, the audit runs in the pixel space (tiles at 32 px): a copy that
was re-encoded or slightly recoloured stays a near neighbour there, while an extractor trained for
other ends (the domain classifier, a foundation encoder) may place it as far as a different tile.
"""
from __future__ import annotations

import numpy as np

# The verdict's thresholds (written into copies.json and the report).
PERCENTILES = (1, 5)


def pixel_features(tiles_uint8: np.ndarray, side: int = 32) -> np.ndarray:
    """The pixel space: each tile resized to `side` px (area average) with values in [0, 1],
    flattened. Near-copies (re-encoded, slightly shifted in colour) stay near here, where an
    extractor trained for other ends may move them apart."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(tiles_uint8)).permute(0, 3, 1, 2).float() / 255
    if x.shape[-1] != side or x.shape[-2] != side:
        x = F.interpolate(x, size=(side, side), mode="area")
    return x.reshape(len(x), -1).numpy()  # float32: 8 views of 10,000 tiles at 32 px are 1 GB


def views(tiles_uint8: np.ndarray, n_views: int) -> list[np.ndarray]:
    """The tiles (N, H, W, C) in `n_views` views: 1 (as they are), 2 (and mirrored) or 8 (the
    dihedral group: four rotations, each also mirrored)."""
    if n_views not in (1, 2, 8):
        raise ValueError(f"views: n_views must be 1, 2 or 8, not {n_views}")
    out = [tiles_uint8]
    if n_views >= 2:
        out.append(tiles_uint8[:, :, ::-1])
    if n_views == 8:
        for k in (1, 2, 3):
            r = np.rot90(tiles_uint8, k, axes=(1, 2))
            out += [r, r[:, :, ::-1]]
    return [np.ascontiguousarray(v) for v in out]


def _centred32(x: np.ndarray, centre: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """float32 copy of `x` - `centre`, built a chunk at a time (no float64 copy of all of `x`)."""
    out = np.empty(np.shape(x), np.float32)
    for s in range(0, len(x), chunk):
        out[s:s + chunk] = np.asarray(x[s:s + chunk], np.float64) - centre
    return out


def nearest(query: np.ndarray, ref: np.ndarray, chunk: int = 1024, candidates: int = 8):
    """(distance, index) of each query row's nearest row of `ref` (Euclidean). Features are
    centred on `ref`'s mean (|q|^2 + |r|^2 - 2 q.r would lose the small distances of near-copies
    to rounding where the features share a large common part), the `candidates` nearest are found
    in float32 matrix products, and the nearest of them is chosen by distances computed directly
    in float64, which are the ones returned."""
    import torch

    if len(ref) == 0:
        raise ValueError("nearest: the reference set is empty")
    centre = np.asarray(ref).mean(0, dtype=np.float64)
    r = torch.from_numpy(_centred32(ref, centre))
    rn = (r * r).sum(1)
    k = min(candidates, len(ref))
    dist, idx = np.empty(len(query)), np.empty(len(query), np.int64)
    for s in range(0, len(query), chunk):
        q64 = np.asarray(query[s:s + chunk], np.float64)
        qc = torch.from_numpy((q64 - centre).astype(np.float32))
        cand = ((qc * qc).sum(1, keepdim=True) + rn[None, :] - 2 * qc @ r.T).topk(k, dim=1, largest=False).indices
        cand = cand.numpy()
        diff = q64[:, None, :] - np.asarray(ref)[cand].astype(np.float64, copy=False)
        d = np.sqrt((diff * diff).sum(-1))
        best = d.argmin(1)
        dist[s:s + chunk] = d[np.arange(len(d)), best]
        idx[s:s + chunk] = cand[np.arange(len(d)), best]
    return dist, idx


def nearest_over_views(view_feats: list[np.ndarray], ref: np.ndarray):
    """(distance, index, view) of each tile's nearest reference row over its views' features."""
    best = None
    for v, f in enumerate(view_feats):
        d, i = nearest(f, ref)
        if best is None:
            best = [d, i, np.zeros(len(d), np.int64)]
        else:
            closer = d < best[0]
            best[0] = np.where(closer, d, best[0])
            best[1] = np.where(closer, i, best[1])
            best[2] = np.where(closer, v, best[2])
    return tuple(best)


def binomial_excess(k: int, n: int, p: float) -> float:
    """One-sided binomial p-value P(X >= k) for X ~ Bin(n, p)."""
    from scipy.stats import binom

    return float(binom.sf(k - 1, n, p)) if n else 1.0


def nn_test(gen_d: np.ndarray, null_d: np.ndarray, percentiles=PERCENTILES) -> dict:
    """The nearest-neighbour test: for each percentile q of the null distances, the share of
    generated distances below it, the share expected under the null (q%), and the one-sided
    binomial p-value of the excess."""
    gen_d, null_d = np.asarray(gen_d, float), np.asarray(null_d, float)
    out = {"n_generated": int(len(gen_d)), "n_null": int(len(null_d)),
           "median_generated": float(np.median(gen_d)) if len(gen_d) else None,
           "median_null": float(np.median(null_d)) if len(null_d) else None}
    for q in percentiles:
        thr = float(np.percentile(null_d, q))
        k = int((gen_d < thr).sum())
        out[f"p{q}"] = {"threshold": thr, "expected": q / 100, "share": k / max(1, len(gen_d)), "count": k,
                        "p_value": binomial_excess(k, len(gen_d), q / 100)}
    return out


def mann_whitney_z(gen_d: np.ndarray, test_d: np.ndarray) -> float:
    """Z-scored Mann-Whitney U of the generated against the held-out distances: U counts the pairs
    (generated, held-out) where the generated distance is the larger (ties count one half); under
    the null U has mean mn/2 and variance mn(m+n+1)/12. Negative: generated tiles lie closer."""
    from scipy.stats import rankdata

    m, n = len(gen_d), len(test_d)
    ranks = rankdata(np.concatenate([gen_d, test_d]))
    u = ranks[:m].sum() - m * (m + 1) / 2
    return float((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12))


def data_copying_ct(train: np.ndarray, heldout: np.ndarray, gen: np.ndarray, cells: int = 20, min_cell: int = 20,
                    dims: int | None = 64, seed: int = 0) -> dict:
    """Meehan et al.'s C_T (see the module's docstring). Features are projected on the training
    set's first `dims` principal components (None: as they are); cells: k-means on the training
    features (at most one cell per 20 held-out tiles, so each cell's test has tiles to compare);
    cells with fewer than `min_cell` generated tiles, or with no held-out tile, are left out
    (Meehan's Pi_tau). Returns C_T, each cell's counts and Z, and the cells used."""
    from sklearn.cluster import KMeans

    train, heldout, gen = (np.asarray(a, np.float64) for a in (train, heldout, gen))
    if dims is not None and train.shape[1] > dims and len(train) > dims:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=dims, random_state=seed).fit(train)
        train, heldout, gen = pca.transform(train), pca.transform(heldout), pca.transform(gen)
    k = int(max(1, min(cells, len(heldout) // 20, len(train))))
    km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(train)
    ct, ch, cg = km.labels_, km.predict(heldout), km.predict(gen)
    per, num, den = [], 0.0, 0.0
    for c in range(k):
        t, h, g = train[ct == c], heldout[ch == c], gen[cg == c]
        row = {"cell": c, "n_train": int(len(t)), "n_heldout": int(len(h)), "n_generated": int(len(g)), "z": None}
        if len(h) and len(g) >= min_cell and len(t):
            row["z"] = mann_whitney_z(nearest(g, t)[0], nearest(h, t)[0])
            w = len(h) / len(heldout)
            num, den = num + w * row["z"], den + w
        per.append(row)
    used = [r["cell"] for r in per if r["z"] is not None]
    return {"c_t": float(num / den) if den else None, "cells": per, "cells_used": used, "k": k,
            "dims": int(train.shape[1]), "min_cell": min_cell}


def authenticity(train: np.ndarray, gen_d: np.ndarray, gen_idx: np.ndarray) -> tuple[float, np.ndarray]:
    """Alaa et al.'s authenticity from each tile's nearest training tile (`gen_idx`) and distance
    to it (`gen_d`): the share of tiles farther from it than it is from its own nearest other
    training tile; and the per-tile flags (True: authentic)."""
    used = np.unique(gen_idx)
    own = np.full(len(train), np.nan)
    if len(train) > 1 and len(used):
        own[used] = _nearest_other(train, used)
    auth = gen_d > own[gen_idx]
    return float(auth.mean()) if len(auth) else float("nan"), auth


def _nearest_other(train: np.ndarray, rows: np.ndarray, chunk: int = 1024, candidates: int = 8) -> np.ndarray:
    """Distance of each training row in `rows` to its nearest other training row (searched as in
    nearest(), the row itself excluded)."""
    import torch

    centre = np.asarray(train).mean(0, dtype=np.float64)
    r = torch.from_numpy(_centred32(train, centre))
    rn = (r * r).sum(1)
    k = min(candidates, len(train) - 1)
    out = np.empty(len(rows))
    for s in range(0, len(rows), chunk):
        own = np.asarray(rows[s:s + chunk])
        q = r[torch.from_numpy(own)]
        d2 = (q * q).sum(1, keepdim=True) + rn[None, :] - 2 * q @ r.T
        d2[torch.arange(len(own)), torch.from_numpy(own)] = float("inf")
        cand = d2.topk(k, dim=1, largest=False).indices.numpy()
        diff = np.asarray(train[own], np.float64)[:, None, :] - np.asarray(train)[cand].astype(np.float64)
        out[s:s + chunk] = np.sqrt((diff * diff).sum(-1)).min(1)
    return out


def _nearest_by_class(view_feats: list[np.ndarray], train: np.ndarray, train_labels: np.ndarray):
    """nearest_over_views against the whole training set, and each tile's distance to the nearest
    training tile of every class ({class: distances}), from one search per class's training rows
    (together one search of the whole set, at its cost)."""
    best, by_class = None, {}
    for c in sorted(set(train_labels)):
        rows = np.flatnonzero(train_labels == c)
        d, i, v = nearest_over_views(view_feats, train[rows])
        by_class[c], i = d, rows[i]
        if best is None:
            best = [d, i, v]
        else:
            closer = d < best[0]
            best = [np.where(closer, d, best[0]), np.where(closer, i, best[1]), np.where(closer, v, best[2])]
    return tuple(best), by_class


def _best_view(view_feats: list[np.ndarray], view: np.ndarray) -> np.ndarray:
    """Each tile's features in the view that came nearest to the training set."""
    out = np.array(view_feats[0], copy=True)
    for v in range(1, len(view_feats)):
        out[view == v] = view_feats[v][view == v]
    return out


def audit_features(train: np.ndarray, gen_views: list[np.ndarray], null_views: list[np.ndarray],
                   gen_labels=None, null_labels=None, opts: dict | None = None, null_patients=None,
                   train_labels=None) -> tuple[dict, dict]:
    """One extractor's audit. `train`: (n, d) training features; `gen_views` / `null_views`: the
    generated and held-out tiles' features, one array per view. Labels (optional) give the tests
    per class, each class against its own held-out tiles (against all held-out tiles where a
    class has fewer than `min_null` tiles or, given `null_patients`, fewer than
    `min_null_patients` patients: one patient's tiles measure that patient, not new patients).
    Given `train_labels` too, a class tested against its own held-out tiles measures both sides'
    distances to that class's training tiles: a generated tile of the class that looks like
    another class (an off-condition tile) lies near that class's training tiles, which the
    class's held-out tiles do not, and would otherwise pass for a copy; a copy of another class's
    tile is still seen by the test over all classes.
    Returns (results, per-tile arrays of the generated tiles: distance, nearest training row,
    view, flagged below the null's 1st and 5th percentiles, authentic)."""
    o = {"cells": 20, "min_cell": 20, "pca_dims": 64, "min_null": 20, "min_null_patients": 2, "seed": 0,
         **(opts or {})}
    tl = None if train_labels is None else np.asarray(train_labels).astype(str)
    g_by = h_by = {}
    if tl is not None and gen_labels is not None and null_labels is not None:
        (gd, gi, gv), g_by = _nearest_by_class(gen_views, train, tl)
        (hd, hi, hv), h_by = _nearest_by_class(null_views, train, tl)
    else:
        gd, gi, gv = nearest_over_views(gen_views, train)
        hd, hi, hv = nearest_over_views(null_views, train)
    res = {"nearest_neighbour": nn_test(gd, hd)}
    auth, auth_flags = authenticity(train, gd, gi)
    res["authenticity"] = {"generated": auth, "heldout": authenticity(train, hd, hi)[0]}
    res["data_copying"] = data_copying_ct(train, _best_view(null_views, hv), _best_view(gen_views, gv),
                                          cells=o["cells"], min_cell=o["min_cell"], dims=o["pca_dims"], seed=o["seed"])
    res["per_class"] = {}
    if gen_labels is not None and null_labels is not None:
        gl, hl = np.asarray(gen_labels).astype(str), np.asarray(null_labels).astype(str)
        pats = None if null_patients is None else np.asarray(null_patients).astype(str)
        for c in sorted(set(gl)):
            own = hl == c
            enough = own.sum() >= o["min_null"] and (pats is None or len(set(pats[own])) >= o["min_null_patients"])
            if enough and c in g_by:
                t = nn_test(g_by[c][gl == c], h_by[c][own])
                t["training"] = "class"
            else:
                t = nn_test(gd[gl == c], hd[own] if enough else hd)
                t["training"] = "all classes"
            t["null"] = "class" if enough else "all classes (too few held-out tiles or patients of the class)"
            t["authenticity"] = float(auth_flags[gl == c].mean())
            res["per_class"][c] = t
    p1, p5 = (res["nearest_neighbour"][f"p{q}"]["threshold"] for q in PERCENTILES)
    tiles = {"distance": gd, "nearest": gi, "view": gv, "below_p1": gd < p1, "below_p5": gd < p5,
             "authentic": auth_flags}
    return res, tiles


def _p(p: float) -> str:
    return "< 1e-300" if p < 1e-300 else f"= {p:.2g}"


# Spaces reported but not voting: the domain extractor is the reference classifier trained on the
# very tiles the generator trained on, so its space sets training tiles apart from held-out
# patients' by construction, and anything resembling the training patients looks closer there.
NOT_VOTING = {"domain": "trained on the generator's training tiles: its distances favour them by construction"}


def verdict(results: dict, alpha: float = 0.001, min_excess: float = 2.0, ct_threshold: float = -3.0) -> dict:
    """Copying, or no evidence of copying, from every space's results ({space: results of
    audit_features}); the spaces of NOT_VOTING are reported, not counted. Evidence of copying, in
    any voting space: more generated tiles below the null's 1st percentile than expected, at least
    `min_excess` times the expected share and with a binomial p-value below `alpha` divided by the
    number of such tests (Bonferroni: overall and per class, over the voting spaces); or Meehan's
    C_T below `ct_threshold` (a weighted mean of Z scores: -3 is a strong deviation).
    Authenticity is reported beside the held-out tiles' own and does not decide the verdict (its
    level depends on how densely the training tiles lie)."""
    voting = {ex: r for ex, r in results.items() if ex not in NOT_VOTING}
    tests = [(ex, "all", r["nearest_neighbour"]) for ex, r in voting.items()]
    tests += [(ex, c, t) for ex, r in voting.items() for c, t in r["per_class"].items()]
    level = alpha / max(1, len(tests))
    reasons = []
    for ex, group, t in tests:
        p = t["p1"]
        if p["share"] >= min_excess * p["expected"] and p["p_value"] < level:
            of = " of the class" if t.get("training") == "class" else ""
            reasons.append(f"[{ex}] {'' if group == 'all' else f'class {group}: '}{p['share']:.1%} of the generated "
                           f"tiles lie closer to a training tile{of} than 99% of held-out patients' tiles do (expected "
                           f"{p['expected']:.0%}, binomial p {_p(p['p_value'])})")
    for ex, r in voting.items():
        ct = r["data_copying"]["c_t"]
        if ct is not None and ct < ct_threshold:
            reasons.append(f"[{ex}] Meehan's C_T is {ct:.2f} (threshold {ct_threshold:g}): generated tiles lie closer "
                           f"to the training tiles than held-out patients' tiles do")
    copying = bool(reasons)
    spaces = ", ".join(voting) or "none"
    text = ("Copying: " + "; ".join(reasons) + ". Look at the closest pairs, and do not share these tiles as "
            "patient-free data before the flagged ones are removed or the generator is retrained."
            if copying else
            f"No evidence of copying: generated tiles lie no closer to the training tiles than held-out patients' "
            f"tiles do, by the nearest-neighbour test and Meehan's C_T in {spaces}. (Evidence, not proof: copies "
            f"these spaces cannot tell apart would not be seen.)")
    return {"verdict": "copying" if copying else "no evidence of copying", "text": text, "reasons": reasons,
            "voting": list(voting), "not_voting": {ex: NOT_VOTING[ex] for ex in results if ex in NOT_VOTING},
            "thresholds": {"alpha": alpha, "alpha_per_test": level, "tests": len(tests), "min_excess": min_excess,
                           "ct_threshold": ct_threshold, "percentile": PERCENTILES[0]}}
