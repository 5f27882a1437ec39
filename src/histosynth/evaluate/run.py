"""The evaluate stage: FID, KID, precision/recall, per-class FID, a real-vs-real floor, and
concordance, for one generated set against the real tiles the GAN was trained on.

Protocol (so numbers are comparable within a run):
* the real reference set is split in two halves by patient (by tile if a class has a single
  patient; recorded); FID(fake, real half A) and the floor FID(real half B, real half A)
  use the same number of samples n on each side, since FID is biased by n;
* fewer than ``min_samples`` per side is refused unless ``allow_small`` (then flagged);
  fewer than 10,000 is warned about.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from histosynth.evaluate import metrics as M
from histosynth.utils import UserError

log = logging.getLogger(__name__)


def check_field_of_view(real: pd.DataFrame, fake: pd.DataFrame) -> None:
    """Real and generated tiles must show the same field of view at the same size, or every
    metric compares magnifications instead of tissue."""
    for col, tol in (("tile_px", 0), ("tile_um", 0.01)):
        if col not in real.columns or col not in fake.columns:
            continue
        r, f = float(real[col].iloc[0]), float(fake[col].iloc[0])
        if abs(r - f) > tol * max(r, 1):
            raise UserError(f"generated tiles have {col} {f:g} but the real tiles {r:g}: they must match. Set "
                            f"generate.fov_um / generate.out_px so generated tiles are cropped and resized to the "
                            f"real tiles' field of view and size")


def real_halves(real: pd.DataFrame, seed=0):
    rng = np.random.default_rng(seed)
    a_idx, b_idx, how = [], [], "patient"
    for _, grp in real.groupby("label"):
        pats = np.array(sorted(grp["patient_id"].unique()))
        if len(pats) >= 2:
            rng.shuffle(pats)
            a_p = set(pats[: len(pats) // 2 + len(pats) % 2])
            a_idx += list(grp.index[grp["patient_id"].isin(a_p)])
            b_idx += list(grp.index[~grp["patient_id"].isin(a_p)])
        else:
            how = "tile"
            ids = rng.permutation(grp.index.to_numpy())
            a_idx += list(ids[: len(ids) // 2])
            b_idx += list(ids[len(ids) // 2:])
    return np.array(a_idx), np.array(b_idx), how


def _fid_per_value(f_real, feats_real, f_fake, feats_fake, col, rng, a, b) -> dict:
    """{value: {fid, floor, n}} for each value of `col`: FID between the generated tiles of that
    value and the value's real tiles in half `a`, and its own real-vs-real floor (half `a` against
    half `b`), with the same n on every side (FID is biased by n). Values with fewer than 2 tiles
    on any side are left out; where half `b` has none of a value (one patient), the value's
    tiles of half `a` are halved by tile for the floor."""
    per = {}
    real_v, fake_v = f_real[col].astype(str).to_numpy(), f_fake[col].astype(str).to_numpy()
    for value in sorted(set(real_v)):
        ra, rb = a[real_v[a] == value], b[real_v[b] == value]
        if len(rb) < 2:
            ids = rng.permutation(ra)
            ra, rb = ids[: len(ids) // 2], ids[len(ids) // 2:]
        f = np.flatnonzero(fake_v == value)
        nn = min(len(ra), len(rb), len(f))
        if nn >= 2:
            sa = feats_real[rng.choice(ra, nn, replace=False)]
            per[value] = {"fid": M.fid(sa, feats_fake[rng.choice(f, nn, replace=False)]),
                          "floor": M.fid(sa, feats_real[rng.choice(rb, nn, replace=False)]), "n": int(nn)}
    return per


def _class_matched(f_real, a, b, f_fake, max_samples=None) -> dict | None:
    """{class: tiles per side} with which FID and its floor compare like with like: real half A,
    real half B and the generated tiles all sampled with half A's class shares, as many as the
    scarcest side allows (and at most `max_samples` in all). The two real halves are split by
    patient, so their class shares differ; without matching, the floor would also measure that
    difference, and the generated tiles' own class shares (generate.per_class: balanced) would
    enter the FID. None when the generated tiles have no label column or lack one of the real
    classes (then every side is sampled without regard to class)."""
    if "label" not in f_real.columns or "label" not in f_fake.columns:
        return None
    real_v, fake_v = f_real["label"].astype(str).to_numpy(), f_fake["label"].astype(str).to_numpy()
    classes, shares = np.unique(real_v[a], return_counts=True)
    shares = shares / shares.sum()
    room = []
    for c, p in zip(classes, shares):
        avail = min((real_v[a] == c).sum(), (real_v[b] == c).sum(), (fake_v == c).sum())
        if avail == 0:
            return None
        room.append(avail / p)
    n = int(min(room + [len(a)] + ([max_samples] if max_samples else [])))
    counts = {str(c): int(np.floor(n * p + 1e-9)) for c, p in zip(classes, shares)}
    return counts if sum(counts.values()) >= 2 else None


def evaluate_features(f_real: pd.DataFrame, feats_real: np.ndarray, f_fake: pd.DataFrame, feats_fake: np.ndarray,
                      opts: dict, extractor: str, attributes=()) -> dict:
    """FID, KID, precision/recall against a patient-disjoint real-vs-real floor; FID per class
    (the label) and, for `attributes` (an attributes run's condition columns), per value of each."""
    a, b, how = real_halves(f_real, opts["seed"])
    pos = {k: i for i, k in enumerate(f_real.index)}
    a = np.array([pos[i] for i in a])
    b = np.array([pos[i] for i in b])
    rng = np.random.default_rng(opts["seed"])
    matched = _class_matched(f_real, a, b, f_fake, opts.get("max_samples"))
    if matched is not None:
        n = sum(matched.values())
    else:
        n = min(len(a), len(b), len(feats_fake))
        if opts.get("max_samples"):
            n = min(n, opts["max_samples"])
    small = n < opts["min_samples"]
    if small and not opts["allow_small"]:
        raise UserError(f"FID with {n} samples per side is below evaluate.min_samples ({opts['min_samples']}); "
                        f"such FIDs are strongly biased. Add slides/tiles, generate more, or set "
                        f"evaluate.allow_small: true to compute it anyway (it is flagged in the report).")
    if n < 10000:
        log.warning("[%s] FID from %d samples per side (< 10,000): compare only with the floor computed here", extractor, n)
    if matched is not None:  # every side with half A's class shares
        real_v, fake_v = f_real["label"].astype(str).to_numpy(), f_fake["label"].astype(str).to_numpy()
        ra, rb, fk = (rng.permutation(np.concatenate([rng.choice(pool[lab[pool] == c], k, replace=False)
                                                      for c, k in matched.items()]))  # classes mixed: P/R takes a prefix
                      for pool, lab in ((a, real_v), (b, real_v), (np.arange(len(fake_v)), fake_v)))
    else:
        ra, rb = rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)
        fk = rng.choice(len(feats_fake), n, replace=False)
    out = {"extractor": extractor, "n_real": int(n), "n_fake": int(n), "halves_split_by": how,
           "below_min_samples": bool(small), "class_matched": matched is not None,
           "class_counts": {k: int(v) for k, v in (matched or {}).items()}}
    out["fid"] = M.fid(feats_real[ra], feats_fake[fk])
    out["fid_real_vs_real"] = M.fid(feats_real[ra], feats_real[rb])
    km, ks = M.kid(feats_real[ra], feats_fake[fk], subsets=opts["kid_subsets"], subset_size=opts["kid_subset_size"])
    out["kid_mean"], out["kid_std"] = km, ks
    fm, fs = M.kid(feats_real[ra], feats_real[rb], subsets=opts["kid_subsets"], subset_size=opts["kid_subset_size"])
    out["kid_real_vs_real"] = fm
    pr_n = min(n, opts["pr_max_samples"])
    out["precision"], out["recall"] = M.precision_recall(feats_real[ra[:pr_n]], feats_fake[fk[:pr_n]], k=opts["pr_k"])
    per = _fid_per_value(f_real, feats_real, f_fake, feats_fake, "label", rng, a, b)
    out["per_class_fid"] = {k: v["fid"] for k, v in per.items()}
    out["per_class_floor"] = {k: v["floor"] for k, v in per.items()}
    out["per_class_n"] = {k: v["n"] for k, v in per.items()}
    out["per_attribute_fid"] = {col: {k: v["fid"] for k, v in _fid_per_value(f_real, feats_real, f_fake, feats_fake,
                                                                            col, rng, a, b).items()}
                                for col in attributes if col in f_real.columns and col in f_fake.columns}
    return out


def concordance(prob: np.ndarray, intended: np.ndarray, strong_threshold: float) -> dict:
    """Share of generated tiles the real-trained classifier assigns to their intended class
    (weak), and with probability at least `strong_threshold` (strong)."""
    pred = prob.argmax(1)
    p_int = prob[np.arange(len(prob)), intended]
    return {"weak": float((pred == intended).mean()), "strong": float((p_int >= strong_threshold).mean()),
            "strong_threshold": strong_threshold, "n": int(len(prob))}


def class_concordance(prob: np.ndarray, labels, classes: list, strong_threshold: float) -> dict:
    """:func:`concordance` of generated tiles whose intended classes are `labels` (names from
    `classes`, the classifier's outputs), with the weak concordance of each class and the
    classes generated below chance (`below_chance`: the classifier assigns tiles generated for
    them to them less often than a uniform guess, 1 / number of classes, would: the generator
    does not honour that condition)."""
    intended = np.array([classes.index(v) for v in labels])
    out = concordance(prob, intended, strong_threshold)
    hit = prob.argmax(1) == intended
    out["per_class"] = {c: float(hit[intended == i].mean()) for i, c in enumerate(classes) if (intended == i).any()}
    out["chance"] = 1 / len(classes)
    out["below_chance"] = [c for c, v in out["per_class"].items() if v < out["chance"]]
    return out
