"""Generation from label maps (mask runs): one synthetic tile per (map, seed), written to the
tile-store format. Each synthetic row names the map it was made from (``mask_store``,
``mask_page``) and the real tile that map belongs to (``source_slide``, ``source_page``,
``source_patient``); ``label`` is that tile's class. The style code is drawn from the prior
with ``numpy.random.RandomState(seed)``, so a seed names the same tile on any device."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histosynth.gan.checkpoint import load_generator, require_kind
from histosynth.gan.mask_networks import one_hot
from histosynth.generate.sample import z_from_seeds
from histosynth.masks.build import load_maps
from histosynth.slides.store import TileStoreWriter, load_tiles, write_index
from histosynth.torch_utils.images import to_uint8

log = logging.getLogger(__name__)


@torch.no_grad()
def render(G, maps: np.ndarray, seeds, n_classes: int, device="cpu") -> np.ndarray:
    """uint8 (N, H, W, 3) tiles from (N, H, W) maps and one seed each."""
    seg = one_hot(torch.from_numpy(np.ascontiguousarray(maps)).to(device), n_classes)
    z = z_from_seeds(seeds, G.z_dim).to(device) if G.z_dim else None
    return to_uint8(G(seg, z))


def generate_from_maps(network, maps_index: pd.DataFrame, out_store, out_index, per_map: int = 1, seed0: int = 0,
                       batch: int = 64, device="cpu", name="layout", progress=True) -> pd.DataFrame:
    from tqdm import tqdm

    net = load_generator(network, device)
    require_kind(net, ("mask",), "generation from label maps")
    G, labels = net.G, net.labels
    src = maps_index.reset_index(drop=True)
    src = src.loc[src.index.repeat(per_map)].reset_index(drop=True)
    seeds = seed0 + np.arange(len(src))
    rows = []
    with TileStoreWriter(out_store, {"condition": name, "network": str(network)}) as w:
        for i in tqdm(range(0, len(src), batch), desc=f"generate {name}", unit="batch", disable=not progress):
            part = src.iloc[i:i + batch]
            imgs = render(G, load_maps(part), seeds[i:i + batch], len(labels), device)
            for (_, r), seed, img in zip(part.iterrows(), seeds[i:i + batch], imgs):
                page = w.append(img)
                rows.append(dict(slide_id=f"synthetic-{name}", patient_id=f"synthetic-{name}", label=r["label"], page=page,
                                 seed=int(seed), condition=f"{r['slide_id']}:{int(r['page'])}", network=str(network),
                                 kept=True, store=str(out_store), tile_px=int(r["tile_px"]), tile_um=float(r["tile_um"]),
                                 mpp=float(r["mpp"]), mask_store=r["mask_store"], mask_page=int(r["mask_page"]),
                                 source_slide=r["slide_id"], source_page=int(r["page"]),
                                 source_patient=r["patient_id"], source_partition=r["partition"]))
    df = pd.DataFrame(rows)
    write_index(df, out_index)
    return df


def triplet_figure(real_index: pd.DataFrame, fake_index: pd.DataFrame, labels, path, n: int = 8) -> None:
    """Rows of (label map, real tile, synthetic tile) for the first `n` synthetic tiles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from histosynth.utils import atomic_path

    fk = fake_index.iloc[:n]
    maps = load_maps(fk)
    real = load_tiles(pd.DataFrame({"store": [real_index.set_index(["slide_id", "page"]).loc[(s, p), "store"]
                                              for s, p in zip(fk["source_slide"], fk["source_page"])],
                                    "page": fk["source_page"].to_numpy()}))
    fake = load_tiles(fk)
    fig, ax = plt.subplots(len(fk), 3, figsize=(6, 2 * len(fk)), squeeze=False)
    for i in range(len(fk)):
        for j, (img, title) in enumerate(((labels.colorize(maps[i]), "label map"), (real[i], "real"),
                                          (fake[i], "synthetic"))):
            ax[i, j].imshow(img, interpolation="nearest")
            ax[i, j].set_xticks([])
            ax[i, j].set_yticks([])
            if i == 0:
                ax[i, j].set_title(title)
        ax[i, 0].set_ylabel(f"{fk['source_patient'].iloc[i]}\n{fk['label'].iloc[i]}", fontsize=7)
    fig.legend(handles=[Patch(facecolor=np.asarray(c) / 255, edgecolor="0.3", label=nm) for nm, c in zip(labels.names, labels.colors)],
               loc="lower center", ncol=min(len(labels), 4), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
