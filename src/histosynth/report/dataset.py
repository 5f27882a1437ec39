"""Dataset writers of the export (histosynth export). Each takes the tiles' index (rows: store,
page, and the metadata columns kept in the dataset) and writes into an empty folder; the tiles
are read from their stores `chunk` at a time, so a large run never sits in memory at once.

* ``imagefolder``: ``<label>/<name>.png`` per tile and ``metadata.csv`` (``file_name`` relative
  to the folder, then the metadata columns), the layout torchvision's ImageFolder and Hugging
  Face's ``imagefolder`` loader read.
* ``webdataset``: tar shards ``<prefix>-NNNNNN.tar`` of at most ``shard_size`` samples, each
  sample ``<key>.png``, ``<key>.json`` (its metadata) and ``<key>.cls`` (the class index).
* ``hdf5``: one file ``<prefix>.h5``: ``images`` (N, H, W, 3) uint8 (gzip, one chunk per
  tile), ``labels`` (class index), ``classes`` and a dataset per metadata column under
  ``metadata/``; the card as the file's ``card`` attribute (JSON).
"""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from histosynth.slides.store import load_tiles

FORMATS = ("imagefolder", "webdataset", "hdf5")


def _chunks(index: pd.DataFrame, chunk: int, progress: bool, desc: str):
    for s in tqdm(range(0, len(index), chunk), desc=desc, disable=not progress, unit="chunk"):
        part = index.iloc[s:s + chunk]
        yield s, part, load_tiles(part)


def _png(tile: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _safe(name) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("_") or "unnamed"


def _jsonable(v):
    if isinstance(v, np.generic):
        return v.item()
    return None if isinstance(v, float) and np.isnan(v) else v


def write_imagefolder(index: pd.DataFrame, meta_cols: list, classes: list, out: Path, prefix: str,
                      chunk: int = 512, progress: bool = True) -> list:
    rows = []
    for s, part, tiles in _chunks(index, chunk, progress, "imagefolder"):
        for i, (tile, (_, r)) in enumerate(zip(tiles, part.iterrows())):
            label = _safe(r["label"]) if "label" in part.columns else "tiles"
            rel = f"{label}/{prefix}-{s + i:08d}.png"
            (out / label).mkdir(parents=True, exist_ok=True)
            (out / rel).write_bytes(_png(tile))
            rows.append({"file_name": rel, **{c: r[c] for c in meta_cols}})
    pd.DataFrame(rows, columns=["file_name", *meta_cols]).to_csv(out / "metadata.csv", index=False)
    return ["metadata.csv", *sorted({r["file_name"].split("/")[0] + "/" for r in rows})]


def write_webdataset(index: pd.DataFrame, meta_cols: list, classes: list, out: Path, prefix: str,
                     shard_size: int = 1000, chunk: int = 512, progress: bool = True) -> list:
    import webdataset as wds

    pattern = str(out / f"{prefix}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=shard_size, verbose=0) as sink:
        for s, part, tiles in _chunks(index, chunk, progress, "webdataset"):
            for i, (tile, (_, r)) in enumerate(zip(tiles, part.iterrows())):
                meta = {c: _jsonable(r[c]) for c in meta_cols}
                sample = {"__key__": f"{s + i:08d}", "png": _png(tile), "json": json.dumps(meta).encode()}
                if "label" in part.columns:
                    sample["cls"] = str(classes.index(str(r["label"]))).encode()
                sink.write(sample)
    return sorted(p.name for p in out.glob(f"{prefix}-*.tar"))


def write_hdf5(index: pd.DataFrame, meta_cols: list, classes: list, out: Path, prefix: str, card: dict,
               chunk: int = 512, progress: bool = True) -> list:
    import h5py

    n = len(index)
    first = load_tiles(index.iloc[:1])
    h, w = first.shape[1:3]
    name = f"{prefix}.h5"
    with h5py.File(out / name, "w") as f:
        images = f.create_dataset("images", (n, h, w, 3), dtype="uint8", chunks=(1, h, w, 3), compression="gzip")
        for s, _, tiles in _chunks(index, chunk, progress, "hdf5"):
            images[s:s + len(tiles)] = tiles
        if "label" in index.columns:
            f.create_dataset("labels", data=np.array([classes.index(str(v)) for v in index["label"]], np.int64))
        f.create_dataset("classes", data=np.array(classes, dtype=object), dtype=h5py.string_dtype())
        g = f.create_group("metadata")
        for c in meta_cols:
            col = index[c]
            if pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
                g.create_dataset(c, data=col.to_numpy())
            else:
                g.create_dataset(c, data=col.astype(str).to_numpy().astype(object), dtype=h5py.string_dtype())
        f.attrs["card"] = json.dumps(card)
    return [name]
