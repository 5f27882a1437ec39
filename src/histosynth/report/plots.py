"""Figures for the report (matplotlib, Agg backend), written as PNG."""
from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from histosynth.utils import atomic_path  # noqa: E402


def _save(fig, path):
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def study_plot(metrics: dict, path, key="auc"):
    arms = list(metrics)
    fig, ax = plt.subplots(figsize=(max(4, 1.1 * len(arms)), 3.2))
    for i, a in enumerate(arms):
        m = metrics[a]
        lo, hi = m[f"{key}_ci95"]
        ax.errorbar(i, m[key], yerr=[[m[key] - lo], [hi - m[key]]], fmt="o", capsize=4,
                    color="tab:blue" if a.startswith("real") else ("tab:red" if a.startswith("synthetic") else "tab:purple"))
    ax.set_xticks(range(len(arms)), arms, rotation=30, ha="right")
    ax.set_ylabel(f"test {key.upper()} (95% CI, patients)")
    ax.set_title("Augmentation study on held-out real patients")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def training_plot(stats_jsonl, path):
    rows = [json.loads(line) for line in open(stats_jsonl) if line.strip()]
    fig, ax = plt.subplots(1, 2, figsize=(8, 3))
    k = [r["kimg"] for r in rows]
    ax[0].plot(k, [r["loss_G"] for r in rows], label="G")
    ax[0].plot(k, [r["loss_D"] for r in rows], label="D")
    ax[0].set_xlabel("kimg"); ax[0].set_ylabel("loss"); ax[0].legend()
    ax[1].plot(k, [r["augment_p"] for r in rows], label="augment p")
    ax[1].set_xlabel("kimg"); ax[1].legend()
    _save(fig, path)
