"""The expression profiles an expression-conditioned network generates from: held-out cohort
embeddings, new raw profiles through the beta-VAE, and samples of the VAE's prior."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from histosynth.utils import UserError


def profile_sets(embeddings, partitions, profiles, vae, vae_samples, out_sampled, seed0):
    """(vectors, names, metadata) of the profiles to generate from: held-out cohort embeddings,
    a CSV of raw profiles through the VAE, and samples of the VAE's prior (written to `out_sampled`)."""
    import pandas as pd

    from histosynth.slides.store import read_index
    from histosynth.utils import atomic_path

    vecs, names, metas = [], [], []
    if embeddings:
        emb = read_index(embeddings)
        emb = emb[emb["partition"].isin(partitions)]
        mu = emb[[c for c in emb.columns if c.startswith("z_mu_")]].to_numpy(np.float32)
        for k, lab, v in zip(emb["key"], emb["label"], mu):
            vecs.append(v)
            names.append(str(k))
            metas.append({"label": str(lab), "expression_key": str(k)})
    if profiles or vae_samples:
        if not vae:
            raise UserError("--profiles and --vae-samples need --vae (results/expression/vae.pt)")
        from histosynth.expression.io import read_csv_matrix
        from histosynth.expression.prepare import apply_transform
        from histosynth.expression.vae import decode, embed, load_vae

        model, transform, _ = load_vae(vae)
        if profiles:
            raw, _ = read_csv_matrix(profiles)
            mu, _ = embed(model, apply_transform(raw, transform).to_numpy())
            for sid, v in zip(raw.index, mu):
                vecs.append(v)
                names.append(f"profile-{sid}")
                metas.append({"label": "", "expression_key": f"profile-{sid}"})
        if vae_samples:
            z = np.random.RandomState(seed0).randn(vae_samples, model.latent).astype(np.float32)
            prof = decode(model, z) * np.asarray(transform["std"]) + np.asarray(transform["mean"])
            if out_sampled:
                df = pd.DataFrame(prof, columns=transform["genes"], index=[f"vae-sample-{i:03d}" for i in range(len(z))])
                df.index.name = "sample_id"
                with atomic_path(out_sampled) as tmp:  # log-space values, as the VAE models them
                    df.to_csv(tmp)
            for i, v in enumerate(z):
                vecs.append(v)
                names.append(f"vae-sample-{i:03d}")
                metas.append({"label": "", "expression_key": f"vae-sample-{i:03d}"})
    if out_sampled and not vae_samples:
        with atomic_path(out_sampled) as tmp:
            Path(tmp).write_text("sample_id\n")
    if not vecs:
        raise UserError("nothing to generate: give --embeddings with --partitions, --profiles or --vae-samples")
    return vecs, names, metas
