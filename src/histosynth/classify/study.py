"""The augmentation study: does adding synthetic tiles help a classifier on real patients?

Arms (``classify.arms``):
  real                 the real training tiles only, with flips, rotations and brightness/contrast
                       jitter (every arm's augmentation)
  real_noaug           the real training tiles with no augmentation
  real_hed             the real training tiles with flips, rotations and H&E stain jitter (Tellez
                       et al. 2019; ``classify.hed_sigma``)
  synthetic            synthetic tiles only, as many as there are real training tiles
  mixed                real + ``r`` x as many synthetic tiles, one arm per ratio r
  (each also at the ``classify.real_fractions`` < 1: a low-data setting keeping that share
  of the training *patients*, drawn per seed)

Every arm trains the same architecture for the same number of steps and is tested on the same
held-out real test patients, which neither the GAN nor any classifier saw (checked). The
real-only arms are the augmentation-only baselines: a synthetic gain counts against the best of
them, not only against ``real``."""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from histosynth.classify import model as clf
from histosynth.classify.stats import arm_metrics
from histosynth.slides.store import load_tiles
from histosynth.split.patients import check_disjoint
from histosynth.utils import UserError

log = logging.getLogger(__name__)

# real-only arms (augmentation-only baselines) and the augmentation each trains with
REAL_ARMS = {"real": "flips_jitter", "real_noaug": "none", "real_hed": "flips_hed"}


def _labels(df, classes, target="label", what="tiles"):
    """Class indices of `df`'s `target` column (classify.target: the label or an attribute)."""
    if target not in df.columns:
        raise UserError(f"classify.target {target!r} is not a column of the {what} (have: {sorted(df.columns)}); "
                        f"name the sample-sheet column the classifier should predict (for a GAN run's synthetic "
                        f"tiles: one of its condition columns)")
    values = df[target].astype(str)
    unknown = sorted(set(values) - set(classes))
    if unknown:
        raise UserError(f"{target} values {unknown} of the {what} are not among the training classes {classes}")
    return np.array([classes.index(v) for v in values])


def real_sets(tiles: pd.DataFrame, train_partitions):
    tiles = tiles[tiles["kept"]] if "kept" in tiles.columns else tiles
    train = tiles[tiles["partition"].isin(train_partitions)].reset_index(drop=True)
    test = tiles[tiles["partition"] == "test"].reset_index(drop=True)
    if train.empty or test.empty:
        raise UserError(f"the study needs real training and test tiles (have {len(train)} train, {len(test)} test)")
    check_disjoint(train, test)
    return train, test


def arm_names(opts):
    names = []
    for frac in opts["real_fractions"]:
        suffix = "" if frac == 1 else f"@{int(round(frac * 100))}%"
        for arm in opts["arms"]:
            if arm == "mixed":
                names += [(f"mixed_x{r:g}{suffix}", "mixed", r, frac) for r in opts["synthetic_ratio"]]
            else:
                names.append((f"{arm}{suffix}", arm, 1.0, frac))
    return names


def comparisons(opts) -> list[tuple[str, str]]:
    """The paired comparisons of the study, per real fraction: every arm against ``real``, and
    the synthetic and mixed arms against each other augmentation-only arm (real_noaug,
    real_hed), so the best baseline's comparison is there whichever it turns out to be."""
    names = arm_names(opts)
    out = []
    for frac in opts["real_fractions"]:
        same = [(n, kind) for n, kind, _, f in names if f == frac]
        bases = [n for n, kind in same if kind in REAL_ARMS]
        base = next((n for n, kind in same if kind == "real"), None)
        for n, kind in same:
            if base is not None and n != base:
                out.append((n, base))
            if kind not in REAL_ARMS:
                out += [(n, b) for b in bases if b != base]
    return out


def best_baselines(metrics: dict, opts) -> dict:
    """Per real fraction, the augmentation-only arm of highest AUC and, for each synthetic and
    mixed arm, the name of its paired comparison with it."""
    out = {}
    names = arm_names(opts)
    for frac in opts["real_fractions"]:
        bases = [n for n, kind, _, f in names if f == frac and kind in REAL_ARMS and n in metrics]
        if not bases:
            continue
        best = max(bases, key=lambda n: np.nan_to_num(metrics[n]["auc"], nan=-1))  # ties: the first listed
        out[f"{frac:g}"] = {"best_baseline": best, "auc": metrics[best]["auc"],
                            "comparisons": [f"{n} - {best}" for n, kind, _, f in names
                                            if f == frac and kind not in REAL_ARMS]}
    return out


def arm_differences(pred: pd.DataFrame, opts) -> dict:
    """{"A - B": paired_difference} for the study's comparisons (histosynth.classify.stats)."""
    from histosynth.classify.stats import paired_difference

    return {f"{a} - {b}": paired_difference(pred[pred["arm"] == a], pred[pred["arm"] == b], n_boot=opts["bootstrap"])
            for a, b in comparisons(opts)}


def run_study(tiles: pd.DataFrame, synthetic: pd.DataFrame, gan_training_patients, opts: dict, device="cpu",
              progress=True):
    """Returns (predictions DataFrame, {arm: metrics}). `gan_training_patients`: the patients whose
    tiles trained the GAN (none may be a test patient), or None when unknown (an imported network)."""
    from tqdm import tqdm

    train, test = real_sets(tiles, opts["train_partitions"])
    if gan_training_patients is None:
        log.warning("the GAN's training patients are unknown (an imported network): whether it saw this study's %d "
                    "test patients cannot be checked", test["patient_id"].nunique())
    leaked = sorted(set(test["patient_id"]) & set(gan_training_patients or ()))
    if leaked:
        raise UserError(f"test patient(s) {leaked[:5]} were in the GAN's training set; the study would be biased. "
                        f"Retrain the GAN on the current split.")
    target = opts["target"]
    classes = sorted(map(str, _column(train, target).unique()))
    x_train, y_train = load_tiles(train), _labels(train, classes, target, "real training tiles")
    x_test, y_test = load_tiles(test), _labels(test, classes, target, "real test tiles")
    synthetic = synthetic.reset_index(drop=True)
    x_syn, y_syn = load_tiles(synthetic), _labels(synthetic, classes, target, "synthetic tiles")
    preds, metrics = [], {}
    arms = arm_names(opts)
    ratios = [r if k == "mixed" else 1.0 for _, k, r, _ in arms if k not in REAL_ARMS]
    need = int(round(max(ratios, default=0) * len(train)))
    if need > len(synthetic):
        raise UserError(f"the study needs up to {need} synthetic tiles (ratio {max(ratios)} x {len(train)} real training "
                        f"tiles) but {len(synthetic)} were generated; raise generate.per_class to at least "
                        f"{-(-need // max(1, synthetic[target].nunique()))}")
    jobs = [(a, s) for a in arms for s in opts["seeds"]]
    for (name, kind, ratio, frac), seed in tqdm(jobs, desc="augmentation study", unit="model", disable=not progress):
        rng = np.random.default_rng(seed)
        pats = low_data_patients(train, classes, frac, rng, target)
        real_idx = np.flatnonzero(train["patient_id"].isin(pats).to_numpy())
        n_real = len(real_idx)
        n_syn = 0 if kind in REAL_ARMS else int(round((ratio if kind == "mixed" else 1.0) * n_real))
        if n_syn > len(synthetic):
            raise UserError(f"arm {name} needs {n_syn} synthetic tiles but only {len(synthetic)} were generated; "
                            f"raise generate.per_class")
        syn_idx = _balanced_pick(y_syn, n_syn, rng, len(classes))
        parts_x, parts_y = [], []
        if kind != "synthetic":
            parts_x.append(x_train[real_idx])
            parts_y.append(y_train[real_idx])
        if n_syn:
            parts_x.append(x_syn[syn_idx])
            parts_y.append(y_syn[syn_idx])
        model = clf.train(np.concatenate(parts_x), np.concatenate(parts_y), len(classes), opts, seed, device,
                          augment=REAL_ARMS.get(kind, "flips_jitter"))
        prob = clf.predict(model, x_test, device)
        p = pd.DataFrame(prob, columns=[f"p{i}" for i in range(len(classes))])
        p["y"] = y_test
        p["patient_id"] = test["patient_id"].to_numpy()
        p["slide_id"] = test["slide_id"].to_numpy()
        p["arm"], p["seed"] = name, seed
        p["n_train_real"] = 0 if kind == "synthetic" else n_real
        p["n_train_synthetic"] = n_syn
        preds.append(p)
    pred = pd.concat(preds, ignore_index=True)
    for name, *_ in arms:
        sub = pred[pred["arm"] == name]
        m = arm_metrics(sub, n_boot=opts["bootstrap"])
        m["n_train_real"] = int(sub["n_train_real"].iloc[0])
        m["n_train_synthetic"] = int(sub["n_train_synthetic"].iloc[0])
        metrics[name] = m
    return pred, metrics, classes


def low_data_patients(train: pd.DataFrame, classes, frac: float, rng, target="label") -> np.ndarray:
    """The training patients of an arm: all of them, or (frac < 1) the share `frac` of each
    class's patients, at least one, drawn with `rng` (a patient with slides of two classes may be
    drawn for either)."""
    if frac >= 1:
        return np.array(sorted(train["patient_id"].unique()))
    keep = []
    for c in classes:
        pc = np.array(sorted(train.loc[train[target].astype(str) == c, "patient_id"].unique()))
        keep += list(rng.choice(pc, max(1, int(round(frac * len(pc)))), replace=False))
    return np.array(keep)


def _balanced_pick(y, n, rng, n_classes):
    if n == 0:
        return np.zeros(0, int)
    per = [np.flatnonzero(y == c) for c in range(n_classes)]
    out = []
    for c, ids in enumerate(per):
        k = n // n_classes + (1 if c < n % n_classes else 0)
        out.append(rng.choice(ids, k, replace=k > len(ids)))
    return np.concatenate(out)


def train_reference(tiles: pd.DataFrame, opts: dict, device="cpu"):
    """The reference classifier: real training tiles only, seed 0. Behind the domain extractor
    and concordance. Returns (model, classes, validation metrics on the val patients if any)."""
    tiles = tiles[tiles["kept"]] if "kept" in tiles.columns else tiles
    train = tiles[tiles["partition"] == "train"].reset_index(drop=True)
    val = tiles[tiles["partition"] == "val"].reset_index(drop=True)
    target = opts["target"]
    classes = sorted(map(str, _column(train, target).unique()))
    model = clf.train(load_tiles(train), _labels(train, classes, target), len(classes), opts, 0, device)
    val_metrics = None
    if len(val) and val[target].nunique() > 1:
        from histosynth.classify.stats import tile_metrics

        val_metrics = tile_metrics(_labels(val, classes, target), clf.predict(model, load_tiles(val), device))
    return model, classes, val_metrics


def _column(df, target):
    if target not in df.columns:
        raise UserError(f"classify.target {target!r} is not a column of the real tiles (have: {sorted(df.columns)}); "
                        f"name a sample-sheet column")
    return df[target]


def save_reference(model, classes, opts, val_metrics, path):
    from histosynth import torchio

    torchio.save(path, {"state_dict": model.state_dict(), "arch": opts["arch"], "classes": classes,
                        "target": opts["target"], "val_metrics": val_metrics})


def load_reference(path, device="cpu"):
    from histosynth import torchio

    ck = torchio.load(path, "reference classifier", "re-run the train_reference rule")
    model = clf.build(ck["arch"], len(ck["classes"]))
    model.load_state_dict(ck["state_dict"])
    return model.to(device).eval(), ck["classes"], ck
