"""GAN losses: StyleGAN2 (non-saturating logistic, lazy R1 on reals, path-length penalty) and the
label-map runs' SPADE and pix2pix losses, as loss objects the one training loop runs."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def conditional_contrastive(h, cmap, c, temperature=1.0):
    """The conditional contrastive (2C) loss of ContraGAN, as AttributeGAN used it: each image's
    embedding `h` is pulled towards its condition's embedding `cmap` and towards the embeddings
    of the other images with the same condition `c` (identical vectors: the same class or
    attribute combination), and pushed from the rest. Cosine similarities over `temperature`."""
    e, lab = F.normalize(h.float(), dim=1), F.normalize(cmap.float(), dim=1)
    sim = e @ e.t() / temperature
    n = len(e)
    off = ~torch.eye(n, dtype=torch.bool, device=e.device)
    same = (c[:, None, :] == c[None, :, :]).all(-1) & off
    pos_label = (e * lab).sum(1) / temperature
    neg_inf = torch.finfo(sim.dtype).min
    num = torch.logsumexp(torch.cat([pos_label[:, None], sim.masked_fill(~same, neg_inf)], 1), 1)
    den = torch.logsumexp(torch.cat([pos_label[:, None], sim.masked_fill(~off, neg_inf)], 1), 1)
    return (den - num).mean()


def g_main_loss(D, fake, c, aug, contrastive=0.0, temperature=1.0):
    if contrastive <= 0:
        return F.softplus(-D(aug(fake), c)).mean()
    score, h, cmap = D(aug(fake), c, return_embedding=True)
    return F.softplus(-score).mean() + contrastive * conditional_contrastive(h, cmap, c, temperature)


def d_main_loss(D, real, fake, c_real, c_fake, aug, contrastive=0.0, temperature=1.0):
    d_fake = D(aug(fake.detach()), c_fake)
    if contrastive <= 0:
        d_real = D(aug(real), c_real)
        return F.softplus(d_fake).mean() + F.softplus(-d_real).mean(), d_real
    d_real, h, cmap = D(aug(real), c_real, return_embedding=True)
    con = contrastive * conditional_contrastive(h, cmap, c_real, temperature)
    return F.softplus(d_fake).mean() + F.softplus(-d_real).mean() + con, d_real


def r1_penalty(D, real, c, aug):
    real = real.detach().requires_grad_(True)
    d_real = D(aug(real), c)
    (grad,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3]).mean()


def path_length_penalty(G, z, c, pl_mean: torch.Tensor, decay=0.01, style_mixing=0.0):
    ws = G.mapping(z, c)
    if style_mixing > 0:
        ws = G.mix_styles(ws, c, style_mixing)
    img = G.synthesis(ws)
    noise = torch.randn_like(img) / np.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    lengths = grad.square().sum(2).mean(1).sqrt()
    new_mean = pl_mean.lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square().mean(), new_mean


# Loss objects: what the training loop (histosynth.gan.training.loop) runs, in the manner of
# stylegan2-ada's StyleGAN2Loss. The loop calls `accumulate_gradients(phase, batch, do_reg)`
# for each phase of `phases` in order (it zeroes the phase's gradients before, all-reduces and
# steps its optimiser after); `do_reg` is true every `interval` steps of that phase's lazy
# regulariser. The returned dict holds detached 0-d tensors, averaged into stats.jsonl per tick.


class StyleGAN2Loss:
    """Non-saturating logistic loss through the discriminator augmentation, lazy R1 on reals
    (phase D), path-length regularisation (phase G), and ADA's r_t fed back after each D step."""

    stat_keys = ("loss_G", "loss_D", "r1", "pl", "rt")

    def __init__(self, G, D, G_fwd, D_fwd, aug, opts: dict, amp, reduce, device):
        self.G, self.D, self.G_fwd, self.D_fwd, self.aug = G, D, G_fwd, D_fwd, aug
        self.o, self.amp, self.reduce = opts, amp, reduce
        self.pl_mean = torch.zeros([], device=device)

    def phases(self):
        """(name, lazy-regularisation interval or 0): G with path length, D with R1."""
        o = self.o
        return [("G", o["pl_interval"] if o["pl_weight"] > 0 else 0), ("D", o["r1_interval"] if o["r1_gamma"] > 0 else 0)]

    def accumulate_gradients(self, phase: str, batch: dict, do_reg: bool) -> dict:
        o, out = self.o, {}
        if phase == "G":
            with self.amp():
                batch["fake"] = self.G_fwd(batch["z"], batch["c_fake"], update_w_avg=True,
                                           style_mixing=o["style_mixing"])
                loss = g_main_loss(self.D_fwd, batch["fake"], batch["c_fake"], self.aug, o["contrastive_weight"],
                                   o["contrastive_temperature"])
            loss.backward()
            out["loss_G"] = loss.detach()
            if do_reg:
                n = max(1, batch["z"].shape[0] // 2)
                pen, self.pl_mean = path_length_penalty(self.G, batch["z"][:n], batch["c_fake"][:n], self.pl_mean,
                                                     style_mixing=o["style_mixing"])
                (pen * o["pl_weight"] * o["pl_interval"]).backward()
                out["pl"] = pen.detach()
            return out
        with self.amp():
            loss, d_real = d_main_loss(self.D_fwd, batch["real"], batch["fake"], batch["c_real"], batch["c_fake"], self.aug,
                                       o["contrastive_weight"], o["contrastive_temperature"])
        loss.backward()
        out["loss_D"] = loss.detach()
        if do_reg:
            r1 = r1_penalty(self.D, batch["real"], batch["c_real"], self.aug)
            (r1 * (o["r1_gamma"] / 2) * o["r1_interval"]).backward()
            out["r1"] = r1.detach()
        rt = self.aug.observe(d_real, o["batch"], self.reduce)
        if rt is not None:
            out["rt"] = rt
        return out

    def tick_extra(self) -> dict:
        return {"augment_p": self.aug.p}

    def state_dict(self) -> dict:
        return {"augment": self.aug.state_dict(), "pl_mean": self.pl_mean.cpu()}

    def load_state_dict(self, s: dict) -> None:
        self.aug.load_state_dict(s["augment"])
        self.pl_mean = s["pl_mean"].to(self.pl_mean.device)


class LabelMapLoss:
    """Label-map-conditioned losses. spade: hinge adversarial loss, discriminator feature
    matching (``lambda_fm``) and, with the style encoder, a KL term (``lambda_kl``); SPADE's VGG
    perceptual loss is left out (it needs ImageNet weights an offline cluster cannot download).
    pix2pix: the non-saturating (BCE) adversarial loss plus ``lambda_l1`` x L1 to the real tile.
    Discriminators are multi-scale: each returns a list of feature lists, logits last."""

    stat_keys = ("loss_G", "loss_D", "g_adv", "g_fm", "g_l1", "g_kl", "d_real", "d_fake")

    def __init__(self, G, D, mopts: dict, z_dim: int, amp):
        self.G, self.D, self.m, self.z_dim, self.amp = G, D, mopts, z_dim, amp

    def phases(self):
        return [("G", 0), ("D", 0)]

    def _style(self, real):
        """(z, kl): the style code of each real tile through the encoder (SPADE with encoder),
        else Gaussian noise; pix2pix takes none."""
        if self.z_dim == 0:
            return None, None
        if getattr(self.G, "encoder", None) is not None:
            mu, logvar = self.G.encoder(real)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            return z, -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return torch.randn(real.shape[0], self.z_dim, device=real.device), None

    def accumulate_gradients(self, phase: str, batch: dict, do_reg: bool) -> dict:
        real, seg, m, D = batch["real"], batch["seg"], self.m, self.D
        if phase == "G":
            with self.amp():
                z, kl = self._style(real)
                fake = batch["fake"] = self.G(seg, z)
                d_fake = D(fake, seg)
                parts = {}
                if m["method"] == "spade":
                    parts["g_adv"] = -sum(f[-1].float().mean() for f in d_fake) / len(d_fake)
                    with torch.no_grad():
                        d_real = D(real, seg)
                    fm = sum(F.l1_loss(a.float(), b.float().detach()) for fs, rs in zip(d_fake, d_real)
                             for a, b in zip(fs[:-1], rs[:-1]))
                    parts["g_fm"] = m["lambda_fm"] * fm / len(d_fake)
                    if kl is not None:
                        parts["g_kl"] = m["lambda_kl"] * kl.float()
                else:
                    parts["g_adv"] = sum(F.binary_cross_entropy_with_logits(f[-1].float(), torch.ones_like(f[-1].float()))
                                         for f in d_fake) / len(d_fake)
                    parts["g_l1"] = m["lambda_l1"] * F.l1_loss(fake.float(), real)
                loss = sum(parts.values())
            loss.backward()
            return {"loss_G": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
        with self.amp():
            lf = [f[-1].float() for f in D(batch["fake"].detach(), seg)]
            lr = [f[-1].float() for f in D(real, seg)]
            if m["method"] == "spade":
                loss = sum(F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(lr, lf)) / len(lr)
            else:
                loss = 0.5 * sum(F.binary_cross_entropy_with_logits(r, torch.ones_like(r))
                                 + F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)) for r, f in zip(lr, lf)) / len(lr)
        loss.backward()
        return {"loss_D": loss.detach(), "d_real": torch.stack([r.detach().mean() for r in lr]).mean(),
                "d_fake": torch.stack([f.detach().mean() for f in lf]).mean()}

    def tick_extra(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, s: dict) -> None:
        pass
