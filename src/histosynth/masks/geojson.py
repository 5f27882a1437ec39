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

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosynth.masks.labels import LabelSet
from histosynth.utils import UserError

log = logging.getLogger(__name__)


@dataclass
class Shape:
    label: int
    rings: list  # exterior then holes, each (n, 2) float level-0 px
    bbox: tuple  # x0, y0, x1, y1
    area: float


def _ring_area(r):
    x, y = r[:, 0], r[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number GeoJSON allows")


def _feature_name(p: Path, k: int, f) -> str:
    """'annotation file F, feature k (id / name)': how messages name a feature."""
    tag = ""
    if isinstance(f, dict):
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        ident = f.get("id") or props.get("name") or props.get("objectId")
        if isinstance(ident, (str, int)):
            tag = f" ({str(ident)[:60]})"
    return f"annotation file {p}, feature {k}{tag}"


def _rings(poly, where: str) -> list:
    """A polygon's rings as (n, 2) float arrays of finite level-0 coordinates; rings of fewer
    than 3 points are dropped. Anything else is a UserError naming the feature."""
    if not isinstance(poly, list):
        raise UserError(f"{where}: polygon coordinates must be a list of rings, not {type(poly).__name__}")
    rings = []
    for r in poly:
        if not isinstance(r, list) or not all(isinstance(pt, list) and len(pt) >= 2 for pt in r):
            raise UserError(f"{where}: a ring must be a list of [x, y] points")
        odd = [v for pt in r for v in pt[:2] if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if odd:
            raise UserError(f"{where}: coordinates must be numbers (found {str(odd[0])[:40]!r})")
        if len(r) < 3:
            continue
        arr = np.asarray([pt[:2] for pt in r], np.float64)
        if not np.isfinite(arr).all():
            raise UserError(f"{where}: coordinates are not finite numbers (NaN or infinite)")
        rings.append(arr)
    return rings


def read_annotations(path, labels: LabelSet, class_map: dict | None = None) -> list:
    """Shapes of a QuPath GeoJSON file, classes resolved to indices of `labels`.

    ``class_map`` maps QuPath class names to label names (a name absent from it is looked
    up in the label set as is). Unclassified objects and classes not in the label set are
    skipped, and named once in a warning."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(), parse_constant=_refuse_constant)
    except FileNotFoundError:
        raise UserError(f"annotation file {p} does not exist") from None
    except RecursionError:
        raise UserError(f"annotation file {p}: its JSON is nested too deeply to be a QuPath export") from None
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"annotation file {p} is not GeoJSON ({exc}); export it from QuPath with "
                        f"File > Export objects as GeoJSON") from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features", [])
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, list):
        feats = doc
    else:
        raise UserError(f"annotation file {p}: expected a GeoJSON FeatureCollection or a list of Features")
    if not isinstance(feats, list):
        raise UserError(f"annotation file {p}: 'features' is a {type(feats).__name__}, not a list of Features")
    class_map = class_map or {}
    index = {n: i for i, n in enumerate(labels.names)}
    shapes, skipped = [], {}
    for k, f in enumerate(feats):
        where = _feature_name(p, k, f)
        if not isinstance(f, dict):
            raise UserError(f"{where}: a Feature must be a JSON object, not {type(f).__name__}")
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            raise UserError(f"{where}: 'properties' must be an object")
        cls = props.get("classification")
        cls = cls.get("name") if isinstance(cls, dict) else cls
        if cls is not None and not isinstance(cls, str):
            raise UserError(f"{where}: classification {cls!r} is not a class name")
        name = class_map.get(cls, cls)
        geom = f.get("geometry") or {}
        if not isinstance(geom, dict):
            raise UserError(f"{where}: 'geometry' must be an object")
        if name not in index:
            skipped[str(cls)] = skipped.get(str(cls), 0) + 1
            continue
        if geom.get("type") == "Polygon":
            polys = [geom.get("coordinates")]
        elif geom.get("type") == "MultiPolygon":
            polys = geom.get("coordinates")
            if not isinstance(polys, list):
                raise UserError(f"{where}: MultiPolygon coordinates must be a list of polygons")
        else:
            skipped[f"{cls} ({geom.get('type')})"] = skipped.get(f"{cls} ({geom.get('type')})", 0) + 1
            continue
        for poly in polys:
            rings = _rings(poly, where)
            if not rings:
                continue
            ext = rings[0]
            shapes.append(Shape(index[name], rings, (ext[:, 0].min(), ext[:, 1].min(), ext[:, 0].max(), ext[:, 1].max()),
                                _ring_area(ext) - sum(_ring_area(h) for h in rings[1:])))
    if skipped:
        log.warning("%s: skipped objects of classes not in the label set (map them with masks.geojson_classes): %s",
                    p.name, skipped)
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
