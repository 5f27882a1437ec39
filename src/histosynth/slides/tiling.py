"""Cut one slide into tiles of a fixed field of view (µm) and size (px), with QC.

1. Tissue mask on a low-resolution level (``slides.qc.tissue_mask``).
2. A grid of tiles with a level-0 stride of ``tile_um / mpp`` px; positions whose footprint in
   the mask is less than ``min_tissue_fraction`` tissue are skipped without being decoded.
3. Each remaining tile is read at the coarsest level still at least as fine as needed and
   resized with an antialiasing (Lanczos) filter to ``tile_px``; QC scores decide if it is kept.
4. Kept tiles go to the slide's tile store, every evaluated position to the index, and a QC
   thumbnail shows the mask and kept / rejected tiles.
"""
from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from histosynth.slides import qc
from histosynth.slides.reader import choose_level, open_slide, slide_mpp
from histosynth.slides.store import TileStoreWriter, write_index
from histosynth.utils import UserError, atomic_path

log = logging.getLogger(__name__)
REASON_COLOURS = {"": (0, 170, 0), "pen": (0, 90, 255), "whitespace": (150, 150, 150),
                  "grayspace": (120, 120, 120), "blur": (255, 140, 0), "max_tiles": (200, 200, 0)}


def _mask_level(slide, max_dim: int = 2048) -> int:
    for lvl in range(slide.level_count):
        if max(slide.level_dimensions[lvl]) <= max_dim:
            return lvl
    return slide.level_count - 1


def grid_positions(dims0, stride0: float):
    """Top-left level-0 coordinates of every whole tile on a grid of `stride0` px."""
    w, h = dims0
    nx, ny = int(w // stride0), int(h // stride0)
    xs = np.round(np.arange(nx) * stride0).astype(int)
    ys = np.round(np.arange(ny) * stride0).astype(int)
    return [(x, y) for y in ys for x in xs]


def tile_slide(path, slide_id: str, out_store, out_index, out_thumb, opts: dict, *, patient_id: str = "",
               label: str = "", mpp_override: float | None = None, threads: int = 1, progress: bool = True) -> pd.DataFrame:
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

    mlevel = _mask_level(slide)
    mds = float(slide.level_downsamples[mlevel])
    try:
        thumb = np.asarray(slide.read_region((0, 0), mlevel, slide.level_dimensions[mlevel]).convert("RGB"))
    except Exception as exc:  # openslide raises its own errors for corrupt tiles
        raise UserError(f"slide {slide_id}: cannot decode {path} ({exc}); the file is probably corrupt or truncated") from None
    mask = qc.tissue_mask(thumb, opts["tissue"], opts["tissue_min_saturation"])

    candidates = []
    for x, y in grid_positions((w0, h0), choice.stride0):
        mx0, my0 = int(x / mds), int(y / mds)
        mx1, my1 = max(mx0 + 1, int((x + choice.stride0) / mds)), max(my0 + 1, int((y + choice.stride0) / mds))
        frac = float(mask[my0:my1, mx0:mx1].mean()) if mask[my0:my1, mx0:mx1].size else 0.0
        if frac >= opts["min_tissue_fraction"]:
            candidates.append((x, y, frac))

    local = threading.local()

    def read(pos):
        if not hasattr(local, "slide"):
            local.slide = open_slide(path, slide_id)
        x, y, frac = pos
        img = local.slide.read_region((x, y), choice.level, (choice.read_px, choice.read_px)).convert("RGB")
        if choice.read_px != tile_px:
            img = img.resize((tile_px, tile_px), Image.Resampling.LANCZOS)
        tile = np.asarray(img)
        return tile, qc.tile_scores(tile, opts["whitespace_threshold"], opts["grayspace_threshold"])

    rows = []
    meta = dict(slide_id=slide_id, tile_px=tile_px, tile_um=tile_um, mpp=tile_um / tile_px)
    max_tiles = opts.get("max_tiles_per_slide")
    n_kept = 0
    with TileStoreWriter(out_store, meta) as writer, ThreadPoolExecutor(max(1, threads)) as pool:
        it = pool.map(read, candidates)
        for (x, y, frac), (tile, scores) in tqdm(zip(candidates, it), total=len(candidates), desc=slide_id,
                                                 unit="tile", disable=not progress):
            reason = qc.reject_reason(scores, opts)
            if not reason and max_tiles and n_kept >= max_tiles:
                reason = "max_tiles"
            page = -1
            if not reason:
                page = writer.append(tile)
                n_kept += 1
            rows.append(dict(slide_id=slide_id, patient_id=patient_id, label=label, page=page, x=x, y=y,
                             level=choice.level, downsample=choice.downsample, mpp=tile_um / tile_px,
                             tile_px=tile_px, tile_um=tile_um, tissue_fraction=frac, **scores,
                             kept=not reason, reject_reason=reason))
    cols = ["slide_id", "patient_id", "label", "page", "x", "y", "level", "downsample", "mpp", "tile_px", "tile_um",
            "tissue_fraction", "whitespace_fraction", "grayspace_fraction", "blur", "pen_fraction", "mean_od",
            "kept", "reject_reason"]
    df = pd.DataFrame(rows, columns=cols)
    df["store"] = str(out_store)
    write_index(df, out_index)
    _write_thumbnail(thumb, mask, df, mds, choice.stride0, out_thumb)
    if n_kept == 0:
        log.warning("%s: ZERO tiles kept (%d candidate positions); it is listed in the report", slide_id, len(candidates))
    log.info("%s: %d tiles kept of %d tissue positions (level %d, %.3f µm/px read, %d px -> %d px)", slide_id,
             n_kept, len(candidates), choice.level, choice.level_mpp, choice.read_px, tile_px)
    return df


def _write_thumbnail(thumb, mask, df, mds, stride0, out):
    img = Image.fromarray(thumb).convert("RGB")
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    m = Image.fromarray((~mask).astype(np.uint8) * 90)
    overlay.paste(Image.new("RGBA", img.size, (0, 0, 60, 255)), mask=m)
    img = Image.alpha_composite(img.convert("RGBA"), overlay).convert("RGB")
    d = ImageDraw.Draw(img)
    s = stride0 / mds
    for x, y, reason in zip(df["x"], df["y"], df["reject_reason"]):
        d.rectangle([x / mds, y / mds, x / mds + s - 1, y / mds + s - 1], outline=REASON_COLOURS.get(reason, (255, 0, 0)))
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG")
