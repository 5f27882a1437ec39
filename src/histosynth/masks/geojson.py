"""QuPath GeoJSON annotations rasterised into per-tile label maps at the tile's scale.

QuPath's "Export objects as GeoJSON" writes a FeatureCollection (or, in older versions, a
bare list of Features) whose coordinates are level-0 pixels of the slide and whose class is
``properties.classification.name``. Polygons and MultiPolygons (with holes) are used; other
geometries are skipped with a warning.

Rasterisation rule: a tile pixel gets a class when its **centre**, mapped to level-0
coordinates, lies inside the polygon (and in none of its holes). Larger polygons are drawn
first, so a nucleus inside a gland keeps its own class. Pixels inside no polygon get class 0.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosynth.masks.labels import LabelSet
from histosynth.slides.regions import read_regions
from histosynth.utils import UserError

log = logging.getLogger(__name__)


@dataclass
class Shape:
    label: int
    rings: list  # exterior then holes, each (n, 2) float level-0 px
    bbox: tuple  # x0, y0, x1, y1
    area: float


def read_annotations(path, labels: LabelSet, class_map: dict | None = None) -> list:
    """Shapes of a QuPath GeoJSON file (every object type: annotations, detections, cells),
    classes resolved to indices of `labels`, largest first.

    ``class_map`` maps QuPath class names to label names (a name absent from it is looked
    up in the label set as is). Unclassified objects and classes not in the label set are
    skipped, and named once in a warning. The file is read and validated by
    ``slides.regions.read_regions``."""
    class_map = class_map or {}
    index = {n: i for i, n in enumerate(labels.names)}
    shapes, skipped = [], {}
    for r in read_regions(path):
        name = class_map.get(r.name, r.name)
        if name not in index:
            skipped[str(r.name)] = skipped.get(str(r.name), 0) + 1
            continue
        shapes.append(Shape(index[name], r.rings, r.bbox, r.area))
    if skipped:
        log.warning("%s: skipped objects of classes not in the label set (map them with masks.geojson_classes): %s",
                    Path(path).name, skipped)
    shapes.sort(key=lambda s: -s.area)
    return shapes


def rasterise(shapes: list, x0: float, y0: float, scale: float, out_px: int) -> np.ndarray:
    """The (out_px, out_px) label map of the region whose top-left level-0 pixel corner is
    (x0, y0), `scale` level-0 px per map pixel."""
    from matplotlib.path import Path as MPath

    out = np.zeros((out_px, out_px), np.uint8)
    x1, y1 = x0 + out_px * scale, y0 + out_px * scale
    for s in shapes:
        bx0, by0, bx1, by1 = s.bbox
        if bx1 < x0 or by1 < y0 or bx0 > x1 or by0 > y1:
            continue
        # pixel columns/rows whose centres can fall inside the bounding box
        c0 = max(0, int(np.floor((bx0 - x0) / scale - 0.5)))
        c1 = min(out_px, int(np.ceil((bx1 - x0) / scale + 0.5)))
        r0 = max(0, int(np.floor((by0 - y0) / scale - 0.5)))
        r1 = min(out_px, int(np.ceil((by1 - y0) / scale + 0.5)))
        if c0 >= c1 or r0 >= r1:
            continue
        cc, rr = np.meshgrid(np.arange(c0, c1), np.arange(r0, r1))
        pts = np.stack([x0 + (cc.ravel() + 0.5) * scale, y0 + (rr.ravel() + 0.5) * scale], 1)
        inside = MPath(s.rings[0]).contains_points(pts)
        for hole in s.rings[1:]:
            inside &= ~MPath(hole).contains_points(pts)
        if inside.any():
            out[r0:r1, c0:c1][inside.reshape(cc.shape)] = s.label
    return out


def tile_maps(index, shapes: list) -> np.ndarray:
    """Label maps of the tiles in a tile index (columns x, y, tile_px, tile_um, mpp0)."""
    if "mpp0" not in index.columns:
        raise UserError("the tile index has no mpp0 column (tiled by an older histosynth): re-run the tile rule")
    out = np.zeros((len(index), int(index["tile_px"].iloc[0]), int(index["tile_px"].iloc[0])), np.uint8)
    for i, (x, y, px, um, mpp0) in enumerate(index[["x", "y", "tile_px", "tile_um", "mpp0"]].itertuples(index=False)):
        out[i] = rasterise(shapes, float(x), float(y), float(um) / float(px) / float(mpp0), int(px))
    return out
