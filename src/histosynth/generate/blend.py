"""Class blending as Dolezal et al. analysed it: the class embedding moved from one class to
another in all synthesis layers or only in some (coarse, middle, fine), and the reference
classifier's probability of the second class along the way, with the blend point where it
crosses 0.5.

Layer groups follow StyleGAN's resolutions: coarse 4-8 px, middle 16-32 px, fine 64 px and up
(each w input belongs to the resolution of the layer it drives; groups a network does not
have are left out). A layer-wise blend at t takes the w of the blended condition
``(1 - t) c_a + t c_b`` in the group's layers and the w of ``c_a`` in all others, for the same z.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

GROUPS = {"all": (0, math.inf), "coarse": (0, 8), "middle": (16, 32), "fine": (64, math.inf)}


def layer_resolutions(G) -> list[int]:
    """The resolution each w input of `G` drives (w 0: the 4 px layer; then two per block, the
    last block's toRGB at its resolution)."""
    return [min(4 if i == 0 else 2 ** (2 + (i + 1) // 2), G.img_resolution) for i in range(G.num_ws)]


def layer_groups(G) -> dict[str, list[int]]:
    res = layer_resolutions(G)
    out = {name: [i for i, r in enumerate(res) if lo <= r <= hi] for name, (lo, hi) in GROUPS.items()}
    return {k: v for k, v in out.items() if v}


def blend_ws(G, z, ca, cb, t: float, layers) -> torch.Tensor:
    """w inputs for blend point `t`: the blended condition's w in `layers`, c_a's elsewhere."""
    ws_a = G.mapping(z, ca.expand(len(z), -1))
    ws_t = G.mapping(z, ca.lerp(cb, t).expand(len(z), -1))
    mask = torch.zeros(G.num_ws, dtype=torch.bool, device=z.device)
    mask[list(layers)] = True
    return torch.where(mask.reshape(1, -1, 1), ws_t, ws_a)


def blend_endpoints(spec, vary: str | None = None):
    """(names, c_a, c_b, label of the second end) of the two conditions a blend runs between, or
    None: the first two classes; for attributes runs the first combination and the same with
    attribute `vary` (default the first condition column) at its next value; for expression and
    vector runs the first training profile (patient vector) of each of the first two labels."""
    if spec.kind in ("expression", "vector"):
        table = spec.extra["table"]
        labels = sorted({v["label"] for v in table.values()})
        if len(labels) < 2:
            return None
        ends = [sorted(k for k, v in table.items() if v["label"] == lab)[0] for lab in labels[:2]]
        ca, cb = (torch.from_numpy(spec.key_vectors([k])) for k in ends)
        return [f"{ends[0]} ({labels[0]})", f"{ends[1]} ({labels[1]})"], ca, cb, {"label": labels[1]}
    conds = spec.conditions()
    if spec.kind not in ("class", "attributes") or len(conds) < 2:
        return None
    a = conds[0]
    col = vary if vary in spec.columns else spec.columns[0]
    if len(spec.categories[col]) < 2:
        return None
    b = dict(a, **{col: spec.categories[col][1]})
    ca, cb = (torch.from_numpy(spec.encode(pd.DataFrame([c]))) for c in (a, b))
    return [spec.name(a), spec.name(b)], ca, cb, b


@torch.no_grad()
def layer_blend_frames(G, ca, cb, seeds, steps, layers, device="cpu") -> list[np.ndarray]:
    """uint8 frames (one per blend point, each one image per seed) of a layer-wise blend."""
    from histosynth.generate.sample import z_from_seeds
    from histosynth.torch_utils.images import to_uint8

    z = z_from_seeds(seeds, G.z_dim).to(device)
    ca, cb = ca.to(device), cb.to(device)
    return [to_uint8(G.synthesis(blend_ws(G, z, ca, cb, float(t), layers), noise_mode="const"))
            for t in torch.linspace(0, 1, steps)]


def crossing(ts, p, level=0.5):
    """The first blend point where the curve `p(ts)` reaches `level` (linear between points), or
    None when it never does."""
    ts, p = np.asarray(ts, float), np.asarray(p, float)
    if p[0] >= level:
        return float(ts[0])
    for i in range(1, len(p)):
        if p[i] >= level:
            return float(ts[i - 1] + (level - p[i - 1]) / (p[i] - p[i - 1]) * (ts[i] - ts[i - 1]))
    return None


@torch.no_grad()
def blend_probability(G, spec, model, classes, seeds, steps, device="cpu", target="label") -> dict | None:
    """For each layer group: the reference classifier's (predicting column `target`) probability
    of the second end's class at each blend point (per seed and mean), and where the mean
    crosses 0.5."""
    from histosynth.classify.model import predict

    ends = blend_endpoints(spec, vary=target)
    if ends is None:
        return None
    names, ca, cb, end_b = ends
    if target not in end_b or str(end_b[target]) not in classes:
        return {"skipped": f"the reference classifier predicts {target} ({classes}); the blend from {names[0]!r} to "
                           f"{names[1]!r} does not move that column between two of its classes"}
    value = str(end_b[target])
    ts = np.linspace(0, 1, steps)
    out = {"from": names[0], "to": names[1], "class": value, "target": target, "t": ts.tolist(),
           "seeds": list(map(int, seeds)), "groups": {}}
    for group, layers in layer_groups(G).items():
        frames = layer_blend_frames(G, ca, cb, seeds, steps, layers, device)
        prob = np.stack([predict(model, f, device)[:, classes.index(value)] for f in frames], 1)  # seeds x t
        mean = prob.mean(0)
        out["groups"][group] = {"layers": layers, "p_mean": mean.tolist(), "p_seeds": prob.tolist(),
                                "crossing": crossing(ts, mean),
                                "crossing_seeds": [crossing(ts, row) for row in prob]}
    return out


def probability_plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from histosynth.utils import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for group, g in result["groups"].items():
        line, = ax.plot(result["t"], g["p_mean"], marker="o", ms=3,
                        label=f"{group} (0.5 at {g['crossing']:.2f})" if g["crossing"] is not None else
                        f"{group} (never 0.5)")
        for row in g["p_seeds"]:
            ax.plot(result["t"], row, color=line.get_color(), alpha=0.2, lw=0.8)
    ax.axhline(0.5, color="grey", ls=":", lw=1)
    ax.set_xlabel(f"blend point: {result['from']} (0) to {result['to']} (1)")
    ax.set_ylabel(f"P({result['class']}), reference classifier")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, title="layers blended", title_fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def attribute_rows(spec) -> list[tuple[str, dict, dict]]:
    """(row name, from-condition, to-condition) for per-attribute interpolation: from the first
    combination, one attribute moves to each of its other values while the others stay fixed."""
    if spec.kind != "attributes":
        return []
    base = spec.conditions()[0]
    return [(f"{col}: {base[col]} → {v}", base, dict(base, **{col: v}))
            for col in spec.columns for v in spec.categories[col] if v != base[col]]


@torch.no_grad()
def attribute_grid(G, spec, seed: int, steps: int, device="cpu") -> tuple[np.ndarray, list[str]]:
    """uint8 images (rows x steps, row-major) of per-attribute interpolations for one seed, and
    the row names."""
    rows, names = [], []
    for name, a, b in attribute_rows(spec):
        ca, cb = (torch.from_numpy(spec.encode(pd.DataFrame([c]))) for c in (a, b))
        frames = layer_blend_frames(G, ca, cb, [seed], steps, range(G.num_ws), device)
        rows.append(np.concatenate(frames, 0))
        names.append(name)
    return np.concatenate(rows, 0), names
