"""Label-map stores: one multi-page TIFF per slide, page i the label map of tile-store page i,
plus an index (the slide's kept tiles with ``mask_store``, ``mask_page`` and the fraction of
each class). Sources: the colour segmenter (``auto``) or QuPath GeoJSON (``geojson``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.masks.labels import LabelSet
from histosynth.slides.store import TileStoreWriter, load_tiles, write_index
from histosynth.utils import UserError

log = logging.getLogger(__name__)


def write_map_store(maps, path, labels: LabelSet, meta: dict | None = None) -> None:
    with TileStoreWriter(path, {"label_map": True, "labels": labels.to_config(), **(meta or {})}) as w:
        for m in maps:
            w.append(np.ascontiguousarray(m, np.uint8))


def class_fractions(maps: np.ndarray, labels: LabelSet) -> dict:
    n = max(1, maps.shape[-1] * maps.shape[-2])
    counts = np.stack([np.bincount(m.ravel(), minlength=len(labels))[: len(labels)] for m in maps]) if len(maps) \
        else np.zeros((0, len(labels)))
    return {f"frac_{name}": counts[:, i] / n for i, name in enumerate(labels.names)}


def slide_label_maps(tiles: pd.DataFrame, slide_id: str, source: str, labels: LabelSet, out_store, out_index,
                     segmenter=None, annotations=None, class_map=None, batch: int = 256, progress=True) -> pd.DataFrame:
    """Label maps of one slide's kept tiles (rows of the split tile index) -> store + index."""
    from tqdm import tqdm

    rows = tiles[(tiles["slide_id"] == slide_id) & tiles["kept"]].sort_values("page").reset_index(drop=True)
    if source == "geojson":
        from histosynth.masks.geojson import read_annotations, tile_maps

        if annotations is None or not Path(annotations).is_file():
            log.warning("%s: no annotation file (%s); its tiles get no label maps and take no part in the mask run",
                        slide_id, annotations)
            rows = rows.iloc[:0]
            shapes = []
        else:
            shapes = read_annotations(annotations, labels, class_map)
            log.info("%s: %d annotation polygons", slide_id, len(shapes))
    elif source == "auto":
        if segmenter is None:
            raise UserError("masks.source auto needs the fitted segmenter (results/masks/segmenter.json)")
    else:
        raise UserError(f"masks.source {source!r}: label maps per slide come from auto or geojson (pannuke is imported "
                        f"with import-pannuke)")
    maps = []
    for i in tqdm(range(0, len(rows), batch), desc=slide_id, unit="batch", disable=not progress):
        part = rows.iloc[i:i + batch]
        maps.append(segmenter.segment(load_tiles(part)) if source == "auto" else tile_maps(part, shapes))
    px = int(tiles["tile_px"].iloc[0]) if len(tiles) else 1
    maps = np.concatenate(maps) if maps else np.zeros((0, px, px), np.uint8)
    if source == "geojson" and len(maps):
        annotated = maps.reshape(len(maps), -1).max(1) > 0  # tiles outside every annotation carry no layout
        rows, maps = rows[annotated].reset_index(drop=True), maps[annotated]
    write_map_store(maps, out_store, labels, {"slide_id": slide_id, "source": source})
    rows["mask_store"] = str(out_store)
    rows["mask_page"] = np.arange(len(rows))
    for k, v in class_fractions(maps, labels).items():
        rows[k] = v
    write_index(rows, out_index)
    log.info("%s: %d label maps (%s)", slide_id, len(rows), source)
    return rows


def load_maps(index: pd.DataFrame) -> np.ndarray:
    """Label maps named by an index's mask_store / mask_page, in index order."""
    return load_tiles(pd.DataFrame({"store": index["mask_store"].to_numpy(), "page": index["mask_page"].to_numpy()}))
