"""The one GAN training loop, for every kind of run: single process, CPU or GPU, or
DistributedDataParallel-style multi-process under ``torchrun`` (gradients averaged by
all-reduce, so every rank keeps identical weights, checked at every snapshot). What differs
between kinds (data, networks, optimisers, loss, sample grids) comes from a kind object
(histosynth.gan.training.kinds) and its loss object (histosynth.gan.loss), whose phases the
loop runs in order, as stylegan2-ada's training loop runs its loss.

Outputs in the run directory:
  training_options.json   the resolved options
  stats.jsonl             one line per tick: losses, regularisers, augmentation p and r_t, speed
  tensorboard/            the same statistics as TensorBoard scalars (gan.tensorboard, if installed)
  snapshots.jsonl         one line per snapshot: parameter checksum of every rank (must agree)
  checkpoint.pt           the latest snapshot (resume point), written every ``snap_kimg``, with
                          the run's identity (options and training-tile digest): a resume
                          with other options or tiles is refused (RESUMABLE_OPTIONS may change)
  samples/fakes<kimg>.png sample grids at each snapshot (reals.png once)
  snapshots/, metrics.jsonl   the snapshot networks kept and their metrics during training
                          (gan.metrics, gan.keep_snapshots): see histosynth.gan.training.snapshots
  network.pt              the final checkpoint (format: histosynth.gan.checkpoint); the network
                          downstream stages use is results/gan/<run>/selected.pt, chosen from
                          these by generate.snapshot (rule select_snapshot)
"""
from __future__ import annotations

import copy
import json
import logging
import shutil
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histosynth.gan import checkpoint as ckpt
from histosynth.gan.training.kinds import LabelMapKind, StyleGAN2Kind
from histosynth.gan.training.snapshots import (
    SNAPSHOT_DIR,
    SnapshotMetrics,
    prune,
    snapshot_name,
    snapshot_state,
    write_series,
)
from histosynth.runs import RunSpec
from histosynth.torch_utils import distributed as tdist
from histosynth.torch_utils.snapshot import ema_update, gather_snapshot_state, set_rng_state
from histosynth.torch_utils.stats import StatsLog, tick_stats
from histosynth.utils import UserError, atomic_path, write_json

log = logging.getLogger(__name__)

# torch.compile of the main G and D passes (gan.compile): on CUDA only, where it pays (on a CPU
# the compilation outlasts a demo run). The test suite runs this same path on the CPU with
# COMPILE_OPTIONS = {"backend": "aot_eager", "fullgraph": True}: no graph breaks, hence no host
# syncs inside the compiled passes, and no recompilation as training goes on.
COMPILE_DEVICES = ("cuda",)
COMPILE_OPTIONS: dict = {}


def train_run(run: RunSpec, tiles: pd.DataFrame, outdir, progress: bool = True, threads: int = 1,
              files: dict | None = None) -> Path:
    """Train (or resume) `run` on `tiles` (the split's tile index; a mask index for mask runs,
    with the expression embeddings attached for expression runs); the path of network.pt.
    `files`: what the snapshot metrics need ({"reference": the reference classifier, "weights":
    the extractor's weights file})."""
    opts = run.gan
    world, rank, local_rank = tdist.dist_info()
    device = tdist.select_device(opts["device"], local_rank)
    tdist.init_process_group(device, world)
    if opts["batch"] % world:
        raise UserError(f"batch ({opts['batch']}) must be divisible by the number of processes ({world})")
    threads = max(1, threads)
    if opts["pretrained"] and opts["finetune_from"]:
        raise UserError(f"run {run.name}: gan.pretrained adopts a network as it is and gan.finetune_from trains on "
                        f"from one; set only one")
    if opts["pretrained"]:
        from histosynth.gan.training.pretrained import adopt_pretrained

        if run.kind == "mask":
            raise UserError(f"run {run.name}: a mask run trains its own SPADE/pix2pix generator; remove "
                            f"masks.gan.pretrained (gan.pretrained is for StyleGAN2 networks)")
        if world > 1:
            raise UserError(f"run {run.name} adopts gan.pretrained instead of training: run it as one process (gan.gpus 1)")
        return adopt_pretrained(run, tiles, outdir, device, threads)
    start = None
    if opts["finetune_from"] and not (Path(outdir) / "checkpoint.pt").exists():
        from histosynth.gan.training.finetune import read_start

        if run.kind == "mask":
            raise UserError(f"run {run.name}: gan.finetune_from starts StyleGAN2 runs; remove it from masks.gan")
        start = read_start(run, opts)
        opts = start.options
    elif opts["finetune_from"]:
        from histosynth.gan.training.finetune import resumed_options

        opts = resumed_options(Path(outdir) / "checkpoint.pt", opts)
    kind = (LabelMapKind(tiles, opts, run.masks, device, threads) if run.kind == "mask"
            else StyleGAN2Kind(tiles, opts, device, threads))
    return training_loop(kind, opts, outdir, world, rank, device, progress, files=files, start=start)


def train(tiles: pd.DataFrame, outdir, opts: dict, progress: bool = True, threads: int = 1,
          files: dict | None = None) -> Path:
    """A StyleGAN2 run of `opts` (a validated gan section) on `tiles`."""
    return train_run(RunSpec.of_gan(opts), tiles, outdir, progress, threads, files)


def train_mask(index: pd.DataFrame, outdir, opts: dict, mopts: dict, progress: bool = True) -> Path:
    """A label-map run of `opts` (gan section) and `mopts` (masks section, labels resolved) on a mask index."""
    return train_run(RunSpec.of_masks(opts, mopts), index, outdir, progress)


# gan options that may change when a run resumes: how long it runs, how often it reports and
# saves, and where and how fast it computes. Every other option, and the training tiles, decide
# what the networks become; a checkpoint records them and a resume with others is refused.
RESUMABLE_OPTIONS = ("kimg", "snap_kimg", "tick_kimg", "tensorboard", "grid_per_class", "preload_max_mb", "device",
                     "compile", "precision", "name", "pretrained", "pretrained_classes", "metrics", "metrics_samples",
                     "metrics_extractor", "keep_snapshots", "read_ahead")


def tiles_digest(tiles: pd.DataFrame) -> str:
    """SHA-256 of a tile table: every column's name, type and values, in row order."""
    import hashlib

    h = hashlib.sha256()
    t = tiles.reset_index(drop=True)
    for col in sorted(t.columns, key=str):
        v = t[col]
        if v.dtype == object:
            v = v.map(lambda x: np.asarray(x).tobytes() if isinstance(x, (list, np.ndarray)) else str(x))
        h.update(f"{col}\0{t[col].dtype}\0".encode())
        h.update(pd.util.hash_pandas_object(v, index=False).to_numpy().tobytes())
    return h.hexdigest()


def run_identity(kind) -> dict:
    """What determines a run's networks: its options (less RESUMABLE_OPTIONS), a mask run's
    masks section, and the digest of its training tiles."""
    meta = kind.metadata()
    ident = {"options": {k: v for k, v in meta["options"].items() if k not in RESUMABLE_OPTIONS},
             "tiles_sha256": tiles_digest(kind.tiles), "n_tiles": len(kind.tiles)}
    if "mask_options" in meta:
        ident["mask_options"] = meta["mask_options"]
    return json.loads(json.dumps(ident, default=str))  # as it reads back from a checkpoint


def _identity_differences(saved: dict, now: dict) -> list[str]:
    """What differs between a checkpoint's identity and the run's; a gan key the checkpoint does
    not record (it was written before the key existed) differs only when it is not at its default."""
    from histosynth.config import validate

    defaults = validate({"gan": {}})["gan"]
    out = []
    for section in ("options", "mask_options"):
        a, b = saved.get(section) or {}, now.get(section) or {}
        prefix = "gan" if section == "options" else "masks"
        for k in sorted(set(a) | set(b), key=str):
            if section == "options" and k not in a and k in defaults and b.get(k) == defaults[k]:
                continue
            if a.get(k) != b.get(k):
                out.append(f"{prefix}.{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}")
    if saved.get("tiles_sha256") != now.get("tiles_sha256"):
        out.append(f"the training tiles ({saved.get('n_tiles')} tiles then, {now.get('n_tiles')} now; digest "
                   f"{str(saved.get('tiles_sha256'))[:12]} -> {str(now.get('tiles_sha256'))[:12]})")
    return out


def _check_resumable(path: Path, state: dict, identity: dict) -> None:
    saved = state.get("run_identity")
    if saved is None:
        raise UserError(f"{path} does not record which options and tiles it was trained with (written by an earlier "
                        f"histosynth), so resuming it could continue another run. Delete it to train this run from "
                        f"the start (rm {path}).")
    diff = _identity_differences(saved, identity)
    if diff:
        raise UserError(f"{path} belongs to a run with other settings; resuming it would continue that network under "
                        f"this run's name. Differences: {'; '.join(diff)}. To train this run from the start, delete the "
                        f"checkpoint (rm {path}; Snakemake's --forcerun alone keeps it), or restore the settings. "
                        f"Only {', '.join(RESUMABLE_OPTIONS[:4])} and where it runs may change on resume.")


def _resume(path: Path, rank: int, sample_gen: torch.Generator, loss, identity: dict, **objects):
    """Load the checkpoint at `path` into `objects` and `loss`, restore this rank's RNG and
    batch-sampler states; (cur_nimg, step, the snapshot metrics' series), (0, 0, []) when there
    is none. A checkpoint of other options or tiles (`identity`) is refused."""
    if not path.exists():
        return 0, 0, []
    state = ckpt.load(path)
    _check_resumable(path, state, identity)
    for name, obj in objects.items():
        obj.load_state_dict(state[name])
    loss.load_state_dict(state["loss"])
    set_rng_state(state["rng"][rank])
    sample_gen.set_state(state["sample_gen"][rank])
    if rank == 0:
        log.info("resumed from %s at %.1f kimg", path, state["cur_nimg"] / 1000)
    return state["cur_nimg"], state["step"], state.get("metrics") or []


def training_loop(kind, opts: dict, outdir, world: int, rank: int, device, progress: bool, files: dict | None = None,
                  start=None) -> Path:
    outdir = Path(outdir)
    samples = outdir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    batch_gpu = opts["batch"] // world
    resolved = dict(opts, **kind.resolved, world_size=world, batch_gpu=batch_gpu, n_train_tiles=len(kind.tiles),
                    n_train_patients=int(kind.tiles["patient_id"].nunique()), device=str(device), torch=torch.__version__)
    torch.manual_seed(opts["seed"] * 1000 + rank)
    np.random.seed((opts["seed"] * 1000 + rank) % 2**32)
    sample_gen = torch.Generator().manual_seed(opts["seed"] * 7919 + rank)

    G, D = kind.build()
    if start is not None:  # gan.finetune_from: G, D and G_ema from a trained network
        G_ema_start, report = start.apply(G, D, kind.spec)
        resolved["finetune"] = report
    G, D = G.to(device), D.to(device)
    tdist.broadcast_tensors(list(G.parameters()) + list(D.parameters()) + list(G.buffers()) + list(D.buffers()), world)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    if start is not None:
        G_ema.load_state_dict(G_ema_start)
    frozen = kind.frozen_parameters(D)  # gan.freeze_d: kept out of the optimiser and of every backward pass
    opt_G, opt_D = kind.optimizers(G, D)
    G_fwd, D_fwd = G, D
    if kind.compilable and opts["compile"] and device.type in COMPILE_DEVICES:
        G_fwd, D_fwd = torch.compile(G, **COMPILE_OPTIONS), torch.compile(D, **COMPILE_OPTIONS)
    resolved.update(compiled=G_fwd is not G, bf16_autocast=tdist.uses_bf16(opts["precision"], device))
    loss = kind.loss(G, D, G_fwd, D_fwd, tdist.autocast(opts["precision"], device), tdist.mean_over_ranks(device, world))
    phases = [(name, G if name == "G" else D, opt_G if name == "G" else opt_D, interval)
              for name, interval in loss.phases()]
    identity = run_identity(kind)
    cur_nimg, step, series = _resume(outdir / "checkpoint.pt", rank, sample_gen, loss, identity, G=G, D=D,
                                     G_ema=G_ema, opt_G=opt_G, opt_D=opt_D)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the training's RNG untouched
        metrics = SnapshotMetrics(kind, opts, device, world, rank, files)
    metrics.load(series)
    if cur_nimg - opts["batch"] >= int(opts["kimg"] * 1000):  # a run of this kimg would have stopped earlier
        raise UserError(f"{outdir / 'checkpoint.pt'} is at {cur_nimg / 1000:g} kimg, beyond gan.kimg {opts['kimg']:g}: "
                        f"its network was trained longer than asked and no earlier snapshot is kept. Raise kimg to "
                        f"at least {cur_nimg / 1000:g}, or delete the checkpoint to train {opts['kimg']:g} kimg from "
                        f"the start.")
    resolved["resumed_from_kimg"] = cur_nimg / 1000 if cur_nimg else None
    if rank == 0:
        write_json(outdir / "training_options.json", resolved)
        kind.write_reals(samples)
        write_series(outdir, metrics.series)  # [] without gan.metrics

    total, tick, snap = int(opts["kimg"] * 1000), int(opts["tick_kimg"] * 1000), int(opts["snap_kimg"] * 1000)
    next_tick, next_snap = (cur_nimg // tick + 1) * tick, (cur_nimg // snap + 1) * snap
    acc = defaultdict(list)
    t_tick, n_tick = time.time(), cur_nimg
    from tqdm import tqdm

    bar = tqdm(total=total, initial=cur_nimg, unit="img", desc=kind.desc, disable=not progress or rank != 0)
    stats_log = StatsLog(outdir, opts["tensorboard"], rank)
    t_snap = time.time()
    while cur_nimg < total:
        batch = kind.next_batch(batch_gpu, sample_gen)
        for name, module, opt, interval in phases:
            G.requires_grad_(module is G)
            D.requires_grad_(module is D)
            for p in frozen:
                p.requires_grad_(False)
            opt.zero_grad(set_to_none=True)
            for k, v in loss.accumulate_gradients(name, batch, interval > 0 and step % interval == 0).items():
                acc[k].append(v)  # device tensors, read once per tick (no sync per step)
            tdist.allreduce_grads(module, world)
            opt.step()
        ema_update(G_ema, G, cur_nimg, opts["batch"], opts["ema_kimg"], opts["ema_rampup"])
        cur_nimg += opts["batch"]
        step += 1
        bar.update(opts["batch"])

        if cur_nimg >= next_tick or cur_nimg >= total:
            stats_log.write(tick_stats({k: acc[k] for k in loss.stat_keys}, cur_nimg, step, n_tick, t_tick, device,
                                       **loss.tick_extra()))
            acc = defaultdict(list)
            t_tick, n_tick = time.time(), cur_nimg
            next_tick += tick
        if cur_nimg >= next_snap or cur_nimg >= total:
            next_snap += snap
            checksum, sums, rngs, gens = gather_snapshot_state([G, D], kind.sampler_state(sample_gen), world)
            name = snapshot_name(cur_nimg)
            metrics.evaluate(G_ema, cur_nimg, time.time() - t_snap, name)
            if rank == 0:
                kind.write_samples(G_ema, samples / f"fakes{cur_nimg // 1000:06d}.png")
                state = ckpt.training_state(kind.kind, G=G.state_dict(), D=D.state_dict(), G_ema=G_ema.state_dict(),
                                            opt_G=opt_G.state_dict(), opt_D=opt_D.state_dict(), loss=loss.state_dict(),
                                            cur_nimg=cur_nimg, step=step, rng=rngs, sample_gen=gens,
                                            run_identity=identity, metrics=metrics.series, **kind.metadata())
                (outdir / SNAPSHOT_DIR).mkdir(exist_ok=True)
                ckpt.save(outdir / SNAPSHOT_DIR / name, snapshot_state(state))
                ckpt.save(outdir / "checkpoint.pt", state)
                if metrics.enabled:
                    write_series(outdir, metrics.series)
                prune(outdir, metrics.series, opts["keep_snapshots"], name)
                with open(outdir / "snapshots.jsonl", "a") as f:
                    f.write(json.dumps({"snapshot_kimg": cur_nimg / 1000, "snapshot": name, "param_checksum": checksum,
                                        "rank_checksums": sums}) + "\n")
            tdist.barrier(world)
            t_snap = time.time()
    bar.close()
    stats_log.close()
    final = outdir / "network.pt"
    if rank == 0:  # the last checkpoint, copied atomically once training ends
        with atomic_path(final) as tmp:
            shutil.copyfile(outdir / "checkpoint.pt", tmp)
    tdist.barrier(world)
    return final
