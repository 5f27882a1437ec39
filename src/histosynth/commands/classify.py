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
