"""The evaluation stage's commands: real-tile features, FID/KID/precision-recall with the
real-vs-real floor and concordance, the segmentation network and layout fidelity of mask runs
and the copy audit (``histosynth features | evaluate | train-segnet | evaluate-layout |
audit-copies``)."""
from __future__ import annotations

import functools
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
    `per_class` generated tiles of each value; the real tiles pooled, each patient weighted by its
    share of the tiles, are the check's control."""
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

    # the pooled control's weights: each sampled row stands for its (value, patient) group's tiles in all
    key = lambda t: t[by].astype(str) + "\0" + t["patient_id"].astype(str)  # noqa: E731
    weights = key(r).map(key(real).value_counts() / key(r).value_counts()).to_numpy()
    res = colour_check(r, moments(r), f, moments(f), by, weights)
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


VIEWS = {"none": 1, "flips": 2, "dihedral": 8}


def _view_features(index, fn, n_views: int, desc: str, progress: bool, chunk: int = 256) -> list:
    """Features of `index`'s tiles in each of `n_views` views (histosynth.evaluate.copies.views),
    read `chunk` tiles at a time."""
    import numpy as np
    from tqdm import tqdm

    from histosynth.evaluate.copies import views
    from histosynth.slides.store import load_tiles

    out = [[] for _ in range(n_views)]
    for s in tqdm(range(0, len(index), chunk), desc=desc, disable=not progress, unit="chunk"):
        for v, t in enumerate(views(load_tiles(index.iloc[s:s + chunk]), n_views)):
            out[v].append(fn(t))
    return [np.concatenate(o) for o in out]


def _sample(df, n, seed):
    return df if n is None or len(df) <= n else df.sample(n, random_state=seed)


def audit_copies(opts: dict, tiles, synthetic, reference, out, run, pairs=None, flags=None,
                 train_partitions=("train",), heldout_partitions=("test",), features=None, progress=True):
    """The copy audit (histosynth.evaluate.copies) of the tiles of `synthetic` (generated, or any
    tiles in the store format) against the real tiles of `train_partitions` in `tiles` (the
    tiles the generator trained on) with the null from the tiles of `heldout_partitions`
    (patients it never saw), in every configured extractor: copies.json (`out`), the closest
    pairs as an image (`pairs`) and every audited tile's nearest training tile and flags (`flags`,
    parquet)."""
    import pandas as pd

    from histosynth.evaluate.cache import cached_features
    from histosynth.evaluate.copies import audit_features, pixel_features, verdict
    from histosynth.evaluate.features import extractor_function
    from histosynth.evaluate.run import check_field_of_view
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import default_device

    a, dev = opts["audit"], default_device()
    if set(train_partitions) & set(heldout_partitions):
        raise UserError(f"audit-copies: partitions {sorted(set(train_partitions) & set(heldout_partitions))} are both "
                        f"training and held-out; the held-out patients must be ones the generator never saw")
    index = read_index(tiles)
    if "kept" in index.columns:
        index = index[index["kept"].astype(bool)]
    fake = read_index(synthetic).reset_index(drop=True)
    audited = set(zip(fake["store"].astype(str), fake["page"].astype(int)))
    train = index[index["partition"].isin(train_partitions)]
    held = index[index["partition"].isin(heldout_partitions)]
    # tiles presented for audit never serve as their own null
    held = held[[k not in audited for k in zip(held["store"].astype(str), held["page"].astype(int))]]
    if len(train) == 0:
        raise UserError(f"{tiles}: no tiles in the training partitions {list(train_partitions)}")
    if len(held) < a["min_null"]:
        raise UserError(f"{tiles}: {len(held)} tiles of held-out patients (partitions {list(heldout_partitions)}), "
                        f"fewer than evaluate.audit.min_null ({a['min_null']}): the copy audit compares generated "
                        f"tiles with new patients' tiles and needs enough of them. Give the split test patients "
                        f"(split.test_fraction) or lower evaluate.audit.min_null.")
    n_pat = held["patient_id"].nunique() if "patient_id" in held.columns else None
    if n_pat is not None and n_pat < a["min_null_patients"]:
        raise UserError(f"{tiles}: the held-out partitions {list(heldout_partitions)} hold {n_pat} patient(s), fewer "
                        f"than evaluate.audit.min_null_patients ({a['min_null_patients']}): one patient's tiles "
                        f"measure that patient, not how close new patients come to the training set. Give the split "
                        f"more test patients (split.test_fraction).")
    check_field_of_view(train, fake)
    fake = _sample(fake, a["max_generated"], a["seed"]).reset_index(drop=True)
    held = _sample(held, a["max_heldout"], a["seed"]).reset_index(drop=True)
    train = _sample(train, a["max_training"], a["seed"]).reset_index(drop=True)
    labels = "label" in fake.columns and "label" in held.columns
    n_views = VIEWS[a["transforms"]]
    results, rows = {}, []
    spaces = (["pixels"] if a["pixels"] else []) + list(opts["extractors"])
    for ex in spaces:
        if ex == "pixels":
            fn = functools.partial(pixel_features, side=a["pixels"])
            tf = _view_features(train, fn, 1, "[pixels] training tiles", progress)[0]
        else:
            ex_id, fn = extractor_function(ex, opts, reference, dev)
            tf = cached_features(train, ex_id, fn, features, write=False)
        gv = _view_features(fake, fn, n_views, f"[{ex}] audited tiles x{n_views} views", progress)
        hv = _view_features(held, fn, n_views, f"[{ex}] held-out tiles x{n_views} views", progress)
        res, per = audit_features(tf, gv, hv, fake["label"] if labels else None, held["label"] if labels else None, a,
                                  held["patient_id"] if "patient_id" in held.columns else None,
                                  train["label"] if labels and "label" in train.columns else None)
        res.update(extractor=ex, n_training=int(len(train)))
        results[ex] = res
        nn = res["nearest_neighbour"]
        log.info("[%s] %.1f%% of %d audited tiles below the held-out null's 1st percentile (expected 1%%, p = %.2g); "
                 "C_T %s; authenticity %.3f (held-out %.3f)", ex, 100 * nn["p1"]["share"], nn["n_generated"],
                 nn["p1"]["p_value"], "n/a" if res["data_copying"]["c_t"] is None else f"{res['data_copying']['c_t']:.2f}",
                 res["authenticity"]["generated"], res["authenticity"]["heldout"])
        near = train.iloc[per["nearest"]].reset_index(drop=True)
        rows.append(pd.DataFrame({
            "extractor": ex, "store": fake["store"].astype(str), "page": fake["page"].astype(int),
            **({"label": fake["label"].astype(str)} if "label" in fake.columns else {}),
            "distance": per["distance"], "view": per["view"], "below_p1": per["below_p1"],
            "below_p5": per["below_p5"], "authentic": per["authentic"],
            "nearest_store": near["store"].astype(str), "nearest_page": near["page"].astype(int),
            "nearest_slide": near["slide_id"].astype(str) if "slide_id" in near.columns else "",
            "nearest_patient": near["patient_id"].astype(str) if "patient_id" in near.columns else ""}))
    v = verdict(results, a["alpha"], a["min_excess"], a["ct_threshold"])
    log.info("copy audit: %s", v["text"])
    primary = next(iter(results))  # the pixel space where audited: copies show there best
    result = {"run": run, "verdict": v, "primary_extractor": primary, "extractors": results,
              "transforms": a["transforms"], "views": n_views, "train_partitions": list(train_partitions),
              "heldout_partitions": list(heldout_partitions),
              "n": {"audited": int(len(fake)), "training": int(len(train)), "heldout": int(len(held)),
                    "training_patients": int(train["patient_id"].nunique()) if "patient_id" in train.columns else None,
                    "heldout_patients": int(held["patient_id"].nunique()) if "patient_id" in held.columns else None}}
    flagged = pd.concat(rows, ignore_index=True)
    if flags:
        from histosynth.slides.store import write_index

        write_index(flagged, flags)
    if pairs:
        closest_pairs_png(flagged[flagged["extractor"] == primary], pairs, a["pairs"])
        result["pairs_png"] = str(pairs)
    result["n_flagged"] = {ex: int(g["below_p1"].sum()) for ex, g in flagged.groupby("extractor")}
    write_json(out, result)
    return result


def closest_pairs_png(per_tile, out, k: int = 16, per_row: int = 4, min_px: int = 96):
    """The `k` audited tiles closest to a training tile, each beside that training tile (the
    audited tile shown in the view that matched), with the distance and the training tile's
    patient, as one PNG."""
    import numpy as np
    from PIL import Image, ImageDraw

    from histosynth.evaluate.copies import views
    from histosynth.images import save_png
    from histosynth.slides.store import load_tiles

    top = per_tile.nsmallest(k, "distance").reset_index(drop=True)
    if top.empty:
        return
    gen = load_tiles(top[["store", "page"]])
    real = load_tiles(top.rename(columns={"store": "_s", "page": "_p", "nearest_store": "store",
                                          "nearest_page": "page"})[["store", "page"]])
    gen = np.stack([views(g[None], 8)[int(v)][0] for g, v in zip(gen, top["view"])])
    px = gen.shape[1]
    scale = max(1, -(-min_px // px))
    side, text_h, pad = px * scale, 26, 8
    cols = min(per_row, len(top))
    rows = -(-len(top) // cols)
    canvas = Image.new("RGB", (cols * (2 * side + 2 + pad), rows * (side + text_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for i, r in top.iterrows():
        x0, y0 = (i % cols) * (2 * side + 2 + pad), (i // cols) * (side + text_h + pad)
        for j, t in enumerate((gen[i], real[i])):
            canvas.paste(Image.fromarray(t).resize((side, side), Image.Resampling.NEAREST), (x0 + j * (side + 2), y0))
        draw.text((x0, y0 + side + 1), f"d={r['distance']:.3g}{' FLAG' if r['below_p1'] else ''}", fill="black")
        draw.text((x0, y0 + side + 13), f"patient {r['nearest_patient']}"[:40], fill="black")
    save_png(np.asarray(canvas), out)
