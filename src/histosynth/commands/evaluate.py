"""The evaluation stage's commands: real-tile features, FID/KID/precision-recall with the
real-vs-real floor and concordance, the segmentation network and layout fidelity of mask runs
(``histosynth features | evaluate | train-segnet | evaluate-layout``)."""
from __future__ import annotations

import logging
from pathlib import Path

from histosynth.utils import UserError, write_json

log = logging.getLogger("histosynth")

DOMAIN_EXTRACTOR = ("penultimate layer of the reference classifier trained from scratch on this cohort's real "
                    "training tiles")


def features(opts: dict, indexes, reference, out):
    """Features of every kept real tile of `indexes`, per extractor, into the cache folder `out`
    (read by evaluate, evaluate-profiles and evaluate-layout; see histosynth.evaluate.cache)."""
    import pandas as pd

    from histosynth.evaluate.features import extract
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import default_device

    real = pd.concat([read_index(p) for p in indexes], ignore_index=True)
    if "kept" in real.columns:
        real = real[real["kept"].astype(bool)]
    real = real.drop_duplicates(["store", "page"]).reset_index(drop=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    for ex in opts["extractors"]:
        (f,) = extract([real], ex, opts, reference, default_device(), out, write_cache=True)
        log.info("[%s] features of %d real tiles (%d dimensions) cached in %s", ex, len(real), f.shape[1], out)


def evaluate(opts: dict, tiles, synthetic, reference, out, real_partitions=("train",), features=None, attributes=()):
    from histosynth.classify.model import predict
    from histosynth.classify.study import load_reference
    from histosynth.evaluate.features import extract
    from histosynth.evaluate.run import check_field_of_view, class_concordance, evaluate_features
    from histosynth.slides.store import load_tiles, read_index
    from histosynth.torch_utils.distributed import default_device

    o, dev = opts, default_device()
    index = read_index(tiles)
    real = index[index["kept"] & index["partition"].isin(real_partitions)].reset_index(drop=True)
    fake = read_index(synthetic).reset_index(drop=True)
    check_field_of_view(real, fake)
    model, classes, ref = load_reference(reference, dev)
    target = ref.get("target", "label")  # references written before classify.target predict the label
    result = {"metrics": {}, "concordance": None}
    for ex in o["extractors"]:
        fr, ff = extract([real, fake], ex, o, reference, dev, features)
        m = result["metrics"][ex] = evaluate_features(real, fr, fake, ff, o, ex, attributes or ())
        log.info("[%s] FID %.3f (floor %.3f), KID %.5f, precision %.3f, recall %.3f, n=%d", ex, m["fid"],
                 m["fid_real_vs_real"], m["kid_mean"], m["precision"], m["recall"], m["n_real"])
    if target in fake.columns:
        prob = predict(model, load_tiles(fake), dev)
        result["concordance"] = class_concordance(prob, fake[target].astype(str), classes, o["concordance_threshold"])
        result["concordance"]["target"] = target
    else:  # e.g. a vector run: its tiles are not generated per value of the classifier's target
        result["concordance"] = {"skipped": f"the synthetic tiles have no {target!r} column (classify.target) to "
                                            f"compare the reference classifier's predictions with"}
        log.warning("concordance skipped: %s", result["concordance"]["skipped"])
    result["colour"] = colour_fidelity(real, fake, target, o["seed"])
    result["domain_extractor"] = DOMAIN_EXTRACTOR
    write_json(out, result)


def colour_fidelity(real, fake, by: str, seed: int = 0, per_patient: int = 200, per_class: int = 1000,
                    max_real: int = 5000) -> dict:
    """histosynth.evaluate.colour's check of the generated tiles' HED colour statistics against
    the real patients' range, per value of `by`, on at most `per_patient` tiles of each real
    patient (fewer, down to 20, where the patients would give more than `max_real` tiles) and
    `per_class` generated tiles of each value."""
    import numpy as np

    from histosynth.evaluate.colour import colour_check, sample_rows, tile_moments
    from histosynth.slides.store import load_tiles

    if by not in fake.columns or by not in real.columns:
        return {"skipped": f"the tiles have no {by!r} column to group them by"}
    per_patient = max(20, min(per_patient, max_real // max(1, real["patient_id"].nunique())))
    r = sample_rows(real, [by, "patient_id"], per_patient, seed).reset_index(drop=True)
    f = sample_rows(fake, [by], per_class, seed).reset_index(drop=True)
    def moments(index, chunk=512):  # tiles read a chunk at a time: 5,000 tiles of 256 px would be 1 GB at once
        return np.concatenate([tile_moments(load_tiles(index.iloc[i:i + chunk])) for i in range(0, len(index), chunk)])

    res = colour_check(r, moments(r), f, moments(f), by)
    log.info("colour (HED mean and spread per class within the real patients' range): %s",
             "all within" if res["passed"] else "outside: " + ", ".join(res["outside"]))
    return res


def train_segnet(masks: dict, index, out, progress=True):
    from histosynth.evaluate.segnet import SegNet
    from histosynth.masks.build import load_maps
    from histosynth.slides.store import load_tiles, read_index
    from histosynth.torch_utils.distributed import default_device

    s, idx = masks["segnet"], read_index(index)
    train = idx[idx["partition"] == "train"]
    train = train.sample(min(len(train), s["max_tiles"]), random_state=0)
    net = SegNet(len(masks["labels"]), int(idx["tile_px"].iloc[0]), device=default_device())
    net.fit(load_tiles(train), load_maps(train), steps=s["steps"], progress=progress)
    net.save(out)


def evaluate_layout(opts: dict, masks: dict, index, synthetic, heldout, segmenter, reference, out, run,
                    real_partitions=("train",), features=None):
    from histosynth.evaluate.features import extract
    from histosynth.evaluate.layout import layout_fidelity
    from histosynth.evaluate.run import check_field_of_view, evaluate_features
    from histosynth.evaluate.segnet import load_segmenter
    from histosynth.masks.build import load_maps
    from histosynth.slides.store import load_tiles, read_index
    from histosynth.torch_utils.distributed import default_device

    o, m, dev = opts, masks, default_device()
    idx = read_index(index)
    held, bulk = read_index(heldout), read_index(synthetic)
    real_held = idx.set_index(["slide_id", "page"]).loc[list(zip(held["source_slide"], held["source_page"]))].reset_index()
    seg = load_segmenter(segmenter, dev)
    result = {"run": run, "method": m["method"], "source": m["source"], "segmenter": Path(segmenter).name,
              "layout": layout_fidelity(load_maps(held), seg.segment(load_tiles(held)), seg.segment(load_tiles(real_held)),
                                        held["source_patient"].to_numpy(), [x["name"] for x in m["labels"]],
                                        seed=o["seed"]),
              "metrics": {}, "metrics_heldout": {}}
    lay = result["layout"]
    log.info("layout fidelity (%d held-out maps, %d patients): mIoU %.3f generated, %.3f real, %.3f chance",
             lay["n_maps"], lay["n_patients"], lay["generated"]["miou"], lay["real"]["miou"], lay["chance"]["miou"])
    real_train = idx[idx["partition"].isin(real_partitions)].reset_index(drop=True)
    real_test = idx[idx["partition"] == "test"].reset_index(drop=True)
    if len(real_test) == 0:
        raise UserError(f"{index}: no test tiles with label maps, so no held-out layout to compare with")
    check_field_of_view(real_train, bulk)
    for ex in o["extractors"]:
        fr, fb, ft, fh = extract([real_train, bulk, real_test, held], ex, o, reference, dev, features)
        a = result["metrics"][ex] = evaluate_features(real_train, fr, bulk, fb, o, ex)
        b = result["metrics_heldout"][ex] = evaluate_features(real_test, ft, held, fh, o, ex)
        log.info("[%s] FID training maps %.3f (floor %.3f); held-out maps %.3f (floor %.3f)", ex,
                 a["fid"], a["fid_real_vs_real"], b["fid"], b["fid_real_vs_real"])
    write_json(out, result)
