"""Tiling inside annotated regions, and tile labels from the regions' classes (``tiles.roi``).

A slide's regions come from one QuPath GeoJSON export (``slides.regions``), in level-0 pixels.
They are rasterised **once per slide** on a sampling grid aligned with the tile grid, S x S
sample points per tile (S up to 32, fewer on very large slides so the raster stays under 16
million points): a point counts when it lies inside a region's outline and in none of its
holes (scanline fill, exact at each point). A tile's overlap with a class is the share of its
S x S points that fall in that class's regions, so the cost does not grow with the number of
tiles times the number of vertices, and the error of an overlap is at most the share of the
points along the region's boundary (about 1/S of a tile cut by a straight edge).

Regions are painted largest first, so a region drawn inside another (necrosis inside a tumour
annotation, as QuPath nests them) owns its own area. Regions whose class matches ``exclude``
(``Ignore*``, pen marks, ...) are painted on top of everything: a tile with more than
``max_excluded`` of its area in them is dropped (``roi_excluded``).

* Without labels: a tile is kept when at least ``min_overlap`` of it lies in regions of any
  class (unclassified regions included).
* With labels: each tile gets the class that covers most of it, when that share is at least
  ``min_overlap``; a tile where a second class covers more than ``mixed_tolerance`` is dropped
  (``mixed: drop``, reason ``roi_mixed``) or goes to the larger (``mixed: larger``; an exact tie
  is dropped). Unclassified regions play no part in labelling.
"""
from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from histosynth.slides.regions import Region, read_regions
from histosynth.utils import UserError

log = logging.getLogger(__name__)
MAX_RASTER = 16_000_000  # sample points per slide raster (int16 scanline buffer: 32 MB)
RESERVED = {"slide_id", "patient_id", "page", "x", "y", "level", "downsample", "mpp", "mpp0", "tile_px", "tile_um",
            "tissue_fraction", "kept", "reject_reason", "store", "partition", "roi_class", "roi_overlap"}
UNANNOTATED = "unannotated"  # a named label column's value for tiles of slides without labelled regions


def region_file(directory, slide_id: str, slide_path=None) -> Path | None:
    """The QuPath export of a slide in `directory`: ``<slide_id>.geojson`` (or ``.json``), else
    ``<slide file name>.geojson`` as QuPath names exports of an image (``X.svs.geojson``)."""
    d = Path(directory)
    names = [f"{slide_id}.geojson", f"{slide_id}.json"]
    if slide_path:
        names += [f"{Path(slide_path).name}.geojson", f"{Path(slide_path).stem}.geojson"]
    for n in names:
        if (d / n).is_file():
            return d / n
    return None


def label_column(opts: dict) -> str | None:
    """The index column region classes go to: ``label`` (labels: true), a named column, or None."""
    lab = opts["roi"]["labels"]
    if lab is True or str(lab).lower() == "true":
        return "label"
    if not lab or str(lab).lower() == "false":
        return None
    if lab in RESERVED:
        raise UserError(f"tiles.roi.labels: {lab!r} is a column histosynth writes itself; name another column "
                        f"(or true for the label column)")
    return str(lab)


# -- Rasterisation ----------------------------------------------------------------------------------

def fill(rings: list, W: int, H: int) -> np.ndarray:
    """(H, W) bool: which pixel centres (c + 0.5, r + 0.5) lie inside the polygon whose rings
    (exterior and holes, in pixel units) are given, by the even-odd rule over all rings."""
    u0 = np.concatenate([r[:, 0] for r in rings])
    v0 = np.concatenate([r[:, 1] for r in rings])
    u1 = np.concatenate([np.roll(r[:, 0], -1) for r in rings])
    v1 = np.concatenate([np.roll(r[:, 1], -1) for r in rings])
    lo, hi = np.minimum(v0, v1), np.maximum(v0, v1)
    r0 = np.clip(np.ceil(lo - 0.5), 0, H).astype(np.int64)  # first row whose centre is >= lo
    r1 = np.clip(np.ceil(hi - 0.5), 0, H).astype(np.int64)  # rows [r0, r1): centre in [lo, hi)
    n = np.maximum(r1 - r0, 0)
    out = np.zeros((H, W), bool)
    if n.sum() == 0:
        return out
    e = np.repeat(np.arange(len(n)), n)
    rows = r0[e] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
    yc = rows + 0.5
    x = u0[e] + (yc - v0[e]) * (u1[e] - u0[e]) / (v1[e] - v0[e])
    order = np.lexsort((x, rows))
    rows, x = rows[order], x[order]
    a, b = slice(0, None, 2), slice(1, None, 2)  # every row holds an even number of crossings
    k0 = np.clip(np.ceil(x[a] - 0.5), 0, W).astype(np.int64)
    k1 = np.clip(np.ceil(x[b] - 0.5), 0, W).astype(np.int64)
    keep = k1 > k0
    diff = np.zeros((H, W + 1), np.int16)
    np.add.at(diff, (rows[a][keep], k0[keep]), 1)
    np.add.at(diff, (rows[a][keep], k1[keep]), -1)
    np.cumsum(diff, axis=1, out=diff)
    return diff[:, :W] > 0


def _paint(target: np.ndarray, value, region: Region, scale: float) -> None:
    """Set the raster points inside `region` (level-0 px; `scale` level-0 px per point) to `value`."""
    H, W = target.shape
    x0, y0, x1, y1 = region.bbox
    c0, r0 = max(0, int(np.floor(x0 / scale)) - 1), max(0, int(np.floor(y0 / scale)) - 1)
    c1, r1 = min(W, int(np.ceil(x1 / scale)) + 1), min(H, int(np.ceil(y1 / scale)) + 1)
    if c1 <= c0 or r1 <= r0:
        return
    rings = [np.stack([r[:, 0] / scale - c0, r[:, 1] / scale - r0], 1) for r in region.rings]
    inside = fill(rings, c1 - c0, r1 - r0)
    target[r0:r1, c0:c1][inside] = value


def _block_share(mask: np.ndarray, nx: int, ny: int, s: int) -> np.ndarray:
    return mask.reshape(ny, s, nx, s).sum((1, 3), dtype=np.int64).astype(np.float32) / (s * s)


# -- Per-slide regions on the tile grid ---------------------------------------------------------------

@dataclass
class RoiGrid:
    """Per grid tile (ny, nx): whether it is a candidate, its overlap, class and reason."""
    inside: np.ndarray
    overlap: np.ndarray
    cls: np.ndarray  # index into names, -1 = none
    reason: np.ndarray  # "" or roi_excluded / roi_mixed
    names: list
    file: Path
    regions: list = field(default_factory=list)  # (Region, role) for drawing: included | excluded | ignored
    whole: bool = False  # no usable region: the slide counts as one region
    counts: dict = field(default_factory=dict)

    def at(self, i: int, j: int):
        """(overlap, class name or "", reason) of grid tile column i, row j."""
        k = int(self.cls[j, i])
        return float(self.overlap[j, i]), (self.names[k] if k >= 0 else ""), str(self.reason[j, i])


def _roles(regions: list, opts: dict, labels: bool):
    """Each region's role and label name after `classes` and `exclude`."""
    classes, exclude = opts["classes"], opts["exclude"]
    out = []
    for r in regions:
        q = r.name
        if q is not None and any(fnmatch.fnmatchcase(q, pat) for pat in exclude):
            out.append((r, "excluded", q))
        elif q in classes and classes[q] is None:
            out.append((r, "ignored", q))
        else:
            name = classes.get(q, q)
            out.append((r, "ignored", name) if labels and name is None else (r, "included", name or ""))
    return out


def _check_frame(regions: list, w0: int, h0: int, path: Path, slide_id: str) -> None:
    """Refuse regions that cannot be in this slide's level-0 pixel frame."""
    if not regions:
        return
    for r in regions:
        x0, y0, x1, y1 = r.bbox
        if x1 <= 0 or y1 <= 0 or x0 >= w0 or y0 >= h0:
            raise UserError(f"{r.where}: it lies wholly outside slide {slide_id} (its extent x {x0:.0f}..{x1:.0f}, "
                            f"y {y0:.0f}..{y1:.0f}; the slide is {w0}x{h0} level-0 px). QuPath exports level-0 "
                            f"pixel coordinates of the image it was opened on: is this the export of another slide, "
                            f"or were the coordinates scaled?")
    bx = np.array([r.bbox for r in regions])
    ex0, ey0, ex1, ey1 = bx[:, 0].min(), bx[:, 1].min(), bx[:, 2].max(), bx[:, 3].max()
    if ex0 < -0.1 * w0 or ey0 < -0.1 * h0 or ex1 > 1.1 * w0 or ey1 > 1.1 * h0:
        raise UserError(f"annotation file {path}: its regions span x {ex0:.0f}..{ex1:.0f}, y {ey0:.0f}..{ey1:.0f}, "
                        f"more than 10% beyond slide {slide_id} ({w0}x{h0} level-0 px). QuPath exports level-0 pixel "
                        f"coordinates: the file is in another coordinate frame (scaled, or of another image)")


def roi_grid(path, slide_id: str, opts: dict, dims0, stride0: float, nx: int, ny: int) -> RoiGrid:
    """The regions of `path` on the tile grid of a slide (`dims0` level-0 size, `stride0` level-0
    px per tile, nx x ny tiles). `opts` is the tiles.roi section."""
    path = Path(path)
    labels = label_column({"roi": opts}) is not None
    regions = read_regions(path, object_types=("annotation",))
    _check_frame(regions, int(dims0[0]), int(dims0[1]), path, slide_id)
    roles = _roles(regions, opts, labels)
    included = sorted([(r, n) for r, role, n in roles if role == "included"], key=lambda t: -t[0].area)
    excluded = [r for r, role, _ in roles if role == "excluded"]
    names = sorted({n for _, n in included})
    s = int(max(4, min(32, np.floor(np.sqrt(MAX_RASTER / max(1, nx * ny))))))
    scale = stride0 / s
    shape = (ny, nx)
    if included:
        raster = np.zeros((ny * s, nx * s), np.int16)  # 0 = outside; k + 1 = names[k]
        for r, n in included:
            _paint(raster, names.index(n) + 1, r, scale)
        share = np.stack([_block_share(raster == k + 1, nx, ny, s) for k in range(len(names))]) if nx * ny else \
            np.zeros((len(names), ny, nx), np.float32)
        del raster
    else:
        share = np.zeros((0, ny, nx), np.float32)
    if excluded:
        ex = np.zeros((ny * s, nx * s), bool)
        for r in excluded:
            _paint(ex, True, r, scale)
        ex_share = _block_share(ex, nx, ny, s)
        del ex
    else:
        ex_share = np.zeros(shape, np.float32)

    reason = np.full(shape, "", dtype=object)
    whole = not included
    if whole:
        inside, overlap, cls = np.ones(shape, bool), np.ones(shape, np.float32), np.full(shape, -1)
    else:
        top = np.sort(share, 0)[::-1]
        best, second = top[0], (top[1] if len(top) > 1 else np.zeros(shape, np.float32))
        cls = np.where(best > 0, np.argmax(share, 0), -1)
        if labels:
            overlap = best
            inside = best >= opts["min_overlap"]
            mixed = (second > opts["mixed_tolerance"]) if opts["mixed"] == "drop" else (second >= best) & (best > 0)
            reason[inside & mixed] = "roi_mixed"
        else:
            overlap = share.sum(0)
            inside = overlap >= opts["min_overlap"] - 1e-6
    reason[inside & (ex_share > opts["max_excluded"])] = "roi_excluded"
    counts = {"regions": len(included), "excluded_regions": len(excluded),
              "ignored_regions": sum(role == "ignored" for _, role, _ in roles), "tiles_inside": int(inside.sum()),
              "roi_excluded": int((reason == "roi_excluded").sum()), "roi_mixed": int((reason == "roi_mixed").sum())}
    drawn = [(r, role) for r, role, _ in roles]
    return RoiGrid(inside, overlap.astype(np.float32), cls.astype(np.int64), reason, names, path, drawn, whole, counts)


def check_scaled(grid: RoiGrid, tissue_inside: int, dims0, downsamples, slide_id: str) -> None:
    """Refuse regions that cover no tissue tile while all of them fit in the top-left 1/d of the
    slide for a pyramid downsample d: coordinates exported from a downsampled level."""
    if grid.whole or tissue_inside:
        return
    boxes = np.array([r.bbox for r, role in grid.regions if role == "included"])
    x1, y1 = boxes[:, 2].max(), boxes[:, 3].max()
    for d in sorted(float(v) for v in downsamples if float(v) > 1.5):
        if x1 <= dims0[0] / d * 1.02 and y1 <= dims0[1] / d * 1.02:
            raise UserError(f"annotation file {grid.file}: its regions cover no tissue of slide {slide_id} and all lie "
                            f"within x < {x1:.0f}, y < {y1:.0f}, the top-left 1/{d:g} of the slide "
                            f"({dims0[0]}x{dims0[1]} level-0 px): the coordinates look scaled by 1/{d:g} (exported "
                            f"from a downsampled image). QuPath exports level-0 pixels: re-export from the slide itself")


def draw_regions(img, grid: RoiGrid, mds: float):
    """The QC thumbnail `img` (PIL RGB; `mds` level-0 px per thumbnail px) with every region
    outlined in its QuPath class colour (yellow when it has none; ignored ones grey), excluded
    regions shaded dark, outlines thicker than the tile boxes. Returns the new image."""
    from PIL import Image, ImageDraw

    width = max(2, round(max(img.size) / 400))
    shade = Image.new("L", img.size, 0)
    ds = ImageDraw.Draw(shade)
    for r, role in grid.regions:
        if role == "excluded":
            ds.polygon([(float(x) / mds, float(y) / mds) for x, y in r.rings[0]], fill=110)
            for h in r.rings[1:]:
                ds.polygon([(float(x) / mds, float(y) / mds) for x, y in h], fill=0)
    out = Image.composite(Image.new("RGB", img.size, (0, 0, 0)), img, shade)
    d = ImageDraw.Draw(out)
    for r, role in grid.regions:
        colour = (160, 160, 160) if role == "ignored" else (r.colour or (255, 220, 0))
        for ring in r.rings:
            pts = [(float(x) / mds, float(y) / mds) for x, y in ring]
            d.line(pts + pts[:1], fill=tuple(colour), width=width, joint="curve")
    return out
