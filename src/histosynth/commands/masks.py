"""The label-map stages' commands: the colour segmenter, label maps per slide, the mask index,
PanNuke import (``histosynth fit-segmenter | label-maps | mask-index | import-pannuke``)."""
from __future__ import annotations

import logging
from pathlib import Path

from histosynth.utils import UserError

log = logging.getLogger("histosynth")


def fit_segmenter(masks: dict, tiles, out):
    from histosynth.masks.colour import ColourSegmenter
    from histosynth.slides.store import load_tiles, read_index

    index = read_index(tiles)
    train = index[index["kept"] & (index["partition"] == "train")]
    if len(train) == 0:
        raise UserError(f"{tiles}: no kept training tiles to fit the colour segmenter on")
    pick = train.sample(min(len(train), masks["auto"]["fit_tiles"]), random_state=0)
    seg = ColourSegmenter(masks["auto"]["background_od"], median=masks["auto"]["median"]).fit(load_tiles(pick))
    seg.save(out)
    log.info("colour segmenter: haematoxylin threshold %.4f from %d tissue pixels of %d training tiles",
             seg.nuclei_h, seg.n_fit_pixels, len(pick))


def label_maps(masks: dict, tiles, slide_id, store, index, segmenter=None, annotations=None, progress=True):
    from histosynth.masks.build import slide_label_maps
    from histosynth.masks.labels import LabelSet
    from histosynth.slides.store import read_index

    seg = None
    if masks["source"] == "auto":
        from histosynth.masks.colour import ColourSegmenter

        if not segmenter:
            raise UserError("masks.source auto: give --segmenter (results/masks/segmenter.json from fit-segmenter)")
        seg = ColourSegmenter.load(segmenter)
    slide_label_maps(read_index(tiles), slide_id, masks["source"], LabelSet.from_config(masks["labels"]), store, index,
                     segmenter=seg, annotations=annotations, class_map=masks["geojson_classes"], progress=progress)


def mask_index(indexes, out):
    import pandas as pd

    from histosynth.slides.store import read_index, write_index

    df = pd.concat([read_index(p) for p in indexes], ignore_index=True)
    if len(df) == 0:
        raise UserError("no tile has a label map (see logs/label_maps/): nothing for the mask run to train on")
    write_index(df, out)
    log.info("mask index: %d tiles with label maps; per partition %s", len(df), df["partition"].value_counts().to_dict())


def import_pannuke(masks: dict, out, progress=True):
    from histosynth.masks.pannuke import import_pannuke as read_folds

    if not masks["pannuke"]["folds"]:
        raise UserError("masks.pannuke.folds is empty: name each PanNuke fold folder and its partition")
    df = read_folds(masks["pannuke"]["folds"], Path(out).parent, masks["pannuke"]["mpp"], progress=progress)
    log.info("PanNuke: %d tiles; per partition %s", len(df), df["partition"].value_counts().to_dict())
