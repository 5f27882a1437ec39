"""Figures for the report (matplotlib, Agg backend), written as PNG."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from histosynth.images import save_png, tile_rows  # noqa: E402
from histosynth.utils import atomic_path  # noqa: E402


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def study_plot(metrics: dict, path, key="auc"):
    arms = list(metrics)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(arms)), 3.2))
    folds = any("folds" in m for m in metrics.values())
    for i, a in enumerate(arms):
        m = metrics[a]
        lo, hi = m[f"{key}_ci95"]
        ax.errorbar(i, m[key], yerr=[[m[key] - lo], [hi - m[key]]], fmt="o", capsize=4,
                    color="tab:blue" if a.startswith("real") else ("tab:red" if a.startswith("synthetic") else "tab:purple"))
        if "folds" in m:  # cross-validation: each fold's value beside the mean
            vals = [f[key] for f in m["folds"]]
            ax.scatter(np.full(len(vals), i + 0.18), vals, marker="x", s=18, color="0.45", zorder=3,
                       label="one fold" if i == 0 else None)
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel(f"test {key.upper()} (95% CI, patients)")
    if folds:
        n = max(len(m.get("folds", [])) for m in metrics.values())
        ax.set_title(f"Augmentation study, {n}-fold cross-validation by patient")
        ax.legend(fontsize=8, loc="best")
    else:
        ax.set_title("Augmentation study on held-out real patients")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def training_plot(stats_jsonl, path, metrics_jsonl=None, selection: dict | None = None):
    """Losses and augmentation (or a mask run's loss terms) by kimg; with snapshot metrics
    (metrics.jsonl), a third panel of each metric by snapshot, the selected snapshot marked."""
    rows = [json.loads(line) for line in open(stats_jsonl) if line.strip()]
    snaps = [json.loads(line) for line in open(metrics_jsonl) if line.strip()] if metrics_jsonl else []
    fig, ax = plt.subplots(1, 3 if snaps else 2, figsize=(12 if snaps else 8, 3))
    k = [r["kimg"] for r in rows]
    ax[0].plot(k, [r["loss_G"] for r in rows], label="G")
    ax[0].plot(k, [r["loss_D"] for r in rows], label="D")
    ax[0].set_xlabel("kimg")
    ax[0].set_ylabel("loss")
    ax[0].legend()
    if not rows:
        ax[0].set_title("no training ticks (an imported network)")
    if rows and "augment_p" in rows[0]:
        ax[1].plot(k, [r["augment_p"] for r in rows], label="augment p")
    else:  # mask runs: the generator's loss terms
        for key in ("g_adv", "g_fm", "g_l1", "g_kl"):
            if rows and rows[0].get(key) is not None:
                ax[1].plot(k, [r[key] for r in rows], label=key)
    ax[1].set_xlabel("kimg")
    ax[1].legend()
    if snaps:
        sk, a = [s["kimg"] for s in snaps], ax[2]
        for key in ("fid", "kid"):
            if key in snaps[0]:
                a.plot(sk, [s[key] for s in snaps], marker="o", label=key)
        if "precision" in snaps[0]:
            b = a.twinx() if ("fid" in snaps[0] or "kid" in snaps[0]) else a
            for key, style in (("precision", "s--"), ("recall", "^--")):
                b.plot(sk, [s[key] for s in snaps], style, label=key, alpha=0.7)
            b.set_ylim(0, 1)
            b.legend(fontsize=7, loc="upper right")
        if selection and selection.get("kimg") is not None:
            a.axvline(selection["kimg"], color="k", ls=":", lw=1,
                      label=f"selected: {selection['choice']} ({selection['kimg']:g} kimg)")
        a.set_xlabel("kimg")
        a.set_title(f"snapshot metrics ({snaps[0]['extractor'].rsplit('-', 1)[0]} features, {snaps[0]['n_fake']} "
                    f"generated tiles)", fontsize=9)
        a.legend(fontsize=7, loc="upper left")
    _save(fig, path)


def vae_plot(history: list[dict], report: dict, path):
    """β-VAE: losses by epoch, and reconstruction error per partition against the mean profile."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    ep = [h["epoch"] for h in history]
    a.plot(ep, [h["train_loss"] for h in history], label="train loss")
    a.plot(ep, [h["val_loss"] for h in history], label="validation loss")
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.legend()
    a.set_title("β-VAE training")
    parts = list(report)
    xs = range(len(parts))
    b.bar([x - 0.2 for x in xs], [report[p]["mse"] for p in parts], 0.4, label="β-VAE reconstruction")
    b.bar([x + 0.2 for x in xs], [report[p]["mse_mean_profile"] for p in parts], 0.4, label="mean profile")
    b.set_xticks(list(xs), [f"{p} (n={report[p]['n']})" for p in parts])
    b.set_ylabel("MSE per gene (standardised)")
    b.legend()
    b.set_title("reconstruction by partition")
    _save(fig, path)


def profile_grid(index, path, per_row=8):
    """One row of generated tiles per profile (`condition`)."""
    from histosynth.slides.store import load_tiles

    rows = []
    for _, g in index.groupby("condition", sort=True):
        rows.append(list(load_tiles(g.head(per_row))))
    save_png(tile_rows(rows), path)


def heldout_grid(real, x_real, fake, x_fake, key, path, per_side=6, max_keys=8):
    """Per held-out profile: its real tiles, then tiles generated from its profile."""
    import numpy as np

    rows = []
    for k in sorted(set(fake["expression_key"]))[:max_keys]:
        r = x_real[np.flatnonzero((real[key] == k).to_numpy())[:per_side]]
        f = x_fake[np.flatnonzero((fake["expression_key"] == k).to_numpy())[:per_side]]
        if len(r) and len(f):
            gap = np.full_like(r[0], 255)
            rows.append(list(r) + [gap] + list(f))
    if rows:
        save_png(tile_rows(rows), path)
