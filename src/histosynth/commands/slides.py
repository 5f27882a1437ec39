"""The tiling stage's command (``histosynth tile``)."""
from __future__ import annotations

import logging

log = logging.getLogger("histosynth")


def tile(opts: dict, sheet, slide_id, store, index, thumb, slide=None, threads=1, progress=True):
    from histosynth.acquire.manifest import sheet_row
    from histosynth.slides.tiling import tile_slide

    row = sheet_row(sheet, slide_id)
    mpp = float(row["mpp"]) if "mpp" in row and str(row["mpp"]).strip() else None
    tile_slide(slide or row["path"], slide_id, store, index, thumb, opts, patient_id=row["patient_id"],
               label=row["label"], mpp_override=mpp, threads=threads, progress=progress)
