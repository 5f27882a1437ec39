"""The training stage's command (``histosynth train-gan``), for every kind of run."""
from __future__ import annotations

import logging
import os

from histosynth.runs import RunSpec
from histosynth.utils import UserError

log = logging.getLogger("histosynth")


def train_gan(run: RunSpec, tiles, outdir, embeddings=None, reference=None, metrics_weights=None, threads=1,
              progress=True):
    """Train (or resume) `run` on the tile index `tiles` (a mask index for mask runs)."""
    from histosynth.gan.training.loop import train_run
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import cuda_count

    ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if ntasks > 1:
        raise UserError(f"train-gan is running as one of {ntasks} SLURM tasks (SLURM_NTASKS={ntasks}): every task would "
                        f"train the same run into the same folder. Give the train_gan rule one task (resources tasks=1, "
                        f"as profiles/slurm does); it launches torchrun for all its GPUs itself.")
    if int(os.environ.get("RANK", "0")) == 0:
        log.info("train_gan %s (%s): %s process(es); CUDA devices visible: %d", run.name, run.kind,
                 os.environ.get("WORLD_SIZE", "1"), cuda_count())
    index = read_index(tiles)
    if run.kind == "expression":
        from histosynth.expression.prepare import attach_embeddings

        if not embeddings:
            raise UserError("gan.conditioning: expression needs --embeddings (results/expression/embeddings.parquet, "
                            "from the train_vae rule)")
        index = attach_embeddings(index, read_index(embeddings))
    train_run(run, index, outdir, progress=progress, threads=threads,
              files={"reference": reference, "weights": metrics_weights})


def select_snapshot(opts, run_dir, out):
    """``histosynth select-snapshot``: results/gan/<run>/selected.pt from generate.snapshot
    (`opts`: the generate section)."""
    from histosynth.gan.training.snapshots import select

    select(run_dir, opts["snapshot"], out)


def import_stylegan2(pkl, out, class_names=None, name="imported"):
    """``histosynth import-stylegan2``: a stylegan2-ada / slideflow pickle as a histosynth network."""
    from histosynth.gan.imports import import_stylegan2 as read_network

    names = [n.strip() for n in class_names.split(",")] if class_names else None
    ck = read_network(pkl, out, class_names=names, name=name)
    o = ck["options"]
    log.info("imported %s (%s, MD5 %s): %d px, z %d, w %d, %s, channels base %d max %d; discriminator %s -> %s",
             pkl, ck["imported"]["tool"], ck["imported"]["md5"], o["resolution"], o["z_dim"], o["w_dim"],
             f"classes {ck['conditioning']['categories']['label']}" if ck["kind"] == "class" else "unconditional",
             o["channel_base"], o["channel_max"], "included" if ck["D"] is not None else "left out", out)
