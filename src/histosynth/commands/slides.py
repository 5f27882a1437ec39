"""The tiling stage's command (``histosynth tile``)."""
from __future__ import annotations

import logging

log = logging.getLogger("histosynth")


def tile(opts: dict, sheet, slide_id, store, index, thumb, slide=None, roi=None, threads=1, progress=True):
    from histosynth.acquire.manifest import sheet_row
    from histosynth.slides.roi import region_file
    from histosynth.slides.tiling import tile_slide
    from histosynth.utils import UserError

    row = sheet_row(sheet, slide_id)
    mpp = float(row["mpp"]) if "mpp" in row and str(row["mpp"]).strip() else None
    path = slide or row["path"]
    roi_dir = opts["roi"]["dir"]
    if roi is None and roi_dir is not None:
        roi = region_file(roi_dir, slide_id, path)
        if roi is None and opts["roi"]["require"]:
            raise UserError(f"slide {slide_id}: no QuPath export {slide_id}.geojson in {roi_dir} (tiles.roi.require "
                            f"is true); export its annotations (File > Export objects as GeoJSON), or set "
                            f"tiles.roi.require: false to tile slides without one whole")
        if roi is None:
            log.info("%s: no region file in %s; the whole slide is tiled", slide_id, roi_dir)
    tile_slide(path, slide_id, store, index, thumb, opts, patient_id=row["patient_id"], label=row["label"],
               mpp_override=mpp, threads=threads, progress=progress, roi_file=roi)
