"""What each kind of run gives the one training loop (histosynth.gan.training.loop): its
training data and batches, its networks and optimisers, its loss object, its sample grids and
the metadata its checkpoint carries. The loop itself does not care which kind it runs.

* :class:`StyleGAN2Kind`: class, attributes, vector and expression conditioning (and none);
* :class:`LabelMapKind`: SPADE or pix2pix from label maps (the mask run).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from histosynth.gan.augment import AdaptiveAugment
from histosynth.gan.conditioning import ConditioningSpec
from histosynth.gan.dataset import ReadAhead, TileSource, sampling_weights, to_float
from histosynth.gan.loss import LabelMapLoss, StyleGAN2Loss
from histosynth.gan.mask_networks import build_mask_discriminator, build_mask_generator, one_hot
from histosynth.gan.networks import SeededNoise, build_discriminator, build_generator
from histosynth.images import grid, save_png
from histosynth.masks.build import load_maps
from histosynth.masks.labels import LabelSet
from histosynth.torch_utils.distributed import fused_adam
from histosynth.torch_utils.images import dihedral, dihedral_draws, to_uint8
from histosynth.utils import UserError


def training_tiles(tiles: pd.DataFrame, opts: dict) -> pd.DataFrame:
    """The kept tiles of the partitions the GAN trains on (never test)."""
    if "kept" in tiles.columns:
        tiles = tiles[tiles["kept"]]
    return tiles[tiles["partition"].isin(opts["train_partitions"])].reset_index(drop=True)


def training_set(tiles: pd.DataFrame) -> dict:
    return {"n_tiles": len(tiles), "patients": sorted(tiles["patient_id"].unique().tolist())}


class StyleGAN2Kind:
    """Conditional StyleGAN2 with ADA or DiffAugment on the tiles' conditions."""

    desc, compilable = "train_gan", True

    def __init__(self, tiles: pd.DataFrame, opts: dict, device, threads: int):
        self.o, self.device = opts, device
        self.tiles = t = training_tiles(tiles, opts)
        if len(t) == 0:
            raise UserError(f"no kept tiles in the GAN's training partitions {opts['train_partitions']}")
        self.spec = ConditioningSpec.fit(opts["conditioning"], t, opts["condition_columns"], noise=opts["expression_noise"])
        if opts["contrastive_weight"] > 0 and self.spec.kind not in ("class", "attributes"):
            raise UserError(f"gan.contrastive_weight: the conditional contrastive loss compares classes or attribute "
                            f"combinations; this run is {self.spec.kind!r}-conditioned (set it to 0)")
        self.kind = self.spec.kind
        self.c_all = torch.from_numpy(self.spec.encode(t))
        self.noise = self.spec.extra.get("noise", 0.0) if self.spec.kind == "expression" else 0.0
        self.sd_all = torch.from_numpy(np.array(self.spec.sd(t))) if self.noise else None
        self.source = TileSource(t, opts["resolution"], opts["preload_max_mb"], threads=threads, device=device)
        self.reader = ReadAhead(self.source, self.draw, 0 if self.source.preloaded is not None else opts["read_ahead"],
                                pin=device.type == "cuda")
        balance = self.spec.columns[0] if self.spec.kind == "class" else "label" if self.spec.kind == "expression" else None
        self.weights = sampling_weights(t, balance if opts["balance_classes"] and balance in t.columns else None)
        self.resolved = {"c_dim": self.spec.dim, "conditioning_spec": self.spec.to_dict()}

    def build(self):
        o = self.o
        return build_generator(o, self.spec.dim), build_discriminator(o, self.spec.dim)

    def optimizers(self, G, D):
        """Adam with stylegan2's lazy-regularisation correction of lr and beta2."""
        o = self.o

        def adam(params, lr, interval):
            ratio = interval / (interval + 1) if interval else 1
            return torch.optim.Adam(params, lr=lr * ratio, betas=(o["beta1"] ** ratio, o["beta2"] ** ratio), eps=1e-8,
                                    **fused_adam(self.device))
        return (adam(G.parameters(), o["lr_g"], o["pl_interval"] if o["pl_weight"] > 0 else 0),
                adam(D.parameters(), o["lr_d"], o["r1_interval"]))

    def loss(self, G, D, G_fwd, D_fwd, amp, reduce):
        o = self.o
        aug = AdaptiveAugment(o["augment"], o["ada_target"], o["ada_kimg"], fixed_p=o["ada_p"])
        return StyleGAN2Loss(G, D, G_fwd, D_fwd, aug, o, amp, reduce, self.device)

    def draw(self, n: int, gen: torch.Generator) -> dict:
        """Every draw of a batch from the sampler `gen`: tile rows, their flips and rotations, the
        fake conditions, an expression run's posterior noise."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        k, f = dihedral_draws(n, gen)
        fidx = torch.randint(0, len(self.c_all), (n,), generator=gen)
        c_real, c_fake = self.c_all[idx], self.c_all[fidx]
        if self.noise:  # a sample of the profile's posterior instead of its mean
            c_real = c_real + self.noise * self.sd_all[idx] * torch.randn(c_real.shape, generator=gen)
            c_fake = c_fake + self.noise * self.sd_all[fidx] * torch.randn(c_fake.shape, generator=gen)
        return {"idx": idx, "k": k, "f": f, "c_real": c_real, "c_fake": c_fake}

    def next_batch(self, n: int, gen: torch.Generator) -> dict:
        dev = self.device
        d, tiles = self.reader.next(n, gen)
        real = to_float(dihedral(tiles.to(dev, non_blocking=True), d["k"], d["f"]), dev)
        z = torch.randn(n, self.o["z_dim"], device=dev)
        return {"real": real, "c_real": d["c_real"].to(dev, non_blocking=True), "z": z,
                "c_fake": d["c_fake"].to(dev, non_blocking=True)}

    def sampler_state(self, gen: torch.Generator) -> torch.Tensor:
        """The batch sampler's state a checkpoint records (before the batches read ahead)."""
        return self.reader.state(gen)

    def frozen_parameters(self, D) -> list:
        """gan.freeze_d: the parameters of D's first N blocks from the highest resolution (FreezeD)."""
        n = self.o["freeze_d"]
        if n > len(D.block_resolutions):
            raise UserError(f"gan.freeze_d {n}: the discriminator has {len(D.block_resolutions)} blocks at "
                            f"{self.o['resolution']} px (b{D.block_resolutions[0]} ... b{D.block_resolutions[-1]})")
        return [p for res in D.block_resolutions[:n] for p in getattr(D, f"b{res}").parameters()]

    @torch.no_grad()
    def metric_batch(self, G_ema, n: int, gen: torch.Generator) -> np.ndarray:
        """n generated tiles (uint8 NHWC) for the snapshot metrics, conditions drawn as the training
        tiles' (the posterior means of expression runs), latents from `gen`."""
        z = torch.randn(n, self.o["z_dim"], generator=gen)
        c = self.c_all[torch.randint(0, len(self.c_all), (n,), generator=gen)]
        return to_uint8(G_ema(z.to(self.device), c.to(self.device)))

    def _grid_inputs(self):
        conds, per = self.spec.conditions(), self.o["grid_per_class"]
        z = torch.randn(len(conds) * per, self.o["z_dim"], generator=torch.Generator().manual_seed(123))
        if self.spec.kind in ("class", "attributes"):
            c = torch.from_numpy(self.spec.encode(pd.DataFrame([c for c in conds for _ in range(per)])))
            return z, c, len(conds)
        return z, self.c_all[torch.randint(0, len(self.c_all), (len(z),), generator=torch.Generator().manual_seed(5))], 4

    def write_reals(self, samples) -> None:
        """reals.png: training tiles, one row per condition."""
        if (samples / "reals.png").exists():
            return
        conds, t, reals = self.spec.conditions(), self.tiles, []
        for cond in conds:
            sel = t.index
            for k, v in cond.items():
                sel = sel[t.loc[sel, k].astype(str) == v]
            pick = np.random.default_rng(0).permutation(sel)[:self.o["grid_per_class"]]
            reals.append(self.source.get(list(pick)).permute(0, 2, 3, 1).cpu().numpy())
        save_png(grid(np.concatenate(reals), len(conds)), samples / "reals.png")

    @torch.no_grad()
    def write_samples(self, G_ema, path) -> None:
        z, c, rows = self._grid_inputs()
        imgs = torch.cat([G_ema(z[i:i + 32].to(self.device), c[i:i + 32].to(self.device),
                                noise_mode=SeededNoise(range(i, min(i + 32, len(z))))) for i in range(0, len(z), 32)])
        save_png(grid(to_uint8(imgs), rows), path)

    def metadata(self) -> dict:
        return {"options": self.o, "conditioning": self.spec.to_dict(), "training_set": training_set(self.tiles)}


class LabelMapKind:
    """SPADE or pix2pix on tiles and their label maps (a mask index: tile store and label-map
    store columns)."""

    desc, compilable, kind = "train_gan (mask)", False, "mask"

    def __init__(self, index: pd.DataFrame, opts: dict, mopts: dict, device, threads: int):
        self.o, self.m, self.device = opts, mopts, device
        self.labels = LabelSet.from_config(mopts["labels"])
        self.tiles = t = training_tiles(index, opts)
        if len(t) == 0:
            raise UserError("the mask run has no training tiles with label maps (see the label_maps logs)")
        self.source = TileSource(t, opts["resolution"], opts["preload_max_mb"], threads=threads)
        self.reader = ReadAhead(self.source, self.draw, 0 if self.source.preloaded is not None else opts["read_ahead"],
                                pin=device.type == "cuda")
        self.maps = torch.from_numpy(load_maps(t))
        if int(self.maps.max()) >= len(self.labels):
            raise UserError(f"label maps hold class {int(self.maps.max())} but masks.labels has {len(self.labels)} classes")
        self.weights = sampling_weights(t, "label" if opts["balance_classes"] else None)
        self.z_dim = opts["z_dim"] if mopts["method"] == "spade" else 0
        self.resolved = {"conditioning": "mask", "mask": mopts, "n_classes": len(self.labels)}

    def build(self):
        K = len(self.labels)
        return build_mask_generator(self.m, K, self.o["resolution"], self.z_dim), build_mask_discriminator(self.m, K)

    def optimizers(self, G, D):
        m, kw = self.m, fused_adam(self.device)
        return (torch.optim.Adam(G.parameters(), lr=m["lr_g"], betas=(m["beta1"], m["beta2"]), **kw),
                torch.optim.Adam(D.parameters(), lr=m["lr_d"], betas=(m["beta1"], m["beta2"]), **kw))

    def loss(self, G, D, G_fwd, D_fwd, amp, reduce):
        return LabelMapLoss(G_fwd, D_fwd, self.m, self.z_dim, amp)

    def draw(self, n: int, gen: torch.Generator) -> dict:
        """Every draw of a batch from the sampler `gen`: tile rows and their flips and rotations."""
        idx = torch.multinomial(self.weights, n, replacement=True, generator=gen)
        k, f = dihedral_draws(n, gen)
        return {"idx": idx, "k": k, "f": f}

    def next_batch(self, n: int, gen: torch.Generator) -> dict:
        d, tiles = self.reader.next(n, gen)
        real_u8, seg_u8 = dihedral(tiles, d["k"], d["f"]), dihedral(self.maps[d["idx"]].unsqueeze(1), d["k"], d["f"])
        return {"real": to_float(real_u8, self.device),
                "seg": one_hot(seg_u8.squeeze(1).to(self.device, non_blocking=True), len(self.labels))}

    def sampler_state(self, gen: torch.Generator) -> torch.Tensor:
        return self.reader.state(gen)

    def frozen_parameters(self, D) -> list:
        if self.o["freeze_d"]:
            raise UserError("gan.freeze_d applies to StyleGAN2 runs; set masks.gan.freeze_d: 0 for the mask run")
        return []

    @torch.no_grad()
    def metric_batch(self, G_ema, n: int, gen: torch.Generator) -> np.ndarray:
        """n tiles (uint8 NHWC) generated from random training tiles' label maps."""
        idx = torch.randint(0, len(self.tiles), (n,), generator=gen)
        seg = one_hot(self.maps[idx].to(self.device), len(self.labels))
        z = torch.randn(n, self.z_dim, generator=gen).to(self.device) if self.z_dim else None
        return to_uint8(G_ema(seg, z))

    def write_reals(self, samples) -> None:
        pass  # every sample grid shows the maps and their real tiles beside the generated ones

    @torch.no_grad()
    def write_samples(self, G_ema, path) -> None:
        """Fixed grid: 8 training tiles' label maps, the real tiles and generated ones, in three rows."""
        g_idx = torch.randperm(len(self.tiles), generator=torch.Generator().manual_seed(5))[:8]
        g_real, g_seg = self.source.get(g_idx), self.maps[g_idx]
        g_z = torch.randn(len(g_idx), max(self.z_dim, 1), generator=torch.Generator().manual_seed(123))
        fk = G_ema(one_hot(g_seg.to(self.device), len(self.labels)), g_z[:, :self.z_dim].to(self.device) if self.z_dim else None)
        rows = np.concatenate([self.labels.colorize(g_seg.numpy()), g_real.permute(0, 2, 3, 1).cpu().numpy(), to_uint8(fk)])
        save_png(grid(rows, 3), path)

    def metadata(self) -> dict:
        return {"options": dict(self.o, conditioning="mask"), "mask_options": self.m, "labels": self.labels.to_config(),
                "z_dim": self.z_dim, "training_set": training_set(self.tiles)}
