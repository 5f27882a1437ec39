"""The split stage's command (``histosynth split``): patients into partitions, every tile indexed."""
from __future__ import annotations

import logging

log = logging.getLogger("histosynth")


def split(opts: dict, sheet, indexes, out_split, out_tiles):
    import pandas as pd

    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.slides.store import read_index, write_index
    from histosynth.split.patients import assign_tiles, split_patients, tile_label_sheet
    from histosynth.split.sites import site_table, split_by_site
    from histosynth.utils import atomic_path

    sheet = read_sample_sheet(sheet)
    tiles = pd.concat([read_index(p) for p in indexes], ignore_index=True)
    strata = tile_label_sheet(sheet, tiles)  # the sheet itself unless tiles carry region labels
    if not strata[["slide_id", "label"]].equals(sheet[["slide_id", "label"]].reset_index(drop=True)):
        log.info("patients stratified by their tiles' labels (annotated regions): %s",
                 strata.groupby("label")["patient_id"].nunique().to_dict())
    if opts["preserve_site"]:
        parts = split_by_site(strata, opts["test_fraction"], opts["val_fraction"])
        log.info("site-preserved split (patients per site, partition and class):\n%s",
                 site_table(parts).to_string(index=False))
    else:
        parts = split_patients(strata, opts["test_fraction"], opts["val_fraction"], opts["seed"])
    extra = [c for c in sheet.columns if c not in tiles.columns and c not in ("source", "md5", "size", "path")]
    if extra:
        tiles = tiles.merge(sheet[["slide_id"] + extra], on="slide_id", how="left")
    if "site" in parts.columns and "site" not in tiles.columns:
        tiles = tiles.merge(parts[["patient_id", "site"]], on="patient_id", how="left")
    tiles = assign_tiles(tiles, parts)
    with atomic_path(out_split) as tmp:
        parts.to_csv(tmp, sep="\t", index=False)
    write_index(tiles, out_tiles)
    kept = tiles[tiles["kept"]]
    log.info("split: %s patients; kept tiles per partition %s", parts["partition"].value_counts().to_dict(),
             kept["partition"].value_counts().to_dict())


def folds(opts: dict, split, tiles, out_folds, outdir, folds):
    """``histosynth folds``: patients into `folds` cross-validation folds (site-preserved with
    split.preserve_site), written to `out_folds`, and each fold's tiles to outdir/<i>/tiles.parquet."""
    from pathlib import Path

    import pandas as pd

    from histosynth.slides.store import read_index, write_index
    from histosynth.split.folds import assign_folds, fold_table, fold_tiles
    from histosynth.utils import atomic_path

    table = pd.read_csv(split, sep="\t", dtype=str, keep_default_na=False)
    assigned = assign_folds(table, folds, opts["seed"], opts["preserve_site"])
    log.info("%d folds (%s); patients per fold and class:\n%s", folds,
             "site-preserved" if opts["preserve_site"] else "stratified by label", fold_table(assigned).to_string(index=False))
    index = read_index(tiles)
    for i in range(folds):
        write_index(fold_tiles(index, assigned, i), Path(outdir) / str(i) / "tiles.parquet")
    with atomic_path(out_folds) as tmp:
        assigned.to_csv(tmp, sep="\t", index=False)
