"""Cut one slide into tiles of a fixed field of view (µm) and size (px), with QC.

1. Tissue mask on a low-resolution level (``slides.qc.tissue_mask``).
2. A grid of tiles with a level-0 stride of ``tile_um / mpp`` px; positions whose footprint in
   the mask is less than ``min_tissue_fraction`` tissue are skipped without being decoded.
3. Each remaining tile is read at the coarsest level still at least as fine as needed and
   resampled with an antialiasing (Lanczos-3) filter to ``tile_px`` (``slides.fastread``:
   libvips for TIFF-based slides, OpenSlide otherwise), by the rule's threads, with a bounded
   number of tiles in flight so memory does not grow with the slide; QC scores decide if it
   is kept.
4. Optionally, stain normalisation (``slides.stain``) fitted once per slide on a sample of its
   tissue tiles; QC scores are always those of the tile as scanned.
5. Kept tiles go to the slide's tile store, every evaluated position to the index, and a QC
   thumbnail shows the mask and kept / rejected tiles.

With annotated regions (``tiles.roi``, ``slides.roi``), step 2 also skips positions outside the
regions, positions dropped for an excluded or mixed region are indexed without being decoded
(``roi_excluded``, ``roi_mixed``), and the thumbnail draws the regions.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from histosynth.slides import qc
from histosynth.slides.fastread import GridReader
from histosynth.slides.reader import choose_level, open_slide, slide_mpp
from histosynth.slides.store import TileStoreWriter, write_index
from histosynth.utils import UserError, atomic_path, release_free_memory

log = logging.getLogger(__name__)
REASON_COLOURS = {"": (0, 170, 0), "pen": (0, 90, 255), "whitespace": (150, 150, 150),
                  "grayspace": (120, 120, 120), "blur": (255, 140, 0), "max_tiles": (200, 200, 0),
                  "roi_excluded": (255, 0, 255), "roi_mixed": (140, 0, 255)}
NO_SCORES = dict.fromkeys(("whitespace_fraction", "grayspace_fraction", "blur", "pen_fraction", "mean_od"), float("nan"))


def _mask_level(slide, max_dim: int = 2048) -> int:
    for lvl in range(slide.level_count):
        if max(slide.level_dimensions[lvl]) <= max_dim:
            return lvl
    return slide.level_count - 1


def grid_shape(dims0, stride0: float) -> tuple[int, int]:
    """Whole tiles of `stride0` level-0 px that fit across and down."""
    return int(dims0[0] // stride0), int(dims0[1] // stride0)


def grid_cells(dims0, stride0: float):
    """(i, j, x, y) of every grid tile: column, row and level-0 top-left corner."""
    nx, ny = grid_shape(dims0, stride0)
    xs = np.round(np.arange(nx) * stride0).astype(int)
    ys = np.round(np.arange(ny) * stride0).astype(int)
    return [(i, j, int(xs[i]), int(ys[j])) for j in range(ny) for i in range(nx)]


def low_resolution(slide, max_dim: int = 2048, max_read: int = 4096):
    """(RGB image, downsample) of the slide at about `max_dim` px, in bounded memory.

    The finest pyramid level of at most `max_dim` px (else the coarsest level) is read whole
    when it is at most `max_read` px; a slide without such a level (a single huge level) is
    read in strips that are reduced as they arrive, so a 100,000 px slide never sits in memory."""
    lvl = _mask_level(slide, max_dim)
    w, h = slide.level_dimensions[lvl]
    ds = float(slide.level_downsamples[lvl])
    if max(w, h) <= max_read:
        return np.asarray(slide.read_region((0, 0), lvl, (w, h)).convert("RGB")), ds
    import cv2

    f = int(np.ceil(max(w, h) / max_dim))
    out_w, out_h = w // f, h // f
    strip = f * max(1, 1024 // f)
    rows = []
    for y in range(0, out_h * f, strip):
        hh = min(strip, out_h * f - y)
        region = np.asarray(slide.read_region((0, int(y * ds)), lvl, (out_w * f, hh)).convert("RGB"))
        rows.append(cv2.resize(region, (out_w, hh // f), interpolation=cv2.INTER_AREA))
    return np.concatenate(rows, 0), ds * f


def _in_order(pool, fn, items, window: int):
    """pool.map with at most `window` results in flight (Executor.map submits everything at once,
    so finished tiles would pile up in memory while the writer catches up)."""
    pending = deque()
    it = iter(items)
    for item in it:
        pending.append(pool.submit(fn, item))
        if len(pending) >= window:
            break
    for item in it:
        yield pending.popleft().result()
        pending.append(pool.submit(fn, item))
    while pending:
        yield pending.popleft().result()


def tile_slide(path, slide_id: str, out_store, out_index, out_thumb, opts: dict, *, patient_id: str = "",
               label: str = "", mpp_override: float | None = None, threads: int = 1, progress: bool = True,
               roi_file=None) -> pd.DataFrame:
    """Tile one slide (see the module's docstring); `roi_file`: its QuPath regions (``tiles.roi``)."""
    from tqdm import tqdm

    slide = open_slide(path, slide_id)
    mpp0 = slide_mpp(slide, slide_id, mpp_override, opts.get("mpp_override"))
    tile_px, tile_um = int(opts["tile_px"]), float(opts["tile_um"])
    choice = choose_level(slide, mpp0, tile_um, tile_px)
    if choice.level_mpp > 2 * tile_um / tile_px:
        raise UserError(f"slide {slide_id}: its finest level is {choice.level_mpp:g} µm/px, but tiles of {tile_um} µm in "
                        f"{tile_px} px need {tile_um / tile_px:g} µm/px; tiles would be upsampled more than 2x. Lower "
                        f"tiles.tile_px or raise tiles.tile_um, or check the slide's MPP.")
    if choice.level_mpp > tile_um / tile_px * 1.001:
        log.warning("%s: the finest level (%.3f µm/px) is coarser than requested (%.3f µm/px); tiles are upsampled",
                    slide_id, choice.level_mpp, tile_um / tile_px)
    w0, h0 = slide.level_dimensions[0]
    if choice.stride0 > min(w0, h0):
        raise UserError(f"slide {slide_id}: a tile of {tile_um} µm ({choice.stride0:.0f} px at {mpp0} µm/px) is "
                        f"larger than the slide ({w0}x{h0} px); lower tiles.tile_um")

    try:
        thumb, mds = low_resolution(slide)
    except Exception as exc:  # openslide raises its own errors for corrupt tiles
        raise UserError(f"slide {slide_id}: cannot decode {path} ({exc}); the file is probably corrupt or truncated") from None
    mask = qc.tissue_mask(thumb, opts["tissue"], opts["tissue_min_saturation"])

    roi = None
    if roi_file is not None:
        from histosynth.slides.roi import check_scaled, roi_grid

        roi = roi_grid(roi_file, slide_id, opts["roi"], (w0, h0), choice.stride0,
                       *grid_shape((w0, h0), choice.stride0))
    candidates, n_tissue, n_outside = [], 0, 0
    for i, j, x, y in grid_cells((w0, h0), choice.stride0):
        mx0, my0 = int(x / mds), int(y / mds)
        mx1, my1 = max(mx0 + 1, int((x + choice.stride0) / mds)), max(my0 + 1, int((y + choice.stride0) / mds))
        frac = float(mask[my0:my1, mx0:mx1].mean()) if mask[my0:my1, mx0:mx1].size else 0.0
        if frac >= opts["min_tissue_fraction"]:
            n_tissue += 1
            if roi is not None and not roi.inside[j, i]:
                n_outside += 1
                continue
            candidates.append((i, j, x, y, frac, roi.at(i, j) if roi is not None else None))
    if roi is not None:
        check_scaled(roi, n_tissue - n_outside, (w0, h0), slide.level_downsamples, slide_id)
        dropped = {k: sum(1 for c in candidates if c[5][2] == k) for k in ("roi_excluded", "roi_mixed")}
        log.info("%s: regions of %s: %s; %d of %d tissue positions outside them; dropped for an excluded region %d, "
                 "for lying in two classes' regions %d", slide_id, roi.file,
                 "none usable, the whole slide is tiled" if roi.whole else
                 f"{roi.counts['regions']} region(s) of class(es) {roi.names}", n_outside, n_tissue,
                 dropped["roi_excluded"], dropped["roi_mixed"])
    label_col = None
    roi_on = roi is not None or (opts.get("roi") or {}).get("dir") is not None  # the index gets the roi columns
    if roi_on:
        from histosynth.slides.roi import UNANNOTATED, label_column

        label_col = label_column(opts)

    try:
        reader = GridReader(path, slide, choice, tile_px, grid_shape((w0, h0), choice.stride0), opts["reader"], slide_id)
    except RuntimeError as exc:
        raise UserError(f"{exc}; set tiles.reader to auto or openslide") from None
    log.info("%s: reading with %s", slide_id, reader.backend)
    normalize = _stain_normalizer(opts, reader, candidates, slide_id)

    def read(pos):
        i, j, x, y, _, at = pos
        if at is not None and at[2]:  # dropped for its region: never decoded
            return None, NO_SCORES
        try:
            tile = reader.read(i, j, x, y)
        except Exception as exc:
            raise UserError(f"slide {slide_id}: cannot decode the tile at level-0 ({x}, {y}) of {path} ({exc}); the "
                            f"file is probably corrupt or truncated; re-download it") from None
        scores = qc.tile_scores(tile, opts["whitespace_threshold"], opts["grayspace_threshold"])
        if qc.reject_reason(scores, opts):
            return None, scores
        if normalize is not None:
            tile = normalize(tile)
        return writer.encode(tile), scores  # deflate here, in parallel; the writer thread only appends

    rows = []
    meta = dict(slide_id=slide_id, tile_px=tile_px, tile_um=tile_um, mpp=tile_um / tile_px)
    max_tiles = opts.get("max_tiles_per_slide")
    n_kept = 0
    with TileStoreWriter(out_store, meta) as writer, ThreadPoolExecutor(max(1, threads)) as pool:
        it = _in_order(pool, read, candidates, window=8 * max(1, threads))
        for (_, _, x, y, frac, at), (encoded, scores) in tqdm(zip(candidates, it), total=len(candidates),
                                                              desc=slide_id, unit="tile", disable=not progress):
            reason = at[2] if at is not None and at[2] else qc.reject_reason(scores, opts)
            if not reason and max_tiles and n_kept >= max_tiles:
                reason = "max_tiles"
            page = -1
            if not reason:
                page = writer.append_encoded(encoded, (tile_px, tile_px, 3))
                n_kept += 1
            if len(rows) % 32 == 31:  # every 32 tiles: no measurable cost
                release_free_memory()  # peak memory stays flat however large the slide
            row = dict(slide_id=slide_id, patient_id=patient_id, label=label, page=page, x=x, y=y,
                       level=choice.level, downsample=choice.downsample, mpp=tile_um / tile_px,
                       mpp0=mpp0, tile_px=tile_px, tile_um=tile_um, tissue_fraction=frac, **scores,
                       stain_norm=opts["stain_norm"], kept=not reason, reject_reason=reason)
            if roi_on:
                overlap, cls, _ = at if at is not None else (float("nan"), "", "")
                row.update(roi_overlap=overlap, roi_class=cls)
                if label_col == "label" and cls:
                    row["label"] = cls
                elif label_col not in (None, "label"):
                    row[label_col] = cls or UNANNOTATED
            rows.append(row)
    cols = ["slide_id", "patient_id", "label", "page", "x", "y", "level", "downsample", "mpp", "mpp0", "tile_px", "tile_um",
            "tissue_fraction", "whitespace_fraction", "grayspace_fraction", "blur", "pen_fraction", "mean_od",
            "stain_norm", "kept", "reject_reason"]
    if roi_on:
        cols += ["roi_overlap", "roi_class"] + ([label_col] if label_col not in (None, "label") else [])
    df = pd.DataFrame(rows, columns=cols)
    df["store"] = str(out_store)
    if n_kept == 0 and opts.get("empty_slides", "fail") == "fail":
        Path(out_store).unlink(missing_ok=True)
        qc_png = Path(out_thumb).with_name(f"{Path(out_thumb).stem}.empty.png")
        _write_thumbnail(thumb, mask, df, mds, choice.stride0, qc_png, roi)
        reasons = df["reject_reason"].value_counts().to_dict()
        where = (f"; {n_outside} of {n_tissue} tissue positions outside the regions of {roi.file}"
                 if roi is not None else "")
        raise UserError(f"slide {slide_id}: no tile kept ({len(candidates)} tissue positions"
                        + (f"; rejected: {reasons}" if reasons else "; the tissue mask found no tissue"
                           if not n_tissue else "") + where + "). "
                        f"See its QC thumbnail {qc_png}. Loosen the tiles.* filters that rejected them, drop the slide "
                        f"from the sample sheet, or set tiles.empty_slides: report to carry on without it (it is then "
                        f"listed in the report).")
    write_index(df, out_index)
    _write_thumbnail(thumb, mask, df, mds, choice.stride0, out_thumb, roi)
    if n_kept == 0:
        log.warning("%s: ZERO tiles kept (%d candidate positions); it is listed in the report", slide_id, len(candidates))
    log.info("%s: %d tiles kept of %d tissue positions (level %d, %.3f µm/px read, %d px -> %d px)", slide_id,
             n_kept, len(candidates), choice.level, choice.level_mpp, choice.read_px, tile_px)
    return df


def _stain_normalizer(opts, reader, candidates, slide_id):
    """The slide's fitted stain normaliser, or None. Fitted on up to `stain_fit_tiles` tissue
    tiles spread evenly over the slide (QC-passing ones only)."""
    if opts["stain_norm"] == "none" or not candidates:
        return None
    from histosynth.slides.stain import StainNormalizer, load_reference

    ref = load_reference(opts["stain_reference"]) if opts.get("stain_reference") else None
    norm = StainNormalizer(opts["stain_norm"], ref)
    candidates = [c for c in candidates if c[5] is None or not c[5][2]]  # not dropped for their region
    if not candidates:
        return None
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(len(candidates), 4 * opts["stain_fit_tiles"])).astype(int))
    sample = []
    for k in pick:
        i, j, x, y, _, _ = candidates[k]
        tile = reader.read(i, j, x, y)
        if not qc.reject_reason(qc.tile_scores(tile, opts["whitespace_threshold"], opts["grayspace_threshold"]), opts):
            sample.append(tile)
        if len(sample) >= opts["stain_fit_tiles"]:
            break
    if not sample:
        return None
    norm.fit_slide(np.stack(sample), slide_id)
    log.info("%s: %s stain normalisation fitted on %d tiles", slide_id, opts["stain_norm"], len(sample))
    return norm


def _write_thumbnail(thumb, mask, df, mds, stride0, out, roi=None):
    img = Image.fromarray(thumb).convert("RGB")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    m = Image.fromarray((~mask).astype(np.uint8) * 90)
    overlay.paste(Image.new("RGBA", img.size, (0, 0, 60, 255)), mask=m)
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    if roi is not None:
        from histosynth.slides.roi import draw_regions

        img = draw_regions(img, roi, mds)
    d = ImageDraw.Draw(img)
    s = stride0 / mds
    for x, y, reason in zip(df["x"], df["y"], df["reject_reason"]):
        d.rectangle([x / mds, y / mds, x / mds + s - 1, y / mds + s - 1], outline=REASON_COLOURS.get(reason, (255, 0, 0)))
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
