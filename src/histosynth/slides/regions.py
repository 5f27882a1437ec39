"""QuPath GeoJSON exports read into validated regions (shared by ROI tiling and label maps).

QuPath's "Export objects as GeoJSON" (0.2 to 0.5) writes a FeatureCollection, or in older
versions a bare list of Features, whose coordinates are **level-0 pixels** of the slide.
Each feature's class is ``properties.classification.name`` (0.3+; a plain string in some
scripts) with its colour ``classification.color`` ([r, g, b]; 0.2's packed ``colorRGB``
integer is read too); ``properties.objectType`` says what the object is (``annotation``,
``detection``, ``cell``, ``tile``; 0.2/0.3 name it in the feature's ``id`` instead:
``PathAnnotationObject``, ``PathDetectionObject``, ...). Polygon, MultiPolygon (both with holes) and
GeometryCollections of them are read; points and lines are skipped and counted.

Everything a file can get wrong is a ``UserError`` naming the file and the feature: not JSON,
not GeoJSON, a feature without geometry, coordinates that are not finite numbers, a ring that
crosses itself (its inside is then ambiguous: QuPath never exports one; fix it in QuPath with
Objects > Annotations > Simplify or by redrawing). Nothing in the file is executed.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosynth.utils import UserError

log = logging.getLogger(__name__)
# QuPath 0.2/0.3 name the object type in the feature's id
OLD_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection", "PathCellObject": "cell",
             "PathTileObject": "tile", "PathTMACoreObject": "tma_core"}


@dataclass
class Region:
    """One polygon of a feature (a MultiPolygon gives several): exterior ring then holes, each
    an (n, 2) float64 array of level-0 (x, y), without the repeated closing point."""
    name: str | None  # QuPath class name; None = unclassified
    colour: tuple | None  # (r, g, b) of the class, when the file records it
    rings: list
    feature: int
    where: str  # "annotation file F, feature k (id)", how messages name it
    object_type: str = "annotation"

    @property
    def bbox(self) -> tuple:
        ext = self.rings[0]
        return float(ext[:, 0].min()), float(ext[:, 1].min()), float(ext[:, 0].max()), float(ext[:, 1].max())

    @property
    def area(self) -> float:
        return ring_area(self.rings[0]) - sum(ring_area(h) for h in self.rings[1:])


def ring_area(r: np.ndarray) -> float:
    """Shoelace area of a ring (either orientation)."""
    x, y = r[:, 0], r[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _refuse_constant(name):
    raise ValueError(f"{name} is not a number GeoJSON allows")


def feature_name(p: Path, k: int, f) -> str:
    """'annotation file F, feature k (id / name)': how messages name a feature."""
    tag = ""
    if isinstance(f, dict):
        props = f.get("properties") if isinstance(f.get("properties"), dict) else {}
        ident = f.get("id") or props.get("name") or props.get("objectId")
        if isinstance(ident, (str, int)):
            tag = f" ({str(ident)[:60]})"
    return f"annotation file {p}, feature {k}{tag}"


def first_crossing(ring: np.ndarray):
    """(i, j) of two non-adjacent edges of a closed ring that properly cross, or None.

    Edges are sorted by their left end and each is compared with the following ones while
    their x-ranges can overlap, vectorised over all edges per offset: O(n log n + n k) for
    k edges sharing an x-range (a 20,000-vertex QuPath outline in a few milliseconds).
    Touching at a vertex and collinear overlap do not count (QuPath's own geometry can touch)."""
    n = len(ring)
    if n < 4:
        return None
    a, b = ring, np.roll(ring, -1, 0)
    lo_x, hi_x = np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 0], b[:, 0])
    lo_y, hi_y = np.minimum(a[:, 1], b[:, 1]), np.maximum(a[:, 1], b[:, 1])
    order = np.argsort(lo_x, kind="stable")
    idx = np.arange(n)

    def orient(p, q, r):
        return np.sign((q[:, 0] - p[:, 0]) * (r[:, 1] - p[:, 1]) - (q[:, 1] - p[:, 1]) * (r[:, 0] - p[:, 0]))

    for k in range(1, n):
        i, j = order[: n - k], order[k:]
        live = lo_x[j] <= hi_x[i]
        if not live.any():
            break
        i, j = i[live], j[live]
        near = (lo_y[j] <= hi_y[i]) & (lo_y[i] <= hi_y[j])
        gap = np.abs(idx[i] - idx[j])
        near &= (gap != 1) & (gap != n - 1)
        if not near.any():
            continue
        i, j = i[near], j[near]
        cross = (orient(a[i], b[i], a[j]) * orient(a[i], b[i], b[j]) < 0) & \
                (orient(a[j], b[j], a[i]) * orient(a[j], b[j], b[i]) < 0)
        if cross.any():
            m = int(np.argmax(cross))
            return tuple(sorted((int(i[m]), int(j[m]))))
    return None


def _rings(poly, where: str) -> list:
    """A polygon's rings as (n, 2) float arrays of finite level-0 coordinates, the closing point
    dropped; rings of fewer than 3 distinct points are dropped. Anything else is a UserError."""
    if not isinstance(poly, list):
        raise UserError(f"{where}: polygon coordinates must be a list of rings, not {type(poly).__name__}")
    rings = []
    for r in poly:
        if not isinstance(r, list) or not all(isinstance(pt, list) and len(pt) >= 2 for pt in r):
            raise UserError(f"{where}: a ring must be a list of [x, y] points")
        odd = [v for pt in r for v in pt[:2] if not isinstance(v, (int, float)) or isinstance(v, bool)]
        if odd:
            raise UserError(f"{where}: coordinates must be numbers (found {str(odd[0])[:40]!r})")
        arr = np.asarray([pt[:2] for pt in r], np.float64).reshape(-1, 2)
        if not np.isfinite(arr).all():
            raise UserError(f"{where}: coordinates are not finite numbers (NaN or infinite)")
        if len(arr) > 1 and (arr[0] == arr[-1]).all():
            arr = arr[:-1]
        if len(arr) < 3:
            continue
        rings.append(arr)
    return rings


def _colour(props: dict):
    cls = props.get("classification")
    c = cls.get("color", cls.get("colorRGB")) if isinstance(cls, dict) else props.get("colorRGB")
    if isinstance(c, list) and len(c) >= 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c[:3]):
        return tuple(c[:3])
    if isinstance(c, int) and not isinstance(c, bool):  # QuPath 0.2: packed (A)RGB, possibly negative
        c &= 0xFFFFFF
        return (c >> 16) & 255, (c >> 8) & 255, c & 255
    return None


def _polygons(geom, where: str, depth: int = 0):
    """Lists of rings (as GeoJSON lists) of a geometry, and the type names skipped."""
    if not isinstance(geom, dict):
        raise UserError(f"{where}: 'geometry' must be an object")
    kind = geom.get("type")
    if kind == "Polygon":
        return [geom.get("coordinates")], []
    if kind == "MultiPolygon":
        polys = geom.get("coordinates")
        if not isinstance(polys, list):
            raise UserError(f"{where}: MultiPolygon coordinates must be a list of polygons")
        return polys, []
    if kind == "GeometryCollection" and depth < 4:
        parts = geom.get("geometries")
        if not isinstance(parts, list):
            raise UserError(f"{where}: GeometryCollection 'geometries' must be a list")
        polys, skipped = [], []
        for g in parts:
            p, s = _polygons(g, where, depth + 1)
            polys += p
            skipped += s
        return polys, skipped
    return [], [str(kind)]


def read_regions(path, object_types=None) -> list[Region]:
    """Every polygon of a QuPath GeoJSON file as a Region, validated.

    `object_types`: keep only features of these QuPath object types (a feature without
    ``objectType`` counts as an annotation); None keeps all. Skipped features (other object
    types, points, lines) are counted in one log line."""
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
    regions, skipped = [], {}
    for k, f in enumerate(feats):
        where = feature_name(p, k, f)
        if not isinstance(f, dict):
            raise UserError(f"{where}: a Feature must be a JSON object, not {type(f).__name__}")
        props = f.get("properties") or {}
        if not isinstance(props, dict):
            raise UserError(f"{where}: 'properties' must be an object")
        otype = props.get("objectType", OLD_TYPES.get(f.get("id") if isinstance(f.get("id"), str) else "", "annotation"))
        otype = otype if isinstance(otype, str) else "annotation"
        if object_types is not None and otype not in object_types:
            skipped[otype] = skipped.get(otype, 0) + 1
            continue
        cls = props.get("classification")
        cls = cls.get("name") if isinstance(cls, dict) else cls
        if cls is not None and not isinstance(cls, str):
            raise UserError(f"{where}: classification {cls!r} is not a class name")
        if f.get("geometry") is None:
            raise UserError(f"{where}: the feature has no geometry (an object QuPath exports always has one); "
                            f"remove it or re-export the annotations")
        polys, other = _polygons(f["geometry"], where)
        for t in other:
            skipped[t] = skipped.get(t, 0) + 1
        colour = _colour(props)
        for poly in polys:
            rings = _rings(poly, where)
            if not rings:
                continue
            for r, ring in enumerate(rings):
                hit = first_crossing(ring)
                if hit is not None:
                    x, y = ring[hit[0]]
                    raise UserError(f"{where}: its {'outline' if r == 0 else f'hole {r}'} crosses itself (edges "
                                    f"{hit[0]} and {hit[1]}, near ({x:.0f}, {y:.0f})), so its inside is ambiguous; "
                                    f"fix the shape in QuPath (redraw it, or Objects > Annotations > Simplify shape)")
            regions.append(Region(cls, colour, rings, k, where, otype))
    if skipped:
        log.info("%s: skipped %s", p.name, ", ".join(f"{v} {k}" for k, v in sorted(skipped.items())))
    return regions
