"""Annotated regions (QuPath GeoJSON) restricting tiling and labelling tiles: tiles.roi."""
import json
import uuid

import numpy as np
import pytest
from conftest import opts_tiles

from histosynth.slides.regions import first_crossing, read_regions
from histosynth.slides.roi import fill
from histosynth.slides.tiling import tile_slide
from histosynth.utils import UserError

STRIDE = 128  # tile_um 64 at 0.5 µm/px: a 16 x 16 grid on the 2048 px block slide


def _packed(colour):  # QuPath 0.2/0.3's colorRGB: a signed ARGB integer
    v = (0xFF << 24) | (colour[0] << 16) | (colour[1] << 8) | colour[2]
    return v - (1 << 32)


def qupath_feature(polys, name, colour=(200, 0, 0), version="0.5", multi=False):
    """A feature as QuPath writes it: 0.4/0.5 (uuid id, objectType, color list) or 0.3
    (id PathAnnotationObject, colorRGB)."""
    geom = {"type": "MultiPolygon", "coordinates": polys} if multi else {"type": "Polygon", "coordinates": polys}
    cls = None
    if version in ("0.4", "0.5"):
        props = {"objectType": "annotation"}
        if name is not None:
            cls = {"name": name, "color": list(colour)}
        return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geom,
                "properties": {**props, **({"classification": cls} if cls else {})}}
    props = {"isLocked": False, "measurements": []}
    if name is not None:
        props["classification"] = {"name": name, "colorRGB": _packed(colour)}
    return {"type": "Feature", "id": "PathAnnotationObject", "geometry": geom, "properties": props}


def ring(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def write(path, feats, bare=False):
    path.write_text(json.dumps(feats if bare else {"type": "FeatureCollection", "features": feats}))
    return path


def _tile(slide, tmp_path, roi_file, **roi):
    o = opts_tiles(tile_px=32, tile_um=64, tissue="saturation", min_tissue_fraction=0.0, grayspace_fraction=1.0,
                   pen_fraction=1.0, roi={"dir": str(tmp_path), **roi})
    out = tmp_path / "t"
    return tile_slide(slide, "S1", f"{out}.tiff", f"{out}.parquet", f"{out}.png", o, patient_id="P", label="sheetlabel",
                      progress=False, roi_file=roi_file)


# -- Exact geometry -------------------------------------------------------------------------------------

def _clip(poly, x0, y0, x1, y1):
    """Sutherland-Hodgman: `poly` clipped to the box (exact area for any simple polygon)."""
    def cut(pts, inside, cross):
        out = []
        for k in range(len(pts)):
            p, q = pts[k - 1], pts[k]
            if inside(q):
                if not inside(p):
                    out.append(cross(p, q))
                out.append(q)
            elif inside(p):
                out.append(cross(p, q))
        return out

    def at_x(x):
        return lambda p, q: (x, p[1] + (q[1] - p[1]) * (x - p[0]) / (q[0] - p[0]))

    def at_y(y):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (y - p[1]) / (q[1] - p[1]), y)

    pts = [tuple(p) for p in poly]
    for inside, cross in ((lambda p: p[0] >= x0, at_x(x0)), (lambda p: p[0] <= x1, at_x(x1)),
                          (lambda p: p[1] >= y0, at_y(y0)), (lambda p: p[1] <= y1, at_y(y1))):
        pts = cut(pts, inside, cross) if pts else pts
    if len(pts) < 3:
        return 0.0
    a = np.array(pts)
    return 0.5 * abs(float(np.dot(a[:, 0], np.roll(a[:, 1], -1)) - np.dot(a[:, 1], np.roll(a[:, 0], -1))))


def exact_overlap(polys, x, y, size):
    """Share of the tile [x, x+size) x [y, y+size) inside polygons (exterior minus holes), disjoint."""
    area = 0.0
    for rings in polys:
        area += _clip(rings[0][:-1], x, y, x + size, y + size)
        area -= sum(_clip(h[:-1], x, y, x + size, y + size) for h in rings[1:])
    return area / size**2


def star(cx, cy, r_out, r_in, n, phase=0.0):
    a = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + phase
    r = np.where(np.arange(2 * n) % 2 == 0, r_out, r_in)
    pts = np.stack([cx + r * np.cos(a), cy + r * np.sin(a)], 1).tolist()
    return pts + pts[:1]


def test_scanline_fill_is_exact_at_pixel_centres():
    from matplotlib.path import Path as MPath

    outer = np.array(star(40.3, 37.7, 35.2, 12.9, 23)[:-1])
    hole = np.array(star(41.1, 38.2, 8.3, 4.1, 7, 0.3)[:-1])
    inside = fill([outer, hole], 83, 79)
    cc, rr = np.meshgrid(np.arange(83) + 0.5, np.arange(79) + 0.5)
    pts = np.stack([cc.ravel(), rr.ravel()], 1)
    want = MPath(outer).contains_points(pts) & ~MPath(hole).contains_points(pts)
    assert inside.sum() > 1000 and (inside.ravel() == want).all()


def test_self_crossing_found_and_touching_allowed():
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float)
    assert first_crossing(bowtie) is not None
    assert first_crossing(np.array(star(0, 0, 10, 4, 500)[:-1])) is None  # 1,000 vertices, simple
    wiggle = np.array(star(0, 0, 10, 4, 500)[:-1])
    wiggle[[100, 700]] = wiggle[[700, 100]]  # two vertices swapped across the shape: edges cross
    assert first_crossing(wiggle) is not None
    # two squares touching at a vertex (a figure-8 drawn as one ring) is not a proper crossing
    assert first_crossing(np.array([[0, 0], [5, 0], [5, 5], [10, 5], [10, 10], [5, 10], [5, 5], [0, 5]], float)) is None


@pytest.mark.parametrize("version", ["0.5", "0.3"])
def test_tile_counts_match_the_exact_area(block_slide, tmp_path, version):
    """A polygon with a hole, a MultiPolygon and a region crossing the slide's edge, as QuPath
    exports them: every tile's overlap within 3% of the exact area, and the kept tiles exactly
    those whose exact overlap is at least min_overlap (tiles within 3% of it aside)."""
    with_hole = [star(900.5, 1000.3, 420, 250, 9), star(905, 1010, 110, 60, 6)[::-1]]
    multi = [[ring(1500.7, 200.2, 1890.1, 560.9)], [[[1450, 1500], [1990.4, 1390], [1900, 1960.7], [1500, 1900], [1450, 1500]]]]
    edge = [[[-150, -90], [600.3, -60], [380.8, 350.5], [-40, 420.2], [-150, -90]]]
    feats = [qupath_feature(with_hole, "Tumor", version=version), qupath_feature(multi, "Stroma", (0, 200, 0),
                                                                                 version=version, multi=True),
             qupath_feature(edge, None, version=version)]
    df = _tile(block_slide[0], tmp_path, write(tmp_path / "S1.geojson", feats, bare=version == "0.3"))
    polys = [with_hole, multi[0], multi[1], edge]
    exact = {(x, y): exact_overlap(polys, x, y, STRIDE) for x in range(0, 2048, STRIDE) for y in range(0, 2048, STRIDE)}
    got = {(r.x, r.y): r.roi_overlap for r in df.itertuples()}
    assert max(abs(got[k] - exact[k]) for k in got) < 0.03
    clear = {k for k, v in exact.items() if abs(v - 0.5) > 0.03}
    assert {k for k in clear if exact[k] >= 0.5} == {k for k in clear if k in got}
    assert set(got) <= {k for k, v in exact.items() if v >= 0.47} and len(got) > 40
    assert df["kept"].all() and df["label"].eq("sheetlabel").all()  # labels off: the sheet's label
    assert set(df["roi_class"]) == {"Tumor", "Stroma", ""}


def test_labels_nesting_exclusion_and_mixed_tiles(block_slide, tmp_path):
    # Tumor: x 0..1024; Stroma: x 1024+48..2048 (tiles at x=1024 are 5/8 stroma... see below);
    # Necrosis nested inside Tumor; an Ignore* region over part of Stroma
    feats = [qupath_feature([ring(0, 0, 1024 + 40, 2048)], "Tumor"),
             qupath_feature([ring(1024 + 40, 0, 2048, 2048)], "Stroma", (0, 150, 0)),
             qupath_feature([ring(256, 256, 512, 512)], "Necrosis", (90, 90, 90)),
             qupath_feature([ring(1536, 1536, 1600, 1600)], "Ignore*", (180, 180, 180))]
    f = write(tmp_path / "S1.geojson", feats)
    df = _tile(block_slide[0], tmp_path, f, labels=True, classes={"Tumor": "tumor", "Stroma": "stroma"})
    at = {(r.x, r.y): r for r in df.itertuples()}
    assert len(df) == 256
    assert at[(256, 256)].label == "Necrosis" and at[(0, 0)].label == "tumor" and at[(1920, 0)].label == "stroma"
    # the column of tiles at x=1024: 40/128 tumour, 88/128 stroma -> the larger
    assert at[(1024, 0)].label == "stroma" and abs(at[(1024, 0)].roi_overlap - 88 / 128) < 0.03
    ex = df[df["reject_reason"] == "roi_excluded"]
    assert set(zip(ex.x, ex.y)) == {(1536, 1536)} and ex["page"].eq(-1).all() and ex["blur"].isna().all()
    assert df.loc[df["reject_reason"] == "", "kept"].all()
    # mixed: drop -> the x=1024 column goes (tumour covers 31% > 5%); Necrosis ignored -> tumour there
    df2 = _tile(block_slide[0], tmp_path, f, labels=True, mixed="drop", classes={"Necrosis": None})
    at2 = {(r.x, r.y): r for r in df2.itertuples()}
    assert (df2.loc[df2["x"] == 1024, "reject_reason"] == "roi_mixed").all() and at2[(256, 256)].label == "Tumor"
    assert set(df2.loc[df2["kept"], "label"]) == {"Tumor", "Stroma"}
    # a named column for attributes runs: label stays the sheet's
    df3 = _tile(block_slide[0], tmp_path, f, labels="region")
    assert df3["label"].eq("sheetlabel").all() and set(df3["region"]) == {"Tumor", "Stroma", "Necrosis"}
    # the QC thumbnail draws the regions in their QuPath colours
    from PIL import Image

    thumb = np.asarray(Image.open(tmp_path / "t.png").convert("RGB")).reshape(-1, 3)
    assert ((thumb == (0, 150, 0)).all(1)).sum() > 50 and ((thumb == (90, 90, 90)).all(1)).sum() > 20


def test_unclassified_regions_restrict_but_never_label(block_slide, tmp_path):
    feats = [qupath_feature([ring(0, 0, 1024, 2048)], None), qupath_feature([ring(0, 0, 512, 512)], "Tumor")]
    f = write(tmp_path / "S1.geojson", feats)
    plain = _tile(block_slide[0], tmp_path, f)
    assert len(plain) == 8 * 16 and plain["x"].max() < 1024
    lab = _tile(block_slide[0], tmp_path, f, labels=True)
    assert len(lab) == 16 and lab["label"].eq("Tumor").all()


@pytest.mark.parametrize("doc,msg", [
    ("<html>not json", "is not GeoJSON"),
    ([{"type": "Feature", "properties": {"objectType": "annotation"}}], r"feature 0: the feature has no geometry"),
    ('[{"type": "Feature", "id": "a1", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 5], [5, 5]]]}}]',
     "NaN is not a number"),
    ([qupath_feature([[[0, 0], [100, 0], [100, 100], [50, 100], [50, -20], [0, 100], [0, 0]]], "Tumor")],
     r"feature 0 \(.*\): its outline crosses itself \(edges"),
    ([qupath_feature([ring(0, 0, 900, 900), [[100, 100], [300, 300], [300, 100], [100, 300], [100, 100]]], "Tumor")],
     "its hole 1 crosses itself"),
])
def test_bad_region_files_fail_their_slide_naming_file_and_feature(block_slide, tmp_path, doc, msg):
    from histosynth.cli import main

    p = tmp_path / "S1.geojson"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(UserError, match=msg) as e:
        _tile(block_slide[0], tmp_path, p)
    assert str(p) in str(e.value)
    assert not (tmp_path / "t.parquet").exists()  # nothing half-written where it looks finished
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(f"slide_id\tpatient_id\tlabel\tpath\nS1\tP\tx\t{block_slide[0]}\n")
    o = json.dumps(opts_tiles(tile_px=32, tile_um=64, roi={"dir": str(tmp_path), "require": True}))
    assert main(["-q", "tile", "--options", o, "--sheet", str(sheet), "--slide-id", "S1", "--store",
                 str(tmp_path / "a.tiff"), "--index", str(tmp_path / "a.parquet"), "--thumb", str(tmp_path / "a.png")]) == 2


def test_regions_in_another_coordinate_frame_are_refused(block_slide, artefact_slide, tmp_path):
    outside = write(tmp_path / "S1.geojson", [qupath_feature([ring(3000, 3000, 3500, 3500)], "Tumor")])
    with pytest.raises(UserError, match=r"feature 0 .*wholly outside slide S1 \(its extent x 3000..3500"):
        _tile(block_slide[0], tmp_path, outside)
    scaled_up = write(tmp_path / "S1.geojson", [qupath_feature([ring(100, 100, 2600, 2500)], "Tumor")])
    with pytest.raises(UserError, match="more than 10% beyond slide S1 .2048x2048"):
        _tile(block_slide[0], tmp_path, scaled_up)
    # the tissue's central region exported from a 16x downsampled image: top-left corner, on glass
    art = artefact_slide[0]
    scaled_down = write(tmp_path / "S1.geojson", [qupath_feature([ring(58, 58, 70, 70)], "Tumor")])
    o = opts_tiles(tile_px=32, tile_um=64, roi={"dir": str(tmp_path)})
    with pytest.raises(UserError, match=r"look scaled by 1/\d+"):
        tile_slide(art, "S1", tmp_path / "a.tiff", tmp_path / "a.parquet", tmp_path / "a.png", o, progress=False,
                   roi_file=scaled_down)


def test_slides_without_a_file_are_tiled_whole_or_refused(block_slide, tmp_path):
    from histosynth.commands.slides import tile

    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(f"slide_id\tpatient_id\tlabel\tpath\nS9\tP\tx\t{block_slide[0]}\n")
    args = (sheet, "S9", tmp_path / "a.tiff", tmp_path / "a.parquet", tmp_path / "a.png")
    o = opts_tiles(tile_px=32, tile_um=64, tissue="saturation", min_tissue_fraction=0.0, grayspace_fraction=1.0,
                   roi={"dir": str(tmp_path), "require": True})
    with pytest.raises(UserError, match=r"slide S9: no QuPath export S9.geojson in .*require"):
        tile(o, *args, progress=False)
    o["roi"]["require"] = False
    tile(o, *args, progress=False)
    import pandas as pd

    df = pd.read_parquet(tmp_path / "a.parquet")
    assert len(df) == 256 and df["roi_overlap"].isna().all() and df["roi_class"].eq("").all()
    # QuPath names an export after the image file: block.svs.geojson is found for slide S9
    write(tmp_path / "block.svs.geojson", [qupath_feature([ring(0, 0, 1024, 1024)], "Tumor")])
    tile(o, *args, progress=False)
    assert len(pd.read_parquet(tmp_path / "a.parquet")) == 64


def test_detections_and_points_are_not_regions(tmp_path):
    feats = [qupath_feature([ring(0, 0, 10, 10)], "Tumor"),
             {"type": "Feature", "id": "PathDetectionObject", "geometry": {"type": "Polygon", "coordinates": [ring(0, 0, 5, 5)]},
              "properties": {"classification": {"name": "Tumor", "colorRGB": -65536}}},
             {"type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]}, "properties": {"objectType": "annotation"}},
             {"type": "Feature", "geometry": {"type": "GeometryCollection", "geometries": [
                 {"type": "Polygon", "coordinates": [ring(20, 20, 30, 30)]}, {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}]},
              "properties": {"objectType": "annotation", "classification": {"name": "Stroma", "colorRGB": -16711936}}}]
    regs = read_regions(write(tmp_path / "r.geojson", feats), object_types=("annotation",))
    assert [(r.name, r.colour, r.area) for r in regs] == [("Tumor", (200, 0, 0), 100.0), ("Stroma", (0, 255, 0), 100.0)]
    assert len(read_regions(tmp_path / "r.geojson")) == 3  # label maps read detections too


def test_split_strata_come_from_the_tiles_labels():
    import pandas as pd

    from histosynth.split.patients import split_patients, tile_label_sheet

    sheet = pd.DataFrame({"slide_id": [f"s{i}" for i in range(6)], "patient_id": [f"p{i}" for i in range(6)],
                          "label": "annotated"})
    tiles = pd.DataFrame({"slide_id": [f"s{i}" for i in range(6) for _ in range(2)],
                          "label": ["tumor", "stroma"] * 6, "kept": True})
    strata = tile_label_sheet(sheet, tiles)
    assert len(strata) == 12 and set(strata["label"]) == {"tumor", "stroma"}
    s = split_patients(strata, 0.2, 0.0, 0)
    assert set(s["label"]) == {"stroma|tumor"} and (s["partition"] == "test").sum() == 1
    assert tile_label_sheet(sheet, tiles.assign(label="annotated")).equals(sheet)
