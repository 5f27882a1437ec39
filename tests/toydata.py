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


TOY_COLOURS = np.array([[245, 245, 245], [230, 140, 200], [70, 40, 140]])  # background, stroma, nuclei


def toy_maps(n, px=32, seed=0):
    """Random layouts: a stroma field with a lumen (background disc) and nuclei (small discs)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:px, 0:px]
    maps = np.ones((n, px, px), np.uint8)
    for m in maps:
        cy, cx, r = rng.uniform(0, px, 2).tolist() + [rng.uniform(px / 8, px / 3)]
        m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 0
        for _ in range(rng.integers(2, 6)):
            cy, cx, r = rng.uniform(0, px, 2).tolist() + [rng.uniform(px / 16, px / 8)]
            m[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = 2
    return maps


def toy_mask_index(tmp_path, n=256, px=32, seed=0, partition_test=0.25):
    """A mask index: tiles painted from random layouts (H&E-like colours + noise) and their maps."""
    from histosynth.masks.build import write_map_store
    from histosynth.masks.labels import AUTO_LABELS, LabelSet

    rng = np.random.default_rng(seed + 1)
    maps = toy_maps(n, px, seed)
    tiles = np.clip(TOY_COLOURS[maps] + rng.normal(0, 8, maps.shape + (3,)), 0, 255).astype(np.uint8)
    store, mstore = tmp_path / "toy_masks.tiff", tmp_path / "toy_masks.labels.tiff"
    with TileStoreWriter(store) as w:
        for t in tiles:
            w.append(t)
    write_map_store(maps, mstore, LabelSet.from_config(AUTO_LABELS))
    patients = [f"p{i % 16}" for i in range(n)]
    part = ["test" if int(p[1:]) < 16 * partition_test else "train" for p in patients]
    return pd.DataFrame({"slide_id": "toy", "patient_id": patients, "label": ["a", "b"] * (n // 2), "page": np.arange(n),
                         "store": str(store), "tile_px": px, "tile_um": px * 2.0, "mpp": 2.0, "kept": True,
                         "partition": part, "mask_store": str(mstore), "mask_page": np.arange(n)}), tiles, maps
