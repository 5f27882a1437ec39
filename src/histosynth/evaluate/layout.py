"""Layout fidelity of label-map-conditioned generation: segment each generated tile with the
run's segmenter and compare it with the label map it was generated from.

Pure functions on integer maps (stage functions as in torch-fidelity: maps -> confusion
matrix -> metric). IoU is computed per class from the confusion matrix summed over all tiles
(dataset-level, as in Cityscapes), mIoU is its mean over classes present in the maps or in
the prediction. Three rows are reported side by side, with the same maps:

* ``generated``: segmentation of the generated tiles vs their input maps;
* ``real`` (ceiling): segmentation of the real tiles vs their maps; 1.0 by construction when
  the maps are the same colour segmentation (masks.source auto);
* ``chance``: segmentation of the generated tiles vs the maps of *other* tiles (a cyclic
  shift): what a generator that ignored the layout would score.

Confidence intervals: percentile bootstrap over patients (tiles of one patient are not
independent).
"""
from __future__ import annotations

import numpy as np


def confusion(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = target class, columns = predicted class."""
    t = np.asarray(target, np.int64).ravel()
    p = np.asarray(pred, np.int64).ravel()
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def iou(cm: np.ndarray) -> np.ndarray:
    """Per-class IoU; NaN for a class absent from both target and prediction."""
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(0) + cm.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, tp / denom, np.nan)


def miou(cm: np.ndarray) -> float:
    return float(np.nanmean(iou(cm)))


def pixel_accuracy(cm: np.ndarray) -> float:
    return float(np.trace(cm) / max(cm.sum(), 1))


def per_tile_confusions(pred: np.ndarray, target: np.ndarray, n_classes: int) -> np.ndarray:
    return np.stack([confusion(p, t, n_classes) for p, t in zip(pred, target)]) if len(pred) \
        else np.zeros((0, n_classes, n_classes), np.int64)


def _summary(cms: np.ndarray, groups: np.ndarray, names: list, n_boot: int, rng) -> dict:
    cm = cms.sum(0)
    out = {"miou": miou(cm), "pixel_accuracy": pixel_accuracy(cm),
           "iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou(cm))}}
    ug = np.unique(groups)
    per_group = np.stack([cms[groups == g].sum(0) for g in ug])
    if len(ug) >= 2 and n_boot:
        boots = [miou(per_group[rng.integers(0, len(ug), len(ug))].sum(0)) for _ in range(n_boot)]
        out["miou_ci95"] = [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]
    else:
        out["miou_ci95"] = None
    return out


def layout_fidelity(maps: np.ndarray, seg_fake: np.ndarray, seg_real: np.ndarray | None, groups, names: list,
                    n_boot: int = 500, seed: int = 0) -> dict:
    """The three rows for `maps` (input label maps), `seg_fake` (segmentations of the tiles
    generated from them), `seg_real` (segmentations of the real tiles the maps belong to) and
    `groups` (the patient of each map)."""
    rng = np.random.default_rng(seed)
    k = len(names)
    groups = np.asarray(groups)
    out = {"n_maps": int(len(maps)), "n_patients": int(len(np.unique(groups))), "classes": list(names)}
    out["generated"] = _summary(per_tile_confusions(seg_fake, maps, k), groups, names, n_boot, rng)
    if seg_real is not None:
        out["real"] = _summary(per_tile_confusions(seg_real, maps, k), groups, names, n_boot, rng)
    shift = max(1, len(maps) // 2)
    out["chance"] = _summary(per_tile_confusions(seg_fake, np.roll(maps, shift, axis=0), k), groups, names, 0, rng)
    return out
