"""Features cached per tile store, so metrics are not recomputed.

One file per (extractor, store): ``<cache_dir>/<extractor id>/<sha1 of the store path>.npz``
holding the pages seen so far and their features, and the store's size and mtime. A store
rewritten since (a re-tiled slide, a re-generated condition) invalidates its file; a request
for pages not yet cached computes only those. The extractor id names the network *and* its
weights (a hash of the checkpoint), so a retrained reference classifier never reuses stale
features. Files are written atomically; two jobs filling the same file both write valid
data (the last rename wins)."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.slides.store import load_tiles
from histosynth.utils import atomic_path, file_hash


def file_digest(path, n=12) -> str:
    return file_hash(path, "sha1")[:n]


def _signature(store: Path) -> np.ndarray:
    st = store.stat()
    return np.array([st.st_size, st.st_mtime_ns], np.int64)


def cached_features(index: pd.DataFrame, extractor_id: str, compute, cache_dir=None, write: bool = True) -> np.ndarray:
    """Features of the tiles named by `index` (rows: `store`, `page`), in index order.
    `compute(tiles_uint8) -> (n, d) array`. Without `cache_dir`, computes everything; with
    `write` false the cache is only read (the workflow's evaluation rules: the features rule
    owns the folder)."""
    if cache_dir is None:
        return compute(load_tiles(index))
    index = index.reset_index(drop=True)
    out: list = [None] * len(index)
    for store, grp in index.groupby("store", sort=False):
        store = Path(store)
        f = Path(cache_dir) / extractor_id / (hashlib.sha1(str(store.resolve()).encode()).hexdigest() + ".npz")
        sig = _signature(store)
        cached: dict = {}
        if f.exists():
            with np.load(f) as z:
                if np.array_equal(z["signature"], sig):
                    cached = dict(zip(z["pages"].tolist(), z["features"]))
        pages = grp["page"].astype(int).to_numpy()
        need = sorted(set(pages.tolist()) - set(cached))
        if need:
            sub = grp[grp["page"].astype(int).isin(need)].drop_duplicates("page")
            feats = compute(load_tiles(sub))
            cached.update(zip(sub["page"].astype(int).tolist(), feats))
        if need and write:
            f.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(cached)
            with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, pages=np.array(keys, np.int64), features=np.stack([cached[k] for k in keys]),
                         signature=sig)
        for i, p in zip(grp.index, pages):
            out[i] = cached[int(p)]
    return np.stack(out) if out else np.zeros((0, 0))
