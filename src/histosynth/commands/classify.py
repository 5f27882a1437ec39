"""The classifier stages' commands: the reference classifier and the augmentation study
(``histosynth train-reference | classify``)."""
from __future__ import annotations

import logging
from pathlib import Path

from histosynth.utils import write_json

log = logging.getLogger("histosynth")


def train_reference(opts: dict, tiles, out):
    from histosynth.classify.study import save_reference
    from histosynth.classify.study import train_reference as fit_reference
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import default_device

    model, classes, val = fit_reference(read_index(tiles), opts, default_device())
    save_reference(model, classes, opts, val, out)
    log.info("reference classifier (%s, classes %s); validation patients: %s", opts["arch"], classes, val)


def classify(opts: dict, tiles, synthetic, network, outdir, progress=True):
    from histosynth.classify.study import arm_differences, best_baselines, run_study
    from histosynth.evaluate.run import check_field_of_view
    from histosynth.gan.checkpoint import read_metadata
    from histosynth.report.plots import study_plot
    from histosynth.slides.store import read_index, write_index
    from histosynth.torch_utils.distributed import default_device

    index, fake = read_index(tiles), read_index(synthetic)
    check_field_of_view(index, fake)
    meta = read_metadata(network)
    seen = meta["training_set"]["patients"]  # the GAN's patients, never tested on (None: imported, unknown)
    pred, metrics, classes = run_study(index, fake, seen, opts, default_device(), progress=progress)
    outdir = Path(outdir)
    write_index(pred, outdir / "predictions.parquet")
    study_plot(metrics, outdir / "study.png")
    differences = arm_differences(pred, opts)
    write_json(outdir / "study.json", {"classes": classes, "metrics": metrics, "differences": differences,
                                       "baselines": best_baselines(metrics, opts),
                                       "options": opts,
                                       "gan_training_patients_known": seen is not None,
                                       "imported_network": meta.get("imported")})
    for k, m in metrics.items():
        log.info("%-16s AUC %.3f [%.3f, %.3f]  bal.acc %.3f", k, m["auc"], *m["auc_ci95"], m["balanced_accuracy"])
    for k, d in differences.items():
        log.info("%-24s AUC difference %+.3f, 95%% CI %s, p %s (paired over test patients and seeds)", k, d["auc"],
                 d["auc_ci95"], d["auc_p"])


def classify_folds(opts: dict, predictions, studies, outdir):
    """``histosynth classify-folds``: the cross-validated study (classify.folds) from each fold's
    predictions and study.json, in fold order: metrics averaged over folds with their spread,
    paired differences over all patients, the best augmentation-only arm."""
    import json

    import pandas as pd

    from histosynth.classify.stats import arm_metrics
    from histosynth.classify.study import arm_differences, best_baselines
    from histosynth.report.plots import study_plot
    from histosynth.slides.store import read_index, write_index
    from histosynth.utils import UserError

    if len(predictions) != len(studies) or len(predictions) < 2:
        raise UserError(f"classify-folds needs one predictions file and one study.json per fold, at least two folds "
                        f"(have {len(predictions)} and {len(studies)})")
    docs = [json.loads(open(s).read()) for s in studies]
    classes = docs[0]["classes"]
    for path, d in zip(studies, docs):
        if d["classes"] != classes:
            raise UserError(f"{path}: classes {d['classes']} differ from fold 0's {classes}; every fold must train on "
                            f"every class (re-run the folds rule)")
    preds = []
    for i, p in enumerate(predictions):
        df = read_index(p)
        preds.append(df.assign(fold=i))
    pred = pd.concat(preds, ignore_index=True)
    shared = pred.groupby("patient_id")["fold"].nunique()
    if (shared > 1).any():
        raise UserError(f"patient(s) {list(shared.index[shared > 1][:5])} were tested in several folds; the folds must "
                        f"partition the patients (re-run the folds rule)")
    metrics = {}
    for arm in pred["arm"].unique():
        sub = pred[pred["arm"] == arm]
        m = arm_metrics(sub, n_boot=opts["bootstrap"])
        per_fold = sub.groupby("fold")[["n_train_real", "n_train_synthetic"]].first()
        for f, row in zip(m["folds"], per_fold.itertuples()):
            f["n_train_real"], f["n_train_synthetic"] = int(row.n_train_real), int(row.n_train_synthetic)
        m["n_train_real"] = int(round(per_fold["n_train_real"].mean()))
        m["n_train_synthetic"] = int(round(per_fold["n_train_synthetic"].mean()))
        metrics[arm] = m
    outdir = Path(outdir)
    write_index(pred, outdir / "predictions.parquet")
    study_plot(metrics, outdir / "study.png")
    differences = arm_differences(pred, opts)
    write_json(outdir / "study.json", {"classes": classes, "metrics": metrics, "differences": differences,
                                       "baselines": best_baselines(metrics, opts), "options": opts,
                                       "cross_validation": {"folds": len(predictions),
                                                            "test_patients": int(pred["patient_id"].nunique())},
                                       "gan_training_patients_known": all(d["gan_training_patients_known"] for d in docs),
                                       "imported_network": docs[0].get("imported_network")})
    for k, m in metrics.items():
        log.info("%-16s AUC %.3f [%.3f, %.3f] (SD over %d folds %.3f)  bal.acc %.3f", k, m["auc"], *m["auc_ci95"],
                 m["n_folds"], m["auc_fold_std"], m["balanced_accuracy"])
