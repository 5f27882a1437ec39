"""Toy tiles of two visually different classes, written to a real tile store."""
import numpy as np
import pandas as pd

from histosynth.slides.store import TileStoreWriter


def toy_tiles(n_per_class=128, px=16, seed=0):
    rng = np.random.default_rng(seed)
    out, labels = [], []
    yy, xx = np.mgrid[0:px, 0:px]
    for label in ("dark", "light"):
        for _ in range(n_per_class):
            phase = rng.uniform(0, 2 * np.pi)
            if label == "dark":  # purple, horizontal stripes
                base = np.array([110, 60, 150]) + 40 * np.sin(yy * 1.2 + phase)[..., None]
            else:  # pale pink, vertical stripes
                base = np.array([235, 170, 200]) + 20 * np.sin(xx * 1.2 + phase)[..., None]
            out.append(np.clip(base + rng.normal(0, 6, (px, px, 3)), 0, 255).astype(np.uint8))
            labels.append(label)
    return np.stack(out), np.array(labels)


def toy_index(tmp_path, n_per_class=128, px=16, seed=0):
    tiles, labels = toy_tiles(n_per_class, px, seed)
    store = tmp_path / "toy.tiff"
    with TileStoreWriter(store) as w:
        pages = [w.append(t) for t in tiles]
    return pd.DataFrame({"slide_id": "toy", "patient_id": [f"p{i % 8}{lab}" for i, lab in enumerate(labels)],
                         "label": labels, "page": pages, "store": str(store), "tile_px": px, "tile_um": 32.0,
                         "mpp": 2.0, "kept": True, "partition": "train"}), tiles, labels
