"""Bulk generation from a trained network into the tile-store format.

Each condition gets ``per_class`` tiles from seeds ``seed0 .. seed0 + per_class - 1``
(z drawn from ``numpy.random.RandomState(seed)``, as StyleGAN does, so a seed names the same
image on any device). Truncation ψ pulls w towards the condition's own centre of mass (the
mean w of 2,000 random z under that condition), which keeps classes apart where the global
mean would blend them. Each condition is written to its own store, atomically, so an
interrupted run redoes only the conditions that are missing or were made with other
seeds, truncation or network."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histosynth.gan.checkpoint import load_generator, require_kind
from histosynth.gan.networks import SeededNoise
from histosynth.images import grid, save_png
from histosynth.runs import STYLEGAN2_KINDS
from histosynth.slides.store import TileStoreWriter, read_index, write_index
from histosynth.torch_utils.images import to_uint8
from histosynth.utils import UserError

NOISE = "seeded"  # each tile's noise maps from its own seed (gan.networks.SeededNoise)
log = logging.getLogger(__name__)


def stylegan2_network(network, device="cpu"):
    """(G_ema, conditioning spec, options) of a StyleGAN2 run's network file."""
    net = load_generator(network, device)
    require_kind(net, STYLEGAN2_KINDS, "generation from conditions")
    return net.G, net.spec, net.options


def z_from_seeds(seeds, z_dim) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.random.RandomState(int(s)).randn(z_dim) for s in seeds]).astype(np.float32))


@torch.no_grad()
def w_center(G, c: torch.Tensor, n=2000, seed=0):
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.z_dim).astype(np.float32)).to(c.device)
    return G.mapping(z, c.expand(n, -1))[:, 0].mean(0)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


@torch.no_grad()
def check_set_names(names) -> None:
    """Every set gets its own files, named by its name made safe: refuse names that are empty or
    that map to one file (``LUAD 1`` and ``LUAD_1``; ``luad`` and ``LUAD`` on a case-insensitive
    file system), which would otherwise share tiles and labels."""
    seen = {}
    for name in names:
        name = str(name)
        safe = _safe(name)
        if not safe.strip("_"):
            raise UserError(f"generated set name {name!r} has no letter or digit to name its files by; give it a name")
        if safe.lower() in seen:
            other = seen[safe.lower()]
            raise UserError(f"generated sets {other!r} and {name!r} would be written to the same file "
                            f"({safe}.tiff): rename one (names are made file-safe by replacing characters other "
                            f"than letters, digits, '-' and '_' with '_', and compared ignoring case)")
        seen[safe.lower()] = name


def field_of_view(tile_meta: dict, fov_um=None, out_px=None):
    """(post-processing of uint8 tiles, tile metadata) for cropping generated tiles to `fov_um`
    microns (centred) and resizing to `out_px` with Lanczos, as the tiler resamples real tiles."""
    px, um = int(tile_meta.get("tile_px", 0)), float(tile_meta.get("tile_um", 0))
    fov_um = fov_um or um
    out_px = out_px or px
    if (fov_um == um and out_px == px) or not px:
        return None, tile_meta
    if fov_um > um:
        raise UserError(f"generate.fov_um {fov_um} is larger than the network's field of view ({um} µm): "
                        f"it can only be cropped")
    crop = max(1, round(px * fov_um / um))
    off = (px - crop) // 2

    def post(imgs):
        from PIL import Image

        out = []
        for im in imgs:
            sub = Image.fromarray(im[off:off + crop, off:off + crop])
            out.append(np.asarray(sub.resize((out_px, out_px), Image.Resampling.LANCZOS) if crop != out_px else sub))
        return np.stack(out)

    meta = dict(tile_meta, tile_px=out_px, tile_um=fov_um, mpp=fov_um / out_px)
    return post, meta


def generate_sets(G, sets: list[dict], outdir, network, *, truncation=1.0, batch=64, device="cpu",
                  tile_meta: dict | None = None, progress=True, post=None) -> pd.DataFrame:
    """Generate each set {name, c (1 x c_dim), seeds, meta} into its own store + index.
    A set already on disk with the same seeds, truncation, network and field of view is
    reused. `post` maps a uint8 batch to the stored tiles (e.g. a field-of-view crop)."""
    from tqdm import tqdm

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    tile_meta = tile_meta or {}
    check_set_names([st["name"] for st in sets])
    frames = []
    for st in sets:
        name, seeds, meta = st["name"], np.asarray(st["seeds"]), st.get("meta", {})
        safe = _safe(name)
        store, index = outdir / f"{safe}.tiff", outdir / f"{safe}.parquet"
        if store.exists() and index.exists():
            done = read_index(index)
            # reuse a finished set only if it is exactly what is asked now
            if (len(done) == len(seeds) and np.array_equal(done["seed"].to_numpy(), seeds)
                    and (done["truncation"] == truncation).all() and (done["network"] == str(network)).all()
                    and "noise" in done.columns and (done["noise"] == NOISE).all()
                    and all(k in done.columns and (done[k] == v).all() for k, v in tile_meta.items())
                    and Path(network).stat().st_mtime <= index.stat().st_mtime):
                frames.append(done)
                continue
        c = torch.as_tensor(np.asarray(st["c"], np.float32)).reshape(1, -1).to(device)
        center = w_center(G, c) if truncation != 1 else None
        rows = []
        with TileStoreWriter(store, {"condition": name, "network": str(network)}) as w:
            for i in tqdm(range(0, len(seeds), batch), desc=f"generate {name}", unit="batch", disable=not progress):
                s = seeds[i:i + batch]
                imgs = to_uint8(G(z_from_seeds(s, G.z_dim).to(device), c.expand(len(s), -1), psi=truncation,
                                  noise_mode=SeededNoise(s), w_center=center))
                if post is not None:
                    imgs = post(imgs)
                for seed, img in zip(s, imgs):
                    page = w.append(img)
                    rows.append(dict(slide_id=f"synthetic-{safe}", patient_id=f"synthetic-{safe}", page=page,
                                     seed=int(seed), condition=name, network=str(network), truncation=truncation, noise=NOISE,
                                     kept=True, store=str(store), **meta, **tile_meta))
        df = pd.DataFrame(rows)
        write_index(df, index)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def expression_sets(spec, per_class: int, seed0: int) -> list[dict]:
    """Per class, `per_class` tiles spread evenly over that class's training profiles
    (the embeddings stored in the network; for vector runs the training patients' mean
    vectors), with consecutive seeds."""
    table = spec.extra["table"]
    key_col = "expression_key" if spec.kind == "expression" else "source_patient"
    sets = []
    for label in sorted({v["label"] for v in table.values()}):
        keys = sorted(k for k, v in table.items() if v["label"] == label)
        counts = [per_class // len(keys) + (i < per_class % len(keys)) for i in range(len(keys))]
        start = seed0
        for k, n in zip(keys, counts):
            if n:
                meta = {"label": label, key_col: k}
                if spec.kind == "vector":
                    meta.update(zip(spec.columns, table[k]["mu"]))
                sets.append({"name": k, "c": table[k]["mu"], "seeds": np.arange(start, start + n), "meta": meta})
            start += n
    return sets


def vector_sets(spec, csv, per_vector: int, seed0: int) -> list[dict]:
    """One set per row of `csv`: the run's condition columns (numbers), optionally `name` and
    `label` (the label lets the study and concordance use the tiles)."""
    df = pd.read_csv(csv)
    missing = [c for c in spec.columns if c not in df.columns]
    if missing:
        raise UserError(f"generate.vectors {csv}: columns {missing} missing; the network's condition columns are "
                        f"{spec.columns} (optional: name, label)")
    sets = []
    for i, row in df.reset_index(drop=True).iterrows():
        name = str(row["name"]) if "name" in df.columns else f"vector{i:04d}"
        meta = {c: float(row[c]) for c in spec.columns} | ({"label": str(row["label"])} if "label" in df.columns else {})
        sets.append({"name": name, "c": [float(row[c]) for c in spec.columns], "meta": meta,
                     "seeds": np.arange(seed0, seed0 + per_vector)})
    return sets


@torch.no_grad()
def generate(network, outdir, per_class: int, *, truncation=1.0, seed0=0, batch=64, device="cpu",
             tile_meta: dict | None = None, progress=True, fov_um=None, out_px=None, vectors=None) -> pd.DataFrame:
    G, spec, opts = stylegan2_network(network, device)
    post, tile_meta = field_of_view(tile_meta or {}, fov_um, out_px)
    if vectors is not None:
        if spec.kind != "vector":
            raise UserError(f"generate.vectors is for vector-conditioned runs; {network} is {spec.kind!r}")
        sets = vector_sets(spec, vectors, per_class, seed0)
    elif spec.kind in ("expression", "vector"):
        sets = expression_sets(spec, per_class, seed0)
    else:
        sets = [{"name": spec.name(cond), "c": spec.encode(pd.DataFrame([cond])), "meta": cond,
                 "seeds": np.arange(seed0, seed0 + per_class)} for cond in spec.conditions()]
    return generate_sets(G, sets, outdir, network, truncation=truncation, batch=batch, device=device,
                         tile_meta=tile_meta, progress=progress, post=post)


def save_frames(frames: list, out_png, out_gif=None, out_mp4=None):
    """Frames (each: one uint8 image per row) as a grid PNG (rows, frames left to right), and as
    a GIF and an MP4 (H.264) playing the frames forth and back (ends not repeated)."""
    from PIL import Image

    from histosynth.utils import atomic_path

    stack = np.stack(frames, 1).reshape(-1, *frames[0].shape[1:])
    save_png(grid(stack, len(frames[0])), out_png)
    strips = [np.concatenate(list(f), 1) for f in frames]
    strips = strips + strips[-2:0:-1]
    if out_gif:
        images = [Image.fromarray(s) for s in strips]
        with atomic_path(out_gif) as tmp:
            images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=150, loop=0)
    if out_mp4:
        write_mp4(strips, out_mp4)


def write_mp4(frames: list, path, fps: float = 6.0, scale: int = 4) -> None:
    """H.264 video of uint8 RGB frames through the ffmpeg binary of the imageio-ffmpeg wheel,
    each frame enlarged `scale` times (nearest neighbour) and padded to even sides (yuv420p)."""
    import imageio_ffmpeg

    from histosynth.utils import atomic_path

    big = [np.repeat(np.repeat(f, scale, 0), scale, 1) for f in frames]
    h, w = big[0].shape[:2]
    big = [np.pad(f, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge") for f in big]
    with atomic_path(path) as tmp:
        writer = imageio_ffmpeg.write_frames(str(tmp), (w + w % 2, h + h % 2), fps=fps, codec="libx264",
                                             pix_fmt_out="yuv420p", macro_block_size=1, output_params=["-f", "mp4"])
        writer.send(None)
        for f in big:
            writer.send(np.ascontiguousarray(f))
        writer.close()


@torch.no_grad()
def class_blend_grid(network, out_png, out_gif=None, seeds=(0, 1, 2, 3), steps=8, device="cpu", out_mp4=None):
    """Dolezal et al.'s class blending: for each seed, the same z with the condition embedding
    moved linearly from the first class to the second in `steps` steps (rows: seeds)."""
    from histosynth.generate.blend import blend_endpoints, layer_blend_frames

    G, spec, _ = stylegan2_network(network, device)
    ends = blend_endpoints(spec)
    if ends is None:
        return None
    names, ca, cb, _ = ends
    save_frames(layer_blend_frames(G, ca, cb, seeds, steps, range(G.num_ws), device), out_png, out_gif, out_mp4)
    return names


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between latent vectors (Gaussian z keep their norm)."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    so = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def _interpolation_conditions(spec):
    """(names, condition vectors) to show: each class (or attribute combination, at most 8);
    for expression and vector runs the first training profile (patient vector) of each class."""
    if spec.kind in ("expression", "vector"):
        table = spec.extra["table"]
        keys = [sorted(k for k, v in table.items() if v["label"] == lab)[0]
                for lab in sorted({v["label"] for v in table.values()})]
        return [f"{k} ({table[k]['label']})" for k in keys], torch.from_numpy(spec.key_vectors(keys))
    conds = spec.conditions()[:8]
    return [spec.name(c) for c in conds], torch.from_numpy(spec.encode(pd.DataFrame(conds)))


@torch.no_grad()
def latent_interpolation(network, out_png, out_gif=None, seeds=(0, 1), steps=8, device="cpu"):
    """Latent interpolation: per condition (rows), z moves along the great circle from
    seed A's to seed B's in `steps` steps (columns); the condition stays fixed. The GIF plays
    the columns as frames (all conditions side by side), forth and back."""

    G, spec, _ = stylegan2_network(network, device)
    names, c = _interpolation_conditions(spec)
    za, zb = z_from_seeds(list(seeds)[:2], G.z_dim)
    frames = []
    for t in torch.linspace(0, 1, steps):
        z = slerp(za, zb, float(t)).expand(len(c), -1)
        frames.append(to_uint8(G(z.to(device), c.to(device), noise_mode="const")))
    save_frames(frames, out_png, out_gif)  # rows = conditions
    return names
