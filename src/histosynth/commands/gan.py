"""The training stage's command (``histosynth train-gan``), for every kind of run."""
from __future__ import annotations

import logging
import os

from histosynth.runs import RunSpec
from histosynth.utils import UserError

log = logging.getLogger("histosynth")


def train_gan(run: RunSpec, tiles, outdir, embeddings=None, threads=1, progress=True):
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
    train_run(run, index, outdir, progress=progress, threads=threads)
