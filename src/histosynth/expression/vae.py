"""β-VAE on standardised expression profiles (RNA-GAN's profile embedding).

An MLP encoder to (μ, log σ²) of a `latent`-dimensional Gaussian, an MLP decoder back to the
genes, loss = MSE reconstruction (per gene, summed) + β · KL to N(0, I). Trained on training
patients; the epoch with the lowest validation loss is kept (training patients only when no
validation patients have profiles). Reconstruction error is reported per partition against
the mean-profile baseline (predicting every gene at its training mean, i.e. 0 after
standardising), so "the VAE learnt something" is a number, not a claim.
"""
from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import torch
from torch import nn

log = logging.getLogger(__name__)

META_COLS = ("key", "patient_id", "label", "partition")


class BetaVAE(nn.Module):
    def __init__(self, n_genes: int, hidden=(256, 128), latent=16, dropout=0.1):
        super().__init__()
        enc, d = [], n_genes
        for h in hidden:
            enc += [nn.Linear(d, h), nn.LayerNorm(h), nn.SiLU(), nn.Dropout(dropout)]
            d = h
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(d, latent)
        self.logvar = nn.Linear(d, latent)
        dec, d = [], latent
        for h in reversed(hidden):
            dec += [nn.Linear(d, h), nn.LayerNorm(h), nn.SiLU()]
            d = h
        dec.append(nn.Linear(d, n_genes))
        self.decoder = nn.Sequential(*dec)
        self.n_genes, self.latent = n_genes, latent

    def encode(self, x):
        h = self.encoder(x)
        return self.mu(h), self.logvar(h).clamp(-12, 8)

    def forward(self, x, sample=True):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return self.decoder(z), mu, logvar


def vae_loss(x, recon, mu, logvar, beta):
    rec = ((recon - x) ** 2).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu**2 - logvar.exp())).sum(1).mean()
    return rec + beta * kl, rec, kl


def gene_matrix(profiles: pd.DataFrame) -> np.ndarray:
    return profiles[[c for c in profiles.columns if c not in META_COLS]].to_numpy(np.float32, copy=True)


def train_vae(profiles: pd.DataFrame, opts: dict, progress=True):
    """Returns (model, history, report)."""
    from tqdm import tqdm

    torch.manual_seed(opts["seed"])
    x = torch.from_numpy(gene_matrix(profiles))
    part = profiles["partition"].to_numpy()
    tr = np.isin(part, opts["train_partitions"])
    va = part == "val"
    if not va.any():
        va = tr
    model = BetaVAE(x.shape[1], tuple(opts["hidden"]), opts["latent"], opts["dropout"])
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=opts["weight_decay"])
    gen = torch.Generator().manual_seed(opts["seed"])
    xt, xv = x[tr], x[va]
    best, best_state, history = float("inf"), None, []
    for epoch in tqdm(range(opts["epochs"]), desc="beta-VAE", unit="epoch", disable=not progress):
        model.train()
        # KL warm-up over the first quarter of training avoids posterior collapse early on
        beta = opts["beta"] * min(1.0, (epoch + 1) / max(1, opts["epochs"] // 4))
        perm = torch.randperm(len(xt), generator=gen)
        tot = 0.0
        for i in range(0, len(xt), opts["batch"]):
            b = xt[perm[i:i + opts["batch"]]]
            recon, mu, logvar = model(b)
            loss, rec, kl = vae_loss(b, recon, mu, logvar, beta)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        model.eval()
        with torch.no_grad():
            recon, mu, logvar = model(xv, sample=False)
            _, vrec, vkl = vae_loss(xv, recon, mu, logvar, opts["beta"])
        val = float(vrec + opts["beta"] * vkl)
        history.append({"epoch": epoch + 1, "train_loss": tot / len(xt), "val_loss": val, "val_recon": float(vrec),
                        "val_kl": float(vkl), "beta": beta})
        if epoch >= opts["epochs"] // 4 and val < best:  # select after the warm-up, at the full β
            best, best_state = val, {k: v.clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, history, reconstruction_report(model, profiles)


@torch.no_grad()
def reconstruction_report(model: BetaVAE, profiles: pd.DataFrame) -> dict:
    """Per partition: mean squared error per gene of the reconstruction from μ, against the
    mean-profile baseline (every gene at the training mean, 0 after standardising)."""
    x = torch.from_numpy(gene_matrix(profiles))
    recon, _, _ = model(x, sample=False)
    err = ((recon - x) ** 2).mean(1).numpy()
    base = (x**2).mean(1).numpy()
    out = {}
    for p in sorted(profiles["partition"].unique()):
        m = profiles["partition"].to_numpy() == p
        out[p] = {"n": int(m.sum()), "mse": float(err[m].mean()), "mse_mean_profile": float(base[m].mean()),
                  "r2": float(1 - err[m].sum() / max(base[m].sum(), 1e-12))}
    return out


@torch.no_grad()
def embed(model: BetaVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(μ, σ) of each profile's posterior."""
    mu, logvar = model.encode(torch.from_numpy(np.asarray(x, np.float32)))
    return mu.numpy(), (0.5 * logvar).exp().numpy()


@torch.no_grad()
def decode(model: BetaVAE, z: np.ndarray) -> np.ndarray:
    return model.decoder(torch.from_numpy(np.asarray(z, np.float32))).numpy()


def embedding_frame(model: BetaVAE, profiles: pd.DataFrame) -> pd.DataFrame:
    mu, sd = embed(model, gene_matrix(profiles))
    cols = {f"z_mu_{i:02d}": mu[:, i] for i in range(mu.shape[1])}
    cols.update({f"z_sd_{i:02d}": sd[:, i] for i in range(sd.shape[1])})
    return pd.concat([profiles[list(META_COLS)].reset_index(drop=True), pd.DataFrame(cols)], axis=1)


def save_vae(model: BetaVAE, transform: dict, opts: dict, report: dict, path):
    from histosynth import torchio

    torchio.save(path, {"state": model.state_dict(), "n_genes": model.n_genes, "hidden": list(opts["hidden"]),
                        "latent": model.latent, "dropout": opts["dropout"], "transform": transform, "options": opts,
                        "report": report})


def load_vae(path):
    from histosynth import torchio

    ck = torchio.load(path, "beta-VAE", "re-run the train_vae rule")
    model = BetaVAE(ck["n_genes"], tuple(ck["hidden"]), ck["latent"], ck["dropout"])
    model.load_state_dict(ck["state"])
    model.eval()
    return model, ck["transform"], ck
