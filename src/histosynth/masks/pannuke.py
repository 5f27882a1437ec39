"""PanNuke (Gamper et al., 2019/2020) as paired tiles and label maps.

Each PanNuke fold holds ``images.npy`` (N, 256, 256, 3; float 0-255), ``masks.npy``
(N, 256, 256, 6: instance ids of neoplastic, inflammatory, connective, dead and epithelial
nuclei, then a background channel) and ``types.npy`` (the tissue of each image). A pixel's
class is the nucleus type whose channel holds an instance there, else background.

PanNuke publishes no patient identifiers: its three folds are the unit the authors split by,
so a fold stands in for the patient group here (``patient_id`` = the fold's name) and the
partition of each fold is given in the config (``masks.pannuke.partitions``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from histosynth.masks.build import class_fractions, write_map_store
from histosynth.masks.labels import PANNUKE_LABELS, LabelSet
from histosynth.slides.store import TileStoreWriter, write_index
from histosynth.utils import UserError

log = logging.getLogger(__name__)
FOLD_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")

def pannuke_label_map(mask: np.ndarray) -> np.ndarray:
    """(H, W, 6) PanNuke mask -> (H, W) class indices into PANNUKE_LABELS."""
    nuc = np.asarray(mask)[..., :5] > 0
    out = np.zeros(nuc.shape[:2], np.uint8)
    for k in range(5):  # no overlaps in PanNuke; if any, the later channel wins
        out[nuc[..., k]] = k + 1
    return out


def _fold_files(folder: Path):
    found = {}
    for name in ("images", "masks", "types"):
        hits = sorted(folder.rglob(f"{name}.npy"))
        if not hits:
            raise UserError(f"PanNuke fold {folder}: no {name}.npy under it (expected images.npy, masks.npy and types.npy "
                            f"as in the PanNuke download)")
        found[name] = hits[0]
    return found


def _read_types(path: Path, fold) -> np.ndarray:
    """PanNuke's ``types.npy``: the tissue name of each image, as strings. Read without
    unpickling: an object array (a pickle inside the .npy) is refused, since loading it could
    run code from the file."""
    try:
        types = np.load(path, allow_pickle=False)
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "Object arrays" in str(exc):
            raise UserError(f"PanNuke fold {fold}: {path} holds Python objects (a pickle), not strings; histosynth "
                            f"never unpickles a file it is given, since that can run code from it. Save the tissue "
                            f"names as a string array (numpy.save(path, names.astype(str))) from a copy you trust, "
                            f"or use the types.npy of the PanNuke download") from None
        raise UserError(f"PanNuke fold {fold}: {path} is not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"PanNuke fold {fold}: {path} is not a readable .npy file ({exc})") from None
    if types.ndim != 1 or types.dtype.kind not in "US":
        raise UserError(f"PanNuke fold {fold}: {path} should hold one tissue name per image (a 1-d string array); "
                        f"it holds {types.dtype} of shape {types.shape}")
    return types


def _read_array(path: Path, fold, what: str) -> np.ndarray:
    """images.npy / masks.npy memory-mapped, without unpickling; errors name the file."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UserError(f"PanNuke fold {fold}: {path} is not a readable numeric .npy array of {what} ({exc})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uifb":
        raise UserError(f"PanNuke fold {fold}: {path} holds {getattr(arr, 'dtype', type(arr).__name__)}, not the "
                        f"numeric {what} of a PanNuke fold")
    return arr


def import_pannuke(folds: dict, outdir, mpp: float = 0.25, batch: int = 256, progress=True) -> pd.DataFrame:
    """Write one tile store and one label-map store per fold and the combined mask index.

    ``folds``: fold name -> {"path": folder, "partition": train|val|test}."""
    from tqdm import tqdm

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    labels = LabelSet.from_config(PANNUKE_LABELS)
    bad = [str(f) for f in folds if not FOLD_NAME.fullmatch(str(f))]
    if bad:
        raise UserError(f"masks.pannuke.folds: fold name(s) {bad} cannot be used: a fold's name becomes a file name and "
                        f"its patient id, so it may hold only letters, digits, '_', '-' and '.' (not first); rename "
                        f"the key (e.g. fold1)")
    frames = []
    for fold, spec in folds.items():
        files = _fold_files(Path(spec["path"]))
        images = _read_array(files["images"], fold, "images (N, H, W, 3)")
        masks = _read_array(files["masks"], fold, "masks (N, H, W, 6)")
        types = _read_types(files["types"], fold)
        if images.ndim != 4 or images.shape[-1] != 3 or masks.shape[:3] != images.shape[:3] or masks.shape[-1] != 6 \
                or len(types) != len(images):
            raise UserError(f"PanNuke fold {fold}: shapes images {images.shape}, masks {masks.shape}, types "
                            f"{np.shape(types)} are not PanNuke's (N,H,W,3) / (N,H,W,6) / (N,)")
        n, px = len(images), int(images.shape[1])
        store, mstore = outdir / f"pannuke-{fold}.tiff", outdir / f"pannuke-{fold}.labels.tiff"
        maps = np.zeros((n, px, px), np.uint8)
        with TileStoreWriter(store, {"slide_id": f"pannuke-{fold}", "tile_px": px, "mpp": mpp}) as w:
            for i in tqdm(range(0, n, batch), desc=f"PanNuke {fold}", disable=not progress):
                chunk = np.clip(np.rint(np.asarray(images[i:i + batch], np.float32)), 0, 255).astype(np.uint8)
                for j, img in enumerate(chunk):
                    w.append(img)
                    maps[i + j] = pannuke_label_map(masks[i + j])
        write_map_store(maps, mstore, labels, {"slide_id": f"pannuke-{fold}", "source": "pannuke"})
        df = pd.DataFrame({"slide_id": f"pannuke-{fold}", "patient_id": str(fold),
                           "label": [str(t) for t in types], "page": np.arange(n), "x": 0, "y": 0, "level": 0,
                           "downsample": 1.0, "mpp": mpp, "mpp0": mpp, "tile_px": px, "tile_um": px * mpp,
                           "kept": True, "store": str(store), "partition": spec["partition"],
                           "mask_store": str(mstore), "mask_page": np.arange(n)})
        for k, v in class_fractions(maps, labels).items():
            df[k] = v
        frames.append(df)
        log.info("PanNuke %s: %d tiles (%s)", fold, n, spec["partition"])
    index = pd.concat(frames, ignore_index=True)
    if not (index["partition"] == "train").any():
        raise UserError("masks.pannuke.partitions: no fold is marked train")
    write_index(index, outdir / "index.parquet")
    return index
