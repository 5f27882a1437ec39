"""Colour fidelity: do generated tiles have the stain colours of the real ones?

Every tile is converted to haematoxylin / eosin / DAB optical densities (Ruifrok & Johnston's
colour deconvolution, skimage.color.rgb2hed). A set of tiles (one real patient's, or the
generated tiles of one class) is summarised per channel by the mean over all its pixels and the
spread (standard deviation over all its pixels, pooled from per-tile means and variances). The
generated tiles of a class pass a statistic when it lies within the range that the real
patients of that class span (min to max over patients): a generator may differ from any one
patient, but not from all of them in the same direction.

The control: the class's real tiles pooled over its patients, as a generator that reproduced
them exactly would present them, are summarised the same way. Pooled means lie within the
patients' range, but a pooled spread also holds the differences between patients and can lie
above every patient's own; the range a statistic is judged by then reaches the pooled real value
(``extended``), so the real tiles themselves always pass and a failure is the generator's.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CHANNELS = ("H", "E", "D")


def tile_moments(tiles_uint8: np.ndarray, chunk: int = 256, max_side: int = 64) -> np.ndarray:
    """(N, 6): per tile, the mean and the mean of squares of each HED channel over its pixels
    (columns H, E, D means, then H, E, D means of squares). Tiles larger than `max_side` px are
    read on a regular pixel grid of at most that many pixels a side (every 4th pixel of a
    256 px tile): the statistics of 4,096 pixels, at 1/16 of the cost."""
    from skimage.color import rgb2hed

    tiles = np.asarray(tiles_uint8)
    if tiles.ndim != 4 or tiles.shape[-1] != 3:
        raise ValueError(f"tiles must be (N, H, W, 3) RGB, got shape {tiles.shape}")
    step = max(1, -(-max(tiles.shape[1:3]) // max_side))
    tiles = tiles[:, ::step, ::step]
    out = np.empty((len(tiles), 6), np.float64)
    for i in range(0, len(tiles), chunk):
        hed = np.stack([rgb2hed(t) for t in tiles[i:i + chunk]]).reshape(-1, tiles.shape[1] * tiles.shape[2], 3)
        out[i:i + len(hed), :3] = hed.mean(1)
        out[i:i + len(hed), 3:] = (hed ** 2).mean(1)
    return out


def pooled_stats(moments: np.ndarray, weights: np.ndarray | None = None) -> dict:
    """{channel: {mean, spread}} of a set of equally sized tiles from their :func:`tile_moments`,
    each tile weighted by `weights` (equally without)."""
    m = moments.mean(0) if weights is None else (moments * (weights / weights.sum())[:, None]).sum(0)
    var = np.maximum(m[3:] - m[:3] ** 2, 0.0)
    return {c: {"mean": float(m[i]), "spread": float(np.sqrt(var[i]))} for i, c in enumerate(CHANNELS)}


def colour_check(real: pd.DataFrame, real_moments: np.ndarray, fake: pd.DataFrame, fake_moments: np.ndarray,
                 by: str = "label", real_weights: np.ndarray | None = None) -> dict:
    """Per value of `by` (the class): the generated tiles' pooled HED mean and spread per channel
    against the range over the real patients of that value, reaching the real tiles' own pooled
    value where that lies outside (the control; see the module). `real` needs `patient_id` and
    `by`; rows of the tables match the rows of their moments; `real_weights` (one per real row,
    when `real` is a sample: the tiles each row stands for) weight the rows in the pooled
    control, equal without. ``passed`` is True when every statistic of
    every class lies within its range; classes with fewer than two real patients have no range
    and are reported as such."""
    per, passed = {}, True
    real_v, fake_v = real[by].astype(str).to_numpy(), fake[by].astype(str).to_numpy()
    pats = real["patient_id"].astype(str).to_numpy()
    w = np.ones(len(real)) if real_weights is None else np.asarray(real_weights, np.float64)
    for value in sorted(set(real_v) & set(fake_v)):
        rows = real_v == value
        patients = sorted(set(pats[rows]))
        gen = pooled_stats(fake_moments[fake_v == value])
        if len(patients) < 2:
            per[value] = {"generated": gen, "patients": len(patients), "no_range": True}
            continue
        pstats = [pooled_stats(real_moments[rows & (pats == p)]) for p in patients]
        pooled = pooled_stats(real_moments[rows], w[rows])
        checks = {}
        for c in CHANNELS:
            for stat in ("mean", "spread"):
                vals = [s[c][stat] for s in pstats]
                lo, hi, r, g = min(vals), max(vals), pooled[c][stat], gen[c][stat]
                a, b = min(lo, r), max(hi, r)
                eps = 1e-9 * max(abs(a), abs(b))  # the same tiles summed in another order still pass
                checks[f"{c}_{stat}"] = {"generated": g, "real_min": a, "real_max": b, "patients_min": lo,
                                         "patients_max": hi, "real_pooled": r, "extended": not lo <= r <= hi,
                                         "within": bool(a - eps <= g <= b + eps)}
        ok = all(v["within"] for v in checks.values())
        passed &= ok
        per[value] = {"checks": checks, "patients": len(patients), "within": ok}
    outside = [f"{k} {name}" for k, v in per.items() for name, c in v.get("checks", {}).items() if not c["within"]]
    return {"by": by, "space": "HED optical density (skimage rgb2hed)", "per_class": per, "passed": bool(passed),
            "outside": outside}


def sample_rows(index: pd.DataFrame, group_cols: list, per_group: int, seed: int = 0) -> pd.DataFrame:
    """At most `per_group` rows of each group (random, seeded), in index order: bounds the cost of
    the colour check on large cohorts."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, grp in index.groupby(group_cols, sort=True):
        idx = grp.index.to_numpy()
        keep.append(idx if len(idx) <= per_group else rng.choice(idx, per_group, replace=False))
    return index.loc[np.sort(np.concatenate(keep))] if keep else index.iloc[:0]
