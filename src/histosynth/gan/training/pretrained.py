"""``gan.pretrained``: a run that adopts a generator trained elsewhere instead of training one.

The network (a stylegan2-ada / slideflow pickle, imported by :mod:`histosynth.gan.imports`
without executing anything from it, or a histosynth ``network.pt``) is checked against the run
(kind, classes, resolution) and written where training would have put its outputs, so
generation, blending, evaluation, the study and the report run on it unchanged:
``network.pt`` (with an ``imported`` record: source file, MD5, tool), ``training_options.json``,
an empty ``stats.jsonl`` (no training ticks) and the sample grids.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import torch

from histosynth.gan import checkpoint as ckpt
from histosynth.gan.conditioning import ConditioningSpec
from histosynth.gan.networks import build_generator
from histosynth.runs import RunSpec
from histosynth.utils import UserError, atomic_path, md5_of, write_json

log = logging.getLogger(__name__)

ARCH_KEYS = ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "conv_clamp",
             "mbstd_group")


def _read(path: Path, run: RunSpec, names: list) -> dict:
    if path.suffix.lower() == ".pkl":
        from histosynth.gan.imports import import_stylegan2

        return import_stylegan2(path, class_names=names if run.kind == "class" else None, name=run.name)
    ck = ckpt.load(path)
    if ck["kind"] != run.kind:
        raise UserError(f"gan.pretrained {path} is a {ck['kind']!r} network; run {run.name} is {run.kind!r} "
                        f"(gan.conditioning)")
    return dict(ck, imported={"source": str(path.resolve()), "md5": md5_of(path), "tool": "histosynth"})


def adopt_pretrained(run: RunSpec, tiles: pd.DataFrame, outdir, device, threads: int = 1) -> Path:
    """Write `run`'s outputs in `outdir` from the network `run.gan['pretrained']`; the path of
    network.pt. `tiles`: the split's tile index (classes, reals grid)."""
    from histosynth.gan.training.kinds import StyleGAN2Kind, training_tiles

    opts, path = run.gan, Path(run.gan["pretrained"])
    if run.kind not in ("class", "none"):
        raise UserError(f"gan.pretrained: run {run.name} is {run.kind!r}-conditioned; imported networks run as "
                        f"class-conditional or unconditional (gan.conditioning: class or none)")
    if not path.is_file():
        raise UserError(f"gan.pretrained: {path} does not exist (give a stylegan2-ada .pkl or a histosynth network.pt)")
    cohort = sorted(map(str, training_tiles(tiles, opts)["label"].unique())) if run.kind == "class" else []
    names = list(opts["pretrained_classes"] or cohort)
    ck = _read(path, run, names)
    net_opts = ck["options"]
    if net_opts["resolution"] != opts["resolution"]:
        raise UserError(f"gan.pretrained {path} makes {net_opts['resolution']} px tiles but gan.resolution is "
                        f"{opts['resolution']}: set gan.resolution and tiles.tile_px to {net_opts['resolution']}")
    spec = ConditioningSpec.from_dict(ck["conditioning"])
    if spec.kind != run.kind:
        raise UserError(f"gan.pretrained {path} is {'class-conditional' if spec.kind == 'class' else 'unconditional'}"
                        f"; set gan.conditioning: {spec.kind}")
    if run.kind == "class" and sorted(spec.categories["label"]) != sorted(cohort):
        raise UserError(f"gan.pretrained {path}: its classes {spec.categories['label']} are not the cohort's labels "
                        f"{cohort}; name the network's label indices with gan.pretrained_classes (in index order)")
    opts = dict(opts, **{k: net_opts[k] for k in ARCH_KEYS if k in net_opts})
    G = build_generator(opts, spec.dim)
    G.load_state_dict(ck["G_ema"])
    G = G.to(device).eval().requires_grad_(False)
    kind = StyleGAN2Kind(tiles, opts, device, threads)
    kind.spec = spec  # the network's class order, for the sample grids
    outdir = Path(outdir)
    samples = outdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    kind.write_reals(samples)
    kind.write_samples(G, samples / "fakes000000.png")
    imported = ck["imported"]
    state = dict(ck, options=opts, conditioning=spec.to_dict(), imported=imported,
                 training_set=ck.get("training_set") or {"n_tiles": None, "patients": None})
    write_json(outdir / "training_options.json",
               dict(opts, c_dim=spec.dim, conditioning_spec=spec.to_dict(), imported=imported, n_train_tiles=None,
                    n_train_patients=None, device=str(device), torch=torch.__version__))
    with atomic_path(outdir / "stats.jsonl") as tmp:
        tmp.write_text("")  # no training ticks
    with atomic_path(outdir / "metrics.jsonl") as tmp:
        tmp.write_text("")  # no snapshots
    ckpt.save(outdir / "network.pt", state)
    log.info("run %s: adopted %s (%s, MD5 %s) instead of training", run.name, path, imported["tool"], imported["md5"])
    return outdir / "network.pt"
