"""Training loop of label-map-conditioned runs (SPADE or pix2pix), on the same infrastructure
as the StyleGAN2 loop: single process or DistributedDataParallel-style under ``torchrun``
(gradients all-reduced, identical weights on every rank, checked at every snapshot), exact
resume from an atomic checkpoint (networks, optimisers, RNG and batch-sampler states), an EMA
generator, bf16 autocast on GPU, ``training_options.json``, ``stats.jsonl`` (and
TensorBoard), ``snapshots.jsonl``, and sample grids (label map / real tile / generated tile) per snapshot.

Losses:
* spade: hinge adversarial loss, discriminator feature matching (``lambda_fm``) and, with the
  style encoder, a KL term (``lambda_kl``). SPADE's VGG perceptual loss is left out: it needs
  ImageNet weights that an offline cluster cannot download.
* pix2pix: the non-saturating (BCE) adversarial loss plus ``lambda_l1`` x L1 to the real tile.
"""
from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F

from histosynth.gan import checkpoint as ckpt
from histosynth.gan.dataset import TileSource, sampling_weights, to_float
from histosynth.gan.mask_networks import build_mask_discriminator, build_mask_generator, one_hot
from histosynth.gan.training.loop import (
    StatsLog,
    _allreduce_grads,
    _grid,
    autocast,
    ema_update,
    finish,
    fused_adam,
    gather_snapshot_state,
    resume_from,
    save_png,
    save_snapshot,
    setup_run,
    tick_stats,
    to_uint8,
    training_tiles,
)
from histosynth.masks.build import load_maps
from histosynth.masks.labels import LabelSet
from histosynth.utils import UserError, write_json

log = logging.getLogger(__name__)


def paired_dihedral(img: torch.Tensor, seg: torch.Tensor, gen: torch.Generator):
    """The same random flip / 90° rotation for each tile and its label map."""
    k = torch.randint(0, 4, (img.shape[0],), generator=gen)
    f = torch.randint(0, 2, (img.shape[0],), generator=gen).bool()
    oi, os_ = torch.empty_like(img), torch.empty_like(seg)
    for i in range(img.shape[0]):
        a, b = img[i].rot90(int(k[i]), dims=(1, 2)), seg[i].rot90(int(k[i]), dims=(0, 1))
        oi[i], os_[i] = (a.flip(2), b.flip(1)) if f[i] else (a, b)
    return oi, os_


def generator_input(G, real, seg1h, z_dim, device):
    """(z, kl): the style code of each real tile through the encoder (SPADE with encoder),
    else Gaussian noise; pix2pix takes none."""
    if z_dim == 0:
        return None, None
    if getattr(G, "encoder", None) is not None:
        mu, logvar = G.encoder(real)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        kl = -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return z, kl
    return torch.randn(real.shape[0], z_dim, device=device), None


def mask_generator_from_checkpoint(path, device="cpu", ck: dict | None = None):
    """(G_ema, label set, options, mask options) from a mask-run checkpoint (`ck`: the
    checkpoint already loaded from `path`, so it is not read twice)."""
    ck = ck if ck is not None else ckpt.load(path)
    if ck.get("kind") != "mask":
        raise UserError(f"{path} is not a label-map-conditioned network (it was trained with gan.conditioning "
                        f"{ck.get('conditioning', {}).get('kind')!r}); pick a mask run's network.pt "
                        f"(masks.enabled, results/gan/<masks.run_name>/network.pt)")
    labels = LabelSet.from_config(ck["labels"])
    G = build_mask_generator(ck["mask_options"], len(labels), ck["options"]["resolution"], ck["z_dim"])
    G.load_state_dict(ck["G_ema"])
    return G.to(device).eval().requires_grad_(False), labels, ck["options"], ck["mask_options"]


def train_mask(index: pd.DataFrame, outdir, opts: dict, mopts: dict, progress: bool = True) -> Path:
    """Train (or resume) a label-map-conditioned generator on the training tiles of `index`
    (a mask index: tile store + label-map store columns)."""
    world, rank, device, batch_gpu, outdir = setup_run(opts, outdir)
    labels = LabelSet.from_config(mopts["labels"])
    K = len(labels)
    train_tiles = training_tiles(index, opts)
    if len(train_tiles) == 0:
        raise UserError("the mask run has no training tiles with label maps (see the label_maps logs)")
    source = TileSource(train_tiles, opts["resolution"], opts["preload_max_mb"], threads=max(1, opts.get("threads", 1)))
    maps = torch.from_numpy(load_maps(train_tiles))
    if int(maps.max()) >= K:
        raise UserError(f"label maps hold class {int(maps.max())} but masks.labels has {K} classes")
    weights = sampling_weights(train_tiles, "label" if opts["balance_classes"] else None)
    z_dim = opts["z_dim"] if mopts["method"] == "spade" else 0
    method = mopts["method"]

    resolved = dict(opts, conditioning="mask", mask=mopts, world_size=world, batch_gpu=batch_gpu,
                    n_train_tiles=len(train_tiles), n_train_patients=int(train_tiles["patient_id"].nunique()),
                    n_classes=K, device=str(device), torch=torch.__version__)
    torch.manual_seed(opts["seed"] * 1000 + rank)
    np.random.seed((opts["seed"] * 1000 + rank) % 2**32)
    sample_gen = torch.Generator().manual_seed(opts["seed"] * 7919 + rank)

    G = build_mask_generator(mopts, K, opts["resolution"], z_dim).to(device)
    D = build_mask_discriminator(mopts, K).to(device)
    if world > 1:
        for p in list(G.parameters()) + list(D.parameters()) + list(G.buffers()) + list(D.buffers()):
            dist.broadcast(p.data, 0)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    betas = (mopts["beta1"], mopts["beta2"])
    opt_G = torch.optim.Adam(G.parameters(), lr=mopts["lr_g"], betas=betas, **fused_adam(device))
    opt_D = torch.optim.Adam(D.parameters(), lr=mopts["lr_d"], betas=betas, **fused_adam(device))
    cur_nimg, step = 0, 0
    resume = outdir / "checkpoint.pt"
    state = resume_from(resume, rank, sample_gen, G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D)
    if state is not None:
        cur_nimg, step = state["cur_nimg"], state["step"]
    if rank == 0:
        write_json(outdir / "training_options.json", resolved)
    amp = autocast(opts, device)

    # fixed grid: 8 training tiles, their maps and fixed style noise
    g_idx = torch.randperm(len(train_tiles), generator=torch.Generator().manual_seed(5))[:8]
    g_real, g_seg = source.get(g_idx), maps[g_idx]
    g_z = torch.randn(len(g_idx), max(z_dim, 1), generator=torch.Generator().manual_seed(123))

    total = int(opts["kimg"] * 1000)
    tick, snap = int(opts["tick_kimg"] * 1000), int(opts["snap_kimg"] * 1000)
    next_tick, next_snap = (cur_nimg // tick + 1) * tick, (cur_nimg // snap + 1) * snap
    acc = {"loss_G": [], "loss_D": [], "g_adv": [], "g_fm": [], "g_l1": [], "g_kl": [], "d_real": [], "d_fake": []}
    t_tick, n_tick = time.time(), cur_nimg
    from tqdm import tqdm

    bar = tqdm(total=total, initial=cur_nimg, unit="img", desc="train_gan (mask)", disable=not progress or rank != 0)
    stats_log = StatsLog(outdir, opts.get("tensorboard", True), rank)
    while cur_nimg < total:
        idx = torch.multinomial(weights, batch_gpu, replacement=True, generator=sample_gen)
        real_u8, seg_u8 = paired_dihedral(source.get(idx), maps[idx], sample_gen)
        real = to_float(real_u8, device)
        seg = one_hot(seg_u8.to(device), K)

        # generator step
        G.requires_grad_(True)
        D.requires_grad_(False)
        opt_G.zero_grad(set_to_none=True)
        with amp():
            z, kl = generator_input(G, real, seg, z_dim, device)
            fake = G(seg, z)
            d_fake = D(fake, seg)
            parts = {}
            if method == "spade":
                parts["g_adv"] = -sum(f[-1].float().mean() for f in d_fake) / len(d_fake)
                with torch.no_grad():
                    d_real_f = D(real, seg)
                fm = sum(F.l1_loss(a.float(), b.float().detach()) for fs, rs in zip(d_fake, d_real_f)
                         for a, b in zip(fs[:-1], rs[:-1]))
                parts["g_fm"] = mopts["lambda_fm"] * fm / len(d_fake)
                if kl is not None:
                    parts["g_kl"] = mopts["lambda_kl"] * kl.float()
            else:
                parts["g_adv"] = sum(F.binary_cross_entropy_with_logits(f[-1].float(), torch.ones_like(f[-1].float()))
                                     for f in d_fake) / len(d_fake)
                parts["g_l1"] = mopts["lambda_l1"] * F.l1_loss(fake.float(), real)
            loss_G = sum(parts.values())
        loss_G.backward()
        _allreduce_grads(G, world)
        opt_G.step()

        # discriminator step
        G.requires_grad_(False)
        D.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        with amp():
            lf = [f[-1].float() for f in D(fake.detach(), seg)]
            lr = [f[-1].float() for f in D(real, seg)]
            if method == "spade":
                loss_D = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(lr, lf)) / len(lr)
            else:
                loss_D = 0.5 * sum(F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                                   + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)) for r, f in zip(lr, lf)) / len(lr)
        loss_D.backward()
        _allreduce_grads(D, world)
        opt_D.step()

        ema_update(G_ema, G, cur_nimg, opts)
        acc["loss_G"].append(loss_G.detach())  # device tensors, read once per tick (no sync per step)
        acc["loss_D"].append(loss_D.detach())
        for k, v in parts.items():
            acc[k].append(v.detach())
        acc["d_real"].append(torch.stack([r.detach().mean() for r in lr]).mean())
        acc["d_fake"].append(torch.stack([f.detach().mean() for f in lf]).mean())
        cur_nimg += opts["batch"]
        step += 1
        bar.update(opts["batch"])

        if cur_nimg >= next_tick or cur_nimg >= total:
            stats_log.write(tick_stats(acc, cur_nimg, step, n_tick, t_tick, device))
            acc = {k: [] for k in acc}
            t_tick, n_tick = time.time(), cur_nimg
            next_tick += tick
        if cur_nimg >= next_snap or cur_nimg >= total:
            next_snap += snap
            checksum, sums, rngs, gens = gather_snapshot_state([G, D], sample_gen, world)
            if rank == 0:
                with torch.no_grad():
                    gs = one_hot(g_seg.to(device), K)
                    fk = G_ema(gs, g_z[:, :z_dim].to(device) if z_dim else None)
                rows = np.concatenate([labels.colorize(g_seg.numpy()), g_real.permute(0, 2, 3, 1).numpy(), to_uint8(fk)])
                save_png(_grid(rows, 3), outdir / "samples" / f"fakes{cur_nimg // 1000:06d}.png")
                state = {"kind": "mask", "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                         "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "cur_nimg": cur_nimg, "step": step,
                         "rng": rngs, "sample_gen": gens, "options": dict(opts, conditioning="mask"),
                         "mask_options": mopts, "labels": labels.to_config(), "z_dim": z_dim,
                         "training_set": {"n_tiles": len(train_tiles),
                                          "patients": sorted(train_tiles["patient_id"].unique().tolist())}}
                save_snapshot(outdir, state, checksum, sums)
            if world > 1:
                dist.barrier()
    bar.close()
    stats_log.close()
    return finish(outdir, rank, world)
