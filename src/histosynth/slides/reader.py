"""Opening slides with OpenSlide: resolution (µm per pixel) and pyramid level choice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from histosynth.utils import UserError


@dataclass(frozen=True)
class LevelChoice:
    level: int
    downsample: float  # level-0 pixels per level pixel
    level_mpp: float  # µm per pixel at that level
    read_px: int  # pixels read at that level for one tile
    stride0: float  # level-0 pixels per tile (the field of view)


def open_slide(path, slide_id: str | None = None):
    import openslide

    label = slide_id or Path(path).name
    if not Path(path).exists():
        raise UserError(f"slide {label}: file {path} does not exist")
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        raise UserError(f"slide {label}: {path} is not a slide format OpenSlide can read (corrupt, truncated "
                        f"or not a WSI). Re-download it (delete it and re-run its download job) or drop it "
                        f"from the manifest.") from None
    except openslide.OpenSlideError as exc:
        raise UserError(f"slide {label}: OpenSlide cannot read {path}: {exc}. The file is probably corrupt "
                        f"or truncated; re-download it.") from None


MPP_RANGE = (0.05, 20.0)  # µm per level-0 pixel of any real scanner (40x is about 0.25, 5x about 2)


def slide_mpp(slide, slide_id: str, override: float | None = None, fallback: float | None = None) -> float:
    """µm per level-0 pixel: `override` (a per-slide value) if given, else the slide's own
    (``openslide.mpp-x``) if plausible, else `fallback` (``tiles.mpp_override``), else a clear error.

    A recorded value outside 0.05-20 µm/px is treated as missing: libvips, for one, writes
    1 pixel/mm (1000 µm/px) into TIFFs whose resolution it does not know."""
    if override:
        return float(override)
    recorded = None
    for key in ("openslide.mpp-x", "aperio.MPP"):
        try:
            recorded = float(slide.properties.get(key) or "nan")
        except ValueError:
            continue
        if recorded == recorded:
            break
    if recorded is not None and MPP_RANGE[0] <= recorded <= MPP_RANGE[1]:
        return recorded
    if fallback:
        return float(fallback)
    what = ("records no microns-per-pixel (no openslide.mpp-x)" if recorded is None or recorded != recorded
            else f"records an implausible {recorded:g} µm/px (libvips writes 1 px/mm when it knows none)")
    raise UserError(f"slide {slide_id}: the file {what}. Tiles are cut by field of view in µm, so the scale must be "
                    f"known: set tiles.mpp_override in the config, or an 'mpp' column for this slide in the manifest.")


def choose_level(slide, mpp0: float, tile_um: float, tile_px: int) -> LevelChoice:
    """The coarsest level whose resolution is still at least as fine as the target
    (``tile_um / tile_px`` µm per pixel), so that tiles are only ever downsampled."""
    target = tile_um / tile_px
    best = 0
    for lvl, ds in enumerate(slide.level_downsamples):
        if mpp0 * ds <= target * 1.001:
            best = lvl if ds >= slide.level_downsamples[best] else best
    ds = float(slide.level_downsamples[best])
    level_mpp = mpp0 * ds
    read_px = max(1, int(round(tile_um / level_mpp)))
    return LevelChoice(best, ds, level_mpp, read_px, tile_um / mpp0)


def openslide_problem(path) -> str | None:
    """None if OpenSlide opens `path` and can read its lowest-resolution level, else the problem."""
    import openslide

    try:
        with openslide.OpenSlide(str(path)) as s:
            lvl = s.level_count - 1
            w, h = s.level_dimensions[lvl]
            s.read_region((0, 0), lvl, (min(w, 64), min(h, 64)))
    except Exception as exc:  # openslide raises several unrelated types for bad files
        return f"OpenSlide cannot open it ({type(exc).__name__}: {exc})"
    return None
