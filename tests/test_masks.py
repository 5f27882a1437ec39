"""Layout-conditioned synthesis: label maps (GeoJSON at µm, PanNuke, colour segmenter),
SPADE / pix2pix learning a toy layout, exact resume and DDP, layout metrics."""
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from toydata import toy_mask_index

from histosynth.config import validate
from histosynth.evaluate.layout import confusion, iou, layout_fidelity, miou
from histosynth.masks.build import load_maps, slide_label_maps
from histosynth.masks.colour import ColourSegmenter
from histosynth.masks.geojson import rasterise, read_annotations, tile_maps
from histosynth.masks.labels import AUTO_LABELS, LabelSet
from histosynth.slides.store import TileStoreWriter, read_index
from histosynth.utils import UserError

LABELS = LabelSet.from_config([{"name": "background", "color": "#ffffff"}, {"name": "gland", "color": "#d62728"},
                               {"name": "nucleus", "color": "#1f3a93"}])


def _square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(cls, rings, kind="Polygon"):
    return {"type": "Feature", "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [1, 2, 3]}},
            "geometry": {"type": kind, "coordinates": rings}}


def test_geojson_rasterised_at_the_tiles_microns(tmp_path):
    """A tile of 16 px covering 32 µm on a 0.5 µm/px slide spans 64 level-0 px: 4 level-0 px
    per map pixel. A pixel takes a class when its centre lies in the polygon (not in a hole)."""
    gj = {"type": "FeatureCollection", "features": [
        _feature("Tumor", [_square(1008, 2008, 1040, 2040), _square(1016, 2016, 1024, 2024)]),  # gland with a hole
        _feature("Nucleus", [_square(1032, 2032, 1044, 2044)]),  # small: drawn over the gland
        _feature("Stroma", [_square(0, 0, 10, 10)]),  # not in the label set: skipped
        _feature("Nucleus", [[_square(1100, 2000, 1104, 2004)], [_square(1300, 2000, 1304, 2004)]], "MultiPolygon"),
        {"type": "Feature", "properties": {}, "geometry": {"type": "Point", "coordinates": [1, 1]}},
    ]}
    path = tmp_path / "S1.geojson"
    path.write_text(json.dumps(gj))
    shapes = read_annotations(path, LABELS, {"Tumor": "gland", "Nucleus": "nucleus"})
    assert [s.label for s in shapes] == [1, 2, 2, 2]  # largest first
    index = pd.DataFrame({"x": [1000, 1064], "y": [2000, 2000], "tile_px": 16, "tile_um": 32.0, "mpp0": 0.5})
    maps = tile_maps(index, shapes)
    want = np.zeros((16, 16), np.uint8)
    want[2:10, 2:10] = 1   # gland: level-0 1008..1040 -> centres (c + .5) * 4 in [8, 40] -> c = 2..9
    want[4:6, 4:6] = 0     # hole: 1016..1024 -> c = 4, 5
    want[8:11, 8:11] = 2   # nucleus: 1032..1044 -> c = 8..10
    np.testing.assert_array_equal(maps[0], want)
    second = np.zeros((16, 16), np.uint8)
    second[0, 9] = 2       # MultiPolygon part at level-0 1100..1104 -> x - 1064 = 36..40 -> c = 9
    np.testing.assert_array_equal(maps[1], second)
    # at 2x the resolution (tile_px 32 for the same 32 µm) the same region is twice as many pixels
    fine = rasterise(shapes, 1000, 2000, 2.0, 32)
    assert (fine == 1).sum() == 4 * (maps[0] == 1).sum() and (fine == 2).sum() == 4 * (maps[0] == 2).sum()


def test_geojson_errors_and_slide_label_maps(tmp_path):
    (tmp_path / "bad.geojson").write_text("<html>")
    with pytest.raises(UserError, match="not GeoJSON"):
        read_annotations(tmp_path / "bad.geojson", LABELS)
    with pytest.raises(UserError, match="does not exist"):
        read_annotations(tmp_path / "missing.geojson", LABELS)
    # a slide's label-map store: tiles outside every annotation take no part
    tiles = np.zeros((3, 16, 16, 3), np.uint8)
    with TileStoreWriter(tmp_path / "S1.tiff") as w:
        for t in tiles:
            w.append(t)
    index = pd.DataFrame({"slide_id": "S1", "patient_id": "P1", "label": "a", "page": [0, 1, 2], "x": [1000, 1064, 5000],
                          "y": 2000, "tile_px": 16, "tile_um": 32.0, "mpp": 2.0, "mpp0": 0.5, "kept": True,
                          "store": str(tmp_path / "S1.tiff"), "partition": "train"})
    (tmp_path / "S1.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        _feature("gland", [_square(1008, 2008, 1100, 2040)])]}))
    rows = slide_label_maps(index, "S1", "geojson", LABELS, tmp_path / "S1.labels.tiff", tmp_path / "S1.parquet",
                            annotations=tmp_path / "S1.geojson", progress=False)
    assert rows["page"].tolist() == [0, 1] and rows["mask_page"].tolist() == [0, 1]
    maps = load_maps(read_index(tmp_path / "S1.parquet"))
    assert maps.shape == (2, 16, 16) and (maps[1] == 1).sum() == 8 * 9  # x 1064..1100 -> c 0..8; y -> r 2..9
    assert rows["frac_gland"].iloc[1] == pytest.approx(72 / 256)
    none = slide_label_maps(index, "S1", "geojson", LABELS, tmp_path / "S2.labels.tiff", tmp_path / "S2.parquet",
                            annotations=tmp_path / "nothing.geojson", progress=False)
    assert len(none) == 0 and (tmp_path / "S2.labels.tiff").exists()


def test_label_set_colours_round_trip():
    ls = LabelSet.from_config(AUTO_LABELS)
    m = np.random.default_rng(0).integers(0, 3, (20, 20)).astype(np.uint8)
    rgb = ls.colorize(m)
    np.testing.assert_array_equal(ls.from_rgb(rgb), m)
    np.testing.assert_array_equal(ls.from_rgb(np.clip(rgb.astype(int) + 9, 0, 255)), m)  # near colours snap back
    with pytest.raises(UserError, match="own colour"):
        LabelSet.from_config([{"name": "a", "color": "#000000"}, {"name": "b", "color": "#000000"}])


def test_colour_segmenter_recovers_layouts(tmp_path):
    idx, tiles, maps = toy_mask_index(tmp_path, 64, 32)
    seg = ColourSegmenter().fit(tiles[:32])
    pred = seg.segment(tiles[32:])
    assert miou(confusion(pred, maps[32:], 3)) > 0.9
    seg.save(tmp_path / "seg.json")
    np.testing.assert_array_equal(ColourSegmenter.load(tmp_path / "seg.json").segment(tiles[:4]), seg.segment(tiles[:4]))


def test_pannuke_import(tmp_path):
    from histosynth.masks.pannuke import import_pannuke

    rng = np.random.default_rng(0)
    folds = {}
    for f, part in (("fold1", "train"), ("fold3", "test")):
        d = tmp_path / f / "images"
        d.mkdir(parents=True)
        images = rng.uniform(0, 255, (3, 32, 32, 3))
        masks = np.zeros((3, 32, 32, 6))
        masks[0, 2:6, 2:6, 0] = 7      # a neoplastic nucleus (instance id 7)
        masks[1, 10:12, 10:14, 1] = 3  # inflammatory
        masks[2, 0:4, 0:4, 4] = 1      # epithelial
        masks[..., 5] = (masks[..., :5].sum(-1) == 0)
        np.save(d / "images.npy", images)
        np.save(d / "masks.npy", masks)
        np.save(d / "types.npy", np.array(["Breast", "Colon", "Breast"]))
        folds[f] = {"path": str(tmp_path / f), "partition": part}
    idx = import_pannuke(folds, tmp_path / "out", progress=False)
    assert len(idx) == 6 and set(idx["partition"]) == {"train", "test"} and idx["label"].tolist()[:2] == ["Breast", "Colon"]
    maps = load_maps(idx)
    assert (maps[0] == 1).sum() == 16 and (maps[1] == 2).sum() == 8 and (maps[2] == 5).sum() == 16
    assert maps[0][0, 0] == 0
    from histosynth.slides.store import load_tiles

    np.testing.assert_array_equal(load_tiles(idx.iloc[:1])[0], np.rint(np.load(tmp_path / "fold1/images/images.npy")[0]))
    with pytest.raises(UserError, match="no images.npy"):
        import_pannuke({"x": {"path": str(tmp_path / "out"), "partition": "train"}}, tmp_path / "o2", progress=False)


def test_layout_metrics_reference_values():
    target = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    pred = np.array([[0, 1, 1, 1], [0, 0, 1, 2]])
    cm = confusion(pred, target, 3)
    np.testing.assert_array_equal(cm, [[3, 1, 0], [0, 3, 1], [0, 0, 0]])
    np.testing.assert_allclose(iou(cm), [3 / 4, 3 / 5, 0.0])  # class 2 predicted once, never true: IoU 0
    assert miou(cm) == pytest.approx((0.75 + 0.6 + 0) / 3)
    assert np.isnan(iou(confusion(np.zeros((2, 2)), np.zeros((2, 2)), 2))[1])  # absent class: excluded
    maps = np.stack([target] * 4)
    r = layout_fidelity(maps, maps, maps, ["a", "a", "b", "b"], ["x", "y", "z"], n_boot=50)
    assert r["generated"]["miou"] == 1.0 and r["generated"]["miou_ci95"] == [1.0, 1.0]


def mask_opts(method="spade", **kw):
    cfg = validate({"gan": dict({"resolution": 32, "kimg": 2.4, "batch": 16, "z_dim": 16, "snap_kimg": 10, "tick_kimg": 0.4,
                                 "ema_kimg": 0.1, "gpus": 0, "device": "cpu"}, **kw),
                    "masks": {"method": method, "channel_base": 512, "channel_max": 32, "spade_hidden": 16, "ndf": 16,
                              "d_scales": 1, "ngf": 16, "labels": AUTO_LABELS}})
    return cfg["gan"], cfg["masks"]


@pytest.mark.parametrize("method,kimg,floor", [("spade", 2.4, 0.75), ("pix2pix", 2.4, 0.55)])
def test_mask_model_reproduces_the_layout(tmp_path, method, kimg, floor):
    """Trained on toy tiles painted from random layouts, the generator's tiles for held-out
    maps are segmented back into those maps (mIoU well above a layout-ignoring generator)."""
    from histosynth.gan.checkpoint import load_generator
    from histosynth.gan.training.loop import train_mask
    from histosynth.generate.from_maps import render

    idx, tiles, maps = toy_mask_index(tmp_path, 256, 32)
    o, m = mask_opts(method, kimg=kimg)
    net = train_mask(idx, tmp_path / method, o, m, progress=False)
    net = load_generator(net)
    G, labels = net.G, net.labels
    test = idx.index[idx["partition"] == "test"]
    fake = render(G, maps[test], np.arange(len(test)), 3)
    seg = ColourSegmenter().fit(tiles[idx["partition"] == "train"])
    r = layout_fidelity(maps[test], seg.segment(fake), seg.segment(tiles[test]), idx.loc[test, "patient_id"], labels.names)
    print(method, r["generated"]["miou"], r["chance"]["miou"])
    assert r["generated"]["miou"] > floor and r["generated"]["miou"] > r["chance"]["miou"] + 0.3
    assert r["real"]["miou"] > 0.9
    opts = json.loads((tmp_path / method / "training_options.json").read_text())
    assert opts["conditioning"] == "mask" and opts["mask"]["method"] == method and opts["n_classes"] == 3
    assert list((tmp_path / method / "samples").glob("fakes*.png"))


def test_mask_resume_equals_uninterrupted(tmp_path):
    from histosynth.gan.checkpoint import load
    from histosynth.gan.training.loop import train_mask

    idx, _, _ = toy_mask_index(tmp_path, 64, 16)
    o, m = mask_opts("spade", resolution=16, kimg=0.2, snap_kimg=0.1, tick_kimg=0.1, batch=8)
    m["style_encoder"] = True
    a = train_mask(idx, tmp_path / "a", o, m, progress=False)
    train_mask(idx, tmp_path / "b", dict(o, kimg=0.1), m, progress=False)  # "killed" after its first snapshot
    b = train_mask(idx, tmp_path / "b", o, m, progress=False)
    ca, cb = load(a), load(b)
    assert ca["cur_nimg"] == cb["cur_nimg"] == 200
    for key in ("G", "D", "G_ema"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    assert any(k.startswith("encoder.") for k in ca["G"])


def test_mask_ddp_two_processes_keep_identical_weights(tmp_path):
    idx, _, _ = toy_mask_index(tmp_path, 32, 16)
    idx.to_parquet(tmp_path / "index.parquet")
    o, m = mask_opts("pix2pix", resolution=16, kimg=0.08, snap_kimg=0.04, tick_kimg=0.04, batch=8)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    from histosynth.runs import RunSpec

    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "histosynth.cli", "-q", "train-gan",
                        "--run-spec", RunSpec.of_masks(o, m).to_json(),
                        "--tiles", str(tmp_path / "index.parquet"), "--outdir", str(tmp_path / "ddp")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    snaps = [json.loads(x) for x in open(tmp_path / "ddp" / "snapshots.jsonl")]
    assert len(snaps) == 2
    for s in snaps:
        assert len(s["rank_checksums"]) == 2 and s["rank_checksums"][0] == s["rank_checksums"][1]


def test_segmentation_network_for_annotation_label_sets(tmp_path):
    """Label sets the colour rule cannot produce are judged by a U-Net trained on real
    training pairs; on held-out toy tiles it recovers the maps."""
    from histosynth.evaluate.segnet import SegNet, load_segmenter

    torch.manual_seed(0)
    idx, tiles, maps = toy_mask_index(tmp_path, 96, 32)
    net = SegNet(3, 32, ngf=16).fit(tiles[:64], maps[:64], steps=150, batch=16, lr=3e-3, progress=False)
    assert miou(confusion(net.segment(tiles[64:]), maps[64:], 3)) > 0.8
    net.save(tmp_path / "segnet.pt")
    np.testing.assert_array_equal(load_segmenter(tmp_path / "segnet.pt").segment(tiles[:4]), net.segment(tiles[:4]))


def test_label_maps_command_with_geojson(tmp_path):
    """`histosynth label-maps` on a slide's tiles and its QuPath export, as the workflow calls it."""
    from histosynth.cli import main

    with TileStoreWriter(tmp_path / "S1.tiff") as w:
        w.append(np.zeros((16, 16, 3), np.uint8))
    pd.DataFrame({"slide_id": "S1", "patient_id": "P1", "label": "a", "page": [0], "x": [1000], "y": [2000],
                  "tile_px": 16, "tile_um": 32.0, "mpp": 2.0, "mpp0": 0.5, "kept": True, "store": str(tmp_path / "S1.tiff"),
                  "partition": "train"}).to_parquet(tmp_path / "tiles.parquet")
    (tmp_path / "S1.geojson").write_text(json.dumps([_feature("Tumor", [_square(1000, 2000, 1032, 2064)])]))
    masks = {"source": "geojson", "labels": LABELS.to_config(), "geojson_classes": {"Tumor": "gland"}}
    args = ["-q", "label-maps", "--options", json.dumps(masks), "--tiles", str(tmp_path / "tiles.parquet"),
            "--slide-id", "S1", "--annotations", str(tmp_path / "S1.geojson"), "--store", str(tmp_path / "m.tiff"),
            "--index", str(tmp_path / "m.parquet")]
    assert main(args) == 0
    m = load_maps(read_index(tmp_path / "m.parquet"))[0]
    assert (m[:, :8] == 1).all() and (m[:, 8:] == 0).all()  # 32 level-0 px = 8 map px wide, 64 = full height
    bad = dict(masks, labels=None)
    assert main(args[:3] + [json.dumps(bad)] + args[4:]) == 2  # geojson without a label set: a clear error
