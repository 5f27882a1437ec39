"""Opening slides: OpenSlide for whole-slide formats, libvips for plain images (a striped TIFF,
PNG or JPEG opens as a one-level pyramid); resolution (µm per pixel) and pyramid level choice."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from histosynth.utils import UserError


@dataclass(frozen=True)
class LevelChoice:
    level: int
    downsample: float  # level-0 pixels per level pixel
    level_mpp: float  # µm per pixel at that level
    read_px: int  # pixels read at that level for one tile
    stride0: float  # level-0 pixels per tile (the field of view)


FORMATS_READ = ("whole-slide formats through OpenSlide (Aperio SVS, Hamamatsu, Leica SCN, MIRAX, Philips TIFF, "
                "Sakura, Trestle, Ventana, DICOM, generic tiled TIFF) and plain images through libvips (striped or "
                "tiled TIFF, PNG, JPEG; give their µm per pixel in the manifest's mpp column or tiles.mpp_override)")

_MAGIC = [(b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF file"),
          (b"MM\x00*", "a TIFF file"), (b"II+\x00", "a BigTIFF file"), (b"MM\x00+", "a BigTIFF file"),
          (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"),
          (b"<", "an HTML or XML document (an error page saved as the file?)"), (b"{", "a JSON document")]


def describe_file(path) -> str:
    """What a file looks like from its first bytes, for error messages."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        return f"unreadable ({exc})"
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.lstrip()[: len(magic)] == magic:
            return what
    return "of an unknown format"


class PlainImage:
    """A plain image opened with libvips, with the part of OpenSlide's interface tiling uses:
    one level, ``read_region`` (RGBA, transparent outside the image) and ``properties`` (its
    µm per pixel when the file records a resolution)."""

    def __init__(self, path):
        import pyvips

        img = pyvips.Image.new_from_file(str(path), access="random")
        if img.format not in ("uchar", "char"):
            img = img.colourspace("srgb") if img.interpretation in ("rgb16", "grey16") else img.cast("uchar")
        if img.bands in (1, 2):
            img = img.extract_band(0).colourspace("srgb") if img.bands == 2 else img.colourspace("srgb")
        self._img = img.extract_band(0, n=3).cast("uchar")
        w, h = self._img.width, self._img.height
        self.level_count, self.level_dimensions, self.level_downsamples = 1, ((w, h),), (1.0,)
        self.properties = {"openslide.vendor": "plain image (libvips)", "histosynth.loader": img.get("vips-loader")}
        if img.xres > 0:
            self.properties["openslide.mpp-x"] = str(1000.0 / img.xres)  # libvips keeps px per mm

    def read_region(self, location, level, size):
        from PIL import Image

        (x, y), (w, h) = location, size
        out = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self._img.width, x + w), min(self._img.height, y + h)
        if x1 > x0 and y1 > y0:
            crop = self._img.crop(x0, y0, x1 - x0, y1 - y0)
            arr = np.ndarray((y1 - y0, x1 - x0, 3), np.uint8, crop.write_to_memory())
            out.paste(Image.fromarray(arr).convert("RGBA"), (x0 - x, y0 - y))
        return out

    def close(self):
        self._img = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_any(path):
    """An OpenSlide slide, else a PlainImage; raises the problem found (for messages)."""
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        pass
    import pyvips

    try:
        return PlainImage(path)
    except pyvips.Error as exc:
        raise ValueError(str(exc).strip().splitlines()[0] if str(exc).strip() else "libvips cannot read it") from None


def open_slide(path, slide_id: str | None = None):
    import openslide

    label = slide_id or Path(path).name
    if not Path(path).exists():
        raise UserError(f"slide {label}: file {path} does not exist")
    try:
        return open_any(path)
    except ValueError:
        raise UserError(f"slide {label}: {path} is {describe_file(path)} that neither OpenSlide nor libvips can read "
                        f"(corrupt, truncated, or not an image). histosynth reads {FORMATS_READ}. Replace the file "
                        f"or drop it from the manifest.") from None
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
    """None if `path` opens as a slide (OpenSlide) or plain image (libvips) and a patch of its
    lowest-resolution level decodes, else what the file is and why it cannot be read."""
    try:
        with open_any(path) as s:
            lvl = s.level_count - 1
            w, h = s.level_dimensions[lvl]
            s.read_region((0, 0), lvl, (min(w, 64), min(h, 64)))
    except Exception as exc:  # openslide raises several unrelated types for bad files
        return (f"the file is {describe_file(path)} that cannot be read as a slide or image ({type(exc).__name__}: "
                f"{exc}); histosynth reads {FORMATS_READ}")
    return None
