"""The GAN training loop: single process, CPU or GPU, or DistributedDataParallel-style
multi-process under ``torchrun`` (gradients averaged by all-reduce, so every rank keeps
identical weights).

Outputs in the run directory:
  training_options.json   the resolved options
  stats.jsonl             one line per tick: losses, R1, augmentation p and r_t, speed
  tensorboard/            the same statistics as TensorBoard scalars (gan.tensorboard, if installed)
  snapshots.jsonl         one line per snapshot: parameter checksum of every rank (must agree)
  checkpoint.pt           the latest snapshot (resume point), written every ``snap_kimg``
  samples/fakes<kimg>.png per-class sample grids at each snapshot (reals.png once)
  network.pt              the final checkpoint (what generation uses)
"""
from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from histosynth.gan import checkpoint as ckpt
from histosynth.gan.augment import AdaptiveAugment
from histosynth.gan.conditioning import ConditioningSpec
from histosynth.gan.dataset import TileSource, random_dihedral, sampling_weights, to_float
from histosynth.gan.loss import d_main_loss, g_main_loss, path_length_penalty, r1_penalty
from histosynth.gan.networks import Discriminator
from histosynth.utils import UserError, write_json

log = logging.getLogger(__name__)


def _dist_info():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def _device(opts, local_rank):
    want = opts.get("device", "auto")
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want == "cuda":
        if not torch.cuda.is_available():
            raise UserError("gan.device is cuda but no CUDA GPU is visible")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def _allreduce_grads(module, world):
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world
    off = 0
    for g in grads:
        g.copy_(flat[off: off + g.numel()].view_as(g))
        off += g.numel()


class StatsLog:
    """Tick statistics: appended to ``stats.jsonl`` (always) and written as TensorBoard scalars
    under ``tensorboard/`` when ``gan.tensorboard`` is on and the tensorboard package is
    installed (``pip install tensorboard``; then ``tensorboard --logdir results/gan``)."""

    def __init__(self, outdir, enabled: bool, rank: int):
        self.path = Path(outdir) / "stats.jsonl"
        self.rank, self.tb = rank, None
        if rank == 0 and enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.info("tensorboard is not installed: statistics go to stats.jsonl only")
            else:
                self.tb = SummaryWriter(str(Path(outdir) / "tensorboard"))

    def write(self, stats: dict) -> None:
        if self.rank != 0:
            return
        with open(self.path, "a") as f:
            f.write(json.dumps(stats) + "\n")
        if self.tb is not None:
            step = int(round(stats["kimg"] * 1000))
            for k, v in stats.items():
                if k not in ("kimg", "step", "time") and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(k, v, global_step=step)
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


@torch.no_grad()
def ema_update(G_ema, G, cur_nimg: int, opts: dict) -> None:
    """G_ema <- EMA of G with a half-life of ema_kimg (ramped up over the first images)."""
    ema_nimg = opts["ema_kimg"] * 1000
    if opts["ema_rampup"]:
        ema_nimg = min(ema_nimg, (cur_nimg + opts["batch"]) * opts["ema_rampup"])
    beta = 0.5 ** (opts["batch"] / max(ema_nimg, 1e-8))
    for pe, p in zip(G_ema.parameters(), G.parameters()):
        pe.copy_(p.detach().lerp(pe, beta))
    for be, b in zip(G_ema.buffers(), G.buffers()):
        be.copy_(b)


def fused_adam(device) -> dict:
    """Adam's fused CUDA kernel (one launch for all parameters) where there is a GPU."""
    return {"fused": True} if device.type == "cuda" else {}


def mean_over_ranks(device, world):
    """A function averaging a 0-d tensor over all processes (None with one process)."""
    if world == 1:
        return None

    def reduce(t):
        t = t.detach().to(device, torch.float32).clone()
        dist.all_reduce(t)
        return t / world
    return reduce


def setup_run(opts: dict, outdir):
    """(world size, rank, device, per-process batch, run folder): joins the process group
    under torchrun and checks the batch divides over the processes."""
    world, rank, local_rank = _dist_info()
    device = _device(opts, local_rank)  # before NCCL starts, so each rank's communicator binds its own GPU
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    outdir = Path(outdir)
    (outdir / "samples").mkdir(parents=True, exist_ok=True)
    if opts["batch"] % world:
        raise UserError(f"batch ({opts['batch']}) must be divisible by the number of processes ({world})")
    return world, rank, device, opts["batch"] // world, outdir


def training_tiles(tiles: pd.DataFrame, opts: dict) -> pd.DataFrame:
    """The kept tiles of the partitions the GAN trains on (never test)."""
    if "kept" in tiles.columns:
        tiles = tiles[tiles["kept"]]
    return tiles[tiles["partition"].isin(opts["train_partitions"])].reset_index(drop=True)


def _mean(values) -> float | None:
    """Mean of floats or 0-d tensors. The loops keep each step's losses as device tensors and
    read them here, once per tick, so no step waits for the GPU to report a number."""
    if not values:
        return None
    return float(np.mean([float(v) for v in values]))


def tick_stats(acc: dict, cur_nimg: int, step: int, n_tick: int, t_tick: float, device, **extra) -> dict:
    """One stats.jsonl line: the mean of each accumulated loss since the last tick, and speed."""
    dt = time.time() - t_tick
    stats = {"kimg": cur_nimg / 1000, "step": step, **{k: _mean(v) for k, v in acc.items()},
             **extra, "sec_per_kimg": dt / max((cur_nimg - n_tick) / 1000, 1e-9),
             "img_per_sec": (cur_nimg - n_tick) / max(dt, 1e-9), "time": time.time()}
    if device.type == "cuda":
        stats["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return stats


def resume_from(path: Path, rank: int, sample_gen: torch.Generator, **objects):
    """Load a checkpoint into `objects` (name -> module or optimiser, as saved) and restore
    this rank's RNG and batch-sampler states; the checkpoint dict, or None when there is none."""
    if not path.exists():
        return None
    state = ckpt.load(path)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    ckpt.set_rng_state(state["rng"][rank])
    sample_gen.set_state(state["sample_gen"][rank])
    if rank == 0:
        log.info("resumed from %s at %.1f kimg", path, state["cur_nimg"] / 1000)
    return state


def autocast(opts: dict, device):
    """A context factory: bf16 autocast on GPU when gan.precision is bf16, else a no-op."""
    if opts["precision"] == "bf16" and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return lambda: torch.autocast("cpu", enabled=False)


def save_snapshot(outdir: Path, state: dict, checksum: float, sums: list) -> None:
    """The resume point (``checkpoint.pt``, atomic) and its line in ``snapshots.jsonl``."""
    ckpt.save(outdir / "checkpoint.pt", state)
    with open(outdir / "snapshots.jsonl", "a") as f:
        f.write(json.dumps({"snapshot_kimg": state["cur_nimg"] / 1000, "param_checksum": checksum,
                            "rank_checksums": sums}) + "\n")


def finish(outdir: Path, rank: int, world: int) -> Path:
    """``network.pt``: the last checkpoint, copied atomically by rank 0 once training ends."""
    import shutil

    from histosynth.utils import atomic_path

    final = outdir / "network.pt"
    if rank == 0:
        with atomic_path(final) as tmp:
            shutil.copyfile(outdir / "checkpoint.pt", tmp)
    if world > 1:
        dist.barrier()
    return final


def gather_snapshot_state(modules, sample_gen, world):
    """(checksum, every rank's checksum, every rank's RNG states, every rank's batch-sampler
    state) at a snapshot; raises if the ranks' weights diverged."""
    checksum = float(sum(p.detach().double().sum() for m in modules for p in m.parameters()))
    if world == 1:
        return checksum, [checksum], [ckpt.rng_state()], [sample_gen.get_state()]
    sums, rngs, gens = [None] * world, [None] * world, [None] * world
    dist.all_gather_object(sums, checksum)
    if len(set(sums)) != 1:
        raise RuntimeError(f"ranks diverged: parameter checksums {sums}")
    dist.all_gather_object(rngs, ckpt.rng_state())
    dist.all_gather_object(gens, sample_gen.get_state())
    return checksum, sums, rngs, gens


def _grid(images_uint8: np.ndarray, rows: int) -> np.ndarray:
    n, h, w, c = images_uint8.shape
    cols = math.ceil(n / rows)
    out = np.full((rows * h, cols * w, c), 255, np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        out[r * h:(r + 1) * h, k * w:(k + 1) * w] = images_uint8[i]
    return out


def to_uint8(img: torch.Tensor) -> np.ndarray:
    return (img.float() * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_png(arr, path):
    from PIL import Image

    from histosynth.utils import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def train(tiles: pd.DataFrame, outdir, opts: dict, progress: bool = True) -> Path:
    """Train (or resume) a conditional GAN on the kept tiles of ``opts['train_partitions']``."""
    world, rank, device, batch_gpu, outdir = setup_run(opts, outdir)
    train_tiles = training_tiles(tiles, opts)
    spec = ConditioningSpec.fit(opts["conditioning"], train_tiles, opts.get("condition_columns"),
                                noise=opts.get("expression_noise", 0.0))
    c_all = torch.from_numpy(spec.encode(train_tiles))
    noise = spec.extra.get("noise", 0.0) if spec.kind == "expression" else 0.0
    sd_all = torch.from_numpy(spec.sd(train_tiles)) if noise else None
    source = TileSource(train_tiles, opts["resolution"], opts["preload_max_mb"], threads=max(1, opts.get("threads", 1)),
                        device=device)
    balance = spec.columns[0] if spec.kind == "class" else "label" if spec.kind == "expression" else None
    weights = sampling_weights(train_tiles, balance if opts["balance_classes"] and balance in train_tiles.columns else None)

    resolved = dict(opts, world_size=world, batch_gpu=batch_gpu, n_train_tiles=len(train_tiles),
                    n_train_patients=int(train_tiles["patient_id"].nunique()), c_dim=spec.dim,
                    conditioning_spec=spec.to_dict(), device=str(device), torch=torch.__version__)

    torch.manual_seed(opts["seed"] * 1000 + rank)
    np.random.seed((opts["seed"] * 1000 + rank) % 2**32)
    sample_gen = torch.Generator().manual_seed(opts["seed"] * 7919 + rank)

    G = ckpt.build_generator(opts, spec.dim).to(device)
    D = Discriminator(spec.dim, opts["resolution"], opts["channel_base"], opts["channel_max"]).to(device)
    if world > 1:  # identical initial weights on every rank
        for p in list(G.parameters()) + list(D.parameters()) + list(G.buffers()):
            dist.broadcast(p.data, 0)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)

    def adam(params, lr, interval):
        ratio = interval / (interval + 1) if interval else 1
        return torch.optim.Adam(params, lr=lr * ratio, betas=(0.0, 0.99 ** ratio), eps=1e-8,
                                **fused_adam(device))

    opt_G = adam(G.parameters(), opts["lr_g"], opts["pl_interval"] if opts["pl_weight"] > 0 else 0)
    opt_D = adam(D.parameters(), opts["lr_d"], opts["r1_interval"])
    aug = AdaptiveAugment(opts["augment"], opts["ada_target"], opts["ada_kimg"], fixed_p=opts.get("ada_p"))
    pl_mean = torch.zeros([], device=device)
    cur_nimg, step = 0, 0

    resume = outdir / "checkpoint.pt"
    state = resume_from(resume, rank, sample_gen, G=G, D=D, G_ema=G_ema, opt_G=opt_G, opt_D=opt_D)
    if state is not None:
        aug.load_state_dict(state["augment"])
        pl_mean = state["pl_mean"].to(device)
        cur_nimg, step = state["cur_nimg"], state["step"]
    if rank == 0:
        write_json(outdir / "training_options.json", resolved)
    amp = autocast(opts, device)
    G_fwd, D_fwd = G, D
    if opts.get("compile") and device.type == "cuda":
        G_fwd, D_fwd = torch.compile(G), torch.compile(D)

    reduce = mean_over_ranks(device, world)
    conds = spec.conditions()
    grid_z = torch.randn(len(conds) * opts["grid_per_class"], opts["z_dim"], generator=torch.Generator().manual_seed(123))
    grid_c = torch.from_numpy(spec.encode(pd.DataFrame([c for c in conds for _ in range(opts["grid_per_class"])]))) \
        if spec.kind in ("class", "attributes") else c_all[torch.randint(0, len(c_all), (len(grid_z),), generator=torch.Generator().manual_seed(5))]
    if rank == 0 and not (outdir / "samples" / "reals.png").exists():
        reals = []
        for cond in conds:
            sel = train_tiles.index
            for k, v in cond.items():
                sel = sel[train_tiles.loc[sel, k].astype(str) == v]
            pick = np.random.default_rng(0).permutation(sel)[:opts["grid_per_class"]]
            reals.append(source.get(list(pick)).permute(0, 2, 3, 1).numpy())
        save_png(_grid(np.concatenate(reals), len(conds)), outdir / "samples" / "reals.png")

    total = int(opts["kimg"] * 1000)
    next_tick = (cur_nimg // int(opts["tick_kimg"] * 1000) + 1) * int(opts["tick_kimg"] * 1000)
    next_snap = (cur_nimg // int(opts["snap_kimg"] * 1000) + 1) * int(opts["snap_kimg"] * 1000)
    acc = {"loss_G": [], "loss_D": [], "r1": [], "pl": [], "rt": []}
    t_tick, n_tick = time.time(), cur_nimg
    from tqdm import tqdm

    bar = tqdm(total=total, initial=cur_nimg, unit="img", desc="train_gan", disable=not progress or rank != 0)
    stats_log = StatsLog(outdir, opts.get("tensorboard", True), rank)
    while cur_nimg < total:
        idx = torch.multinomial(weights, batch_gpu, replacement=True, generator=sample_gen)
        real = to_float(random_dihedral(source.get(idx).to(device, non_blocking=True), sample_gen), device)
        c_real = c_all[idx]
        z = torch.randn(batch_gpu, opts["z_dim"], device=device)
        fidx = torch.randint(0, len(c_all), (batch_gpu,), generator=sample_gen)
        c_fake = c_all[fidx]
        if noise:  # a sample of the profile's posterior instead of its mean
            c_real = c_real + noise * sd_all[idx] * torch.randn(c_real.shape, generator=sample_gen)
            c_fake = c_fake + noise * sd_all[fidx] * torch.randn(c_fake.shape, generator=sample_gen)
        c_real, c_fake = c_real.to(device), c_fake.to(device)

        # G main
        G.requires_grad_(True)
        D.requires_grad_(False)
        opt_G.zero_grad(set_to_none=True)
        with amp():
            fake = G_fwd(z, c_fake, update_w_avg=True)
            loss_G = g_main_loss(D_fwd, fake, c_fake, aug)
        loss_G.backward()
        if opts["pl_weight"] > 0 and step % opts["pl_interval"] == 0:
            pl_bs = max(1, batch_gpu // 2)
            pen, pl_mean = path_length_penalty(G, z[:pl_bs], c_fake[:pl_bs], pl_mean)
            (pen * opts["pl_weight"] * opts["pl_interval"]).backward()
            acc["pl"].append(pen.detach())
        _allreduce_grads(G, world)
        opt_G.step()

        # D main
        G.requires_grad_(False)
        D.requires_grad_(True)
        opt_D.zero_grad(set_to_none=True)
        with amp():
            loss_D, d_real = d_main_loss(D_fwd, real, fake, c_real, c_fake, aug)
        loss_D.backward()
        if step % opts["r1_interval"] == 0 and opts["r1_gamma"] > 0:
            r1 = r1_penalty(D, real, c_real, aug)
            (r1 * (opts["r1_gamma"] / 2) * opts["r1_interval"]).backward()
            acc["r1"].append(r1.detach())
        _allreduce_grads(D, world)
        opt_D.step()
        rt = aug.observe(d_real, opts["batch"], reduce)
        if rt is not None:
            acc["rt"].append(rt)

        ema_update(G_ema, G, cur_nimg, opts)
        acc["loss_G"].append(loss_G.detach())
        acc["loss_D"].append(loss_D.detach())
        cur_nimg += opts["batch"]
        step += 1
        bar.update(opts["batch"])

        if cur_nimg >= next_tick or cur_nimg >= total:
            stats_log.write(tick_stats(acc, cur_nimg, step, n_tick, t_tick, device, augment_p=aug.p))
            acc = {k: [] for k in acc}
            t_tick, n_tick = time.time(), cur_nimg
            next_tick += int(opts["tick_kimg"] * 1000)
        if cur_nimg >= next_snap or cur_nimg >= total:
            next_snap += int(opts["snap_kimg"] * 1000)
            checksum, sums, rngs, gens = gather_snapshot_state([G, D], sample_gen, world)
            if rank == 0:
                with torch.no_grad():
                    imgs = torch.cat([G_ema(grid_z[i:i + 32].to(device), grid_c[i:i + 32].to(device), noise_mode="const")
                                      for i in range(0, len(grid_z), 32)])
                save_png(_grid(to_uint8(imgs), len(conds) if spec.kind in ("class", "attributes") else 4),
                         outdir / "samples" / f"fakes{cur_nimg // 1000:06d}.png")
                state = {"G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
                         "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(), "augment": aug.state_dict(),
                         "pl_mean": pl_mean.cpu(), "cur_nimg": cur_nimg, "step": step, "rng": rngs,
                         "sample_gen": gens, "options": opts, "conditioning": spec.to_dict(),
                         "training_set": {"n_tiles": len(train_tiles),
                                          "patients": sorted(train_tiles["patient_id"].unique().tolist())}}
                save_snapshot(outdir, state, checksum, sums)
            if world > 1:
                dist.barrier()
    bar.close()
    stats_log.close()
    return finish(outdir, rank, world)
