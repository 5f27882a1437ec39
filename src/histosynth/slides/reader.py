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


def slide_mpp(slide, slide_id: str, override: float | None = None) -> float:
    """µm per level-0 pixel: the slide's own (``openslide.mpp-x``), else `override`, else a clear error."""
    if override:
        return float(override)
    props = slide.properties
    for key in ("openslide.mpp-x", "aperio.MPP"):
        if props.get(key):
            try:
                v = float(props[key])
            except ValueError:
                continue
            if v > 0:
                return v
    raise UserError(f"slide {slide_id}: the file records no microns-per-pixel (no openslide.mpp-x). "
                    f"Tiles are cut by field of view in µm, so the scale must be known: set "
                    f"tiles.mpp_override in the config, or an 'mpp' column for this slide in the manifest.")


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
