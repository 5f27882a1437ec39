"""Real tiles into a conditional StyleGAN2: projection, reconstruction quality, counterfactuals.

**Projection** follows the procedure of stylegan2-ada's projector (Karras et al. 2020), written
here for conditional networks: for a tile of condition c, start at the condition's mean w
(``w_avg_samples`` z's mapped with c), optimise w (or one w per layer, ``w_plus``) and, with
``noise: optimise``, the per-layer noise maps, with Adam under a learning-rate ramp (up over the
first 5% of steps, cosine down over the last 25%) and Gaussian noise added to w that decays to
zero by 75% of the steps (its scale the spread of the condition's w's); w is optimised in units of
that spread per coordinate, so the learning rate means the same for every network. The loss is the pixel
MSE plus a perceptual distance, 1 - cosine similarity of the reference classifier's penultimate
features (a network available offline, trained on the cohort's own tiles), plus the noise maps'
autocorrelation at every scale (stylegan2-ada's noise regularisation), the maps renormalised to
zero mean and unit variance after each step. ``noise: const`` keeps the network's constant noise.

**Quality** of a reconstruction: PSNR and SSIM (scikit-image, Gaussian 11-tap window sigma 1.5,
as Wang et al.) on the uint8 tiles, and the perceptual distance.

**Counterfactuals.** In a conditional mapping network the condition enters with z, so "the same
w under another condition" is the projected w moved by the difference of the two conditions'
mean w's, ``w + t (w_target - w_source)``: in every layer, or only in the coarse, middle or fine
layers (the groups of ``blend_analysis``), with the reference classifier's probability of the
target class at each t and where it crosses 0.5. The other condition: the next class (class
runs), the next value of one attribute (attributes runs), or the first training patient's
profile of the next label (expression and vector runs: towards another patient's embedding).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from histosynth.generate.blend import crossing, layer_groups


@torch.no_grad()
def condition_w_stats(G, c: torch.Tensor, n: int = 2000, seed: int = 0):
    """(mean w (w_dim,), scalar spread sqrt(E|w - mean|^2)) of condition `c` (1, c_dim)."""
    z = torch.from_numpy(np.random.RandomState(seed).randn(n, G.z_dim).astype(np.float32)).to(c.device)
    w = G.mapping(z, c.expand(n, -1))[:, 0].float()
    mean = w.mean(0)
    return mean, float(((w - mean) ** 2).sum(1).mean().sqrt())


def _noise_layers(G) -> list:
    return [m for m in G.synthesis.modules() if "noise_const" in getattr(m, "_buffers", {})]


def _noise_reg(maps) -> torch.Tensor:
    """stylegan2-ada's noise regularisation: squared autocorrelation at shift 1 in x and y, at
    every scale down to 8 px."""
    loss = 0.0
    for n in maps:
        n = n[None, None]
        while True:
            loss = loss + (n * torch.roll(n, 1, 3)).mean() ** 2 + (n * torch.roll(n, 1, 2)).mean() ** 2
            if n.shape[2] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return loss


def perceptual(model):
    """A differentiable feature function of images in [-1, 1] (N, 3, H, W): the reference
    classifier's penultimate layer (its input convention is the same [-1, 1] range)."""
    from histosynth.classify.model import penultimate

    feat = penultimate(model).eval()
    for p in feat.parameters():
        p.requires_grad_(False)
    return lambda x: feat(x).flatten(1)


def project(G, target: torch.Tensor, c: torch.Tensor, *, steps: int = 500, w_plus: bool = False,
            noise: str = "optimise", features=None, lr: float = 0.1, pixel_weight: float = 1.0,
            feature_weight: float = 1.0, noise_weight: float = 1e5, w_avg_samples: int = 2000, seed: int = 0):
    """Project one tile `target` (3, H, W) in [-1, 1] of condition `c` (1, c_dim) into G.
    Returns (ws (num_ws, w_dim), reconstruction (3, H, W) in [-1, 1], loss history)."""
    dev = target.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    w_avg, w_std = condition_w_stats(G, c, w_avg_samples, seed)
    # optimised in units of the condition's per-coordinate spread, so `lr` means the same for every network
    scale = max(w_std, 1e-8) / math.sqrt(G.w_dim)
    u = torch.zeros(1, G.num_ws if w_plus else 1, G.w_dim, device=dev, requires_grad=True)
    layers = _noise_layers(G)
    saved = [m._buffers["noise_const"] for m in layers]
    maps = []
    if noise == "optimise":
        for m in layers:
            t = torch.randn(m._buffers["noise_const"].shape, generator=gen).to(dev).requires_grad_(True)
            m._buffers["noise_const"] = t
            maps.append(t)
    elif noise != "const":
        raise ValueError(f"noise must be 'optimise' or 'const', not {noise!r}")
    opt = torch.optim.Adam([u] + maps, lr=lr, betas=(0.9, 0.999))
    want = features(target[None]) if features is not None else None
    history = []
    try:
        for step in range(steps):
            t = step / steps
            w_noise_scale = w_std * 0.05 * max(0.0, 1.0 - t / 0.75) ** 2
            ramp = min(1.0, (1.0 - t) / 0.25)
            ramp = (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, t / 0.05)
            for g in opt.param_groups:
                g["lr"] = lr * ramp
            w_opt = w_avg + scale * u
            w_noise = torch.randn(w_opt.shape, generator=gen).to(dev) * w_noise_scale
            ws = (w_opt + w_noise).expand(1, G.num_ws, -1)
            img = G.synthesis(ws, noise_mode="const").float()
            loss = pixel_weight * F.mse_loss(img, target[None])
            if want is not None:
                loss = loss + feature_weight * (1 - F.cosine_similarity(features(img.clamp(-1, 1)), want).mean())
            if maps:
                loss = loss + noise_weight * _noise_reg(maps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                for n in maps:
                    n -= n.mean()
                    n /= n.square().mean().sqrt()
            history.append(float(loss.detach()))
        with torch.no_grad():
            ws = (w_avg + scale * u).detach().expand(1, G.num_ws, -1)
            recon = G.synthesis(ws, noise_mode="const").float().clamp(-1, 1)[0]
            kept_noise = [n.detach().clone() for n in maps]
    finally:
        for m, b in zip(layers, saved):
            m._buffers["noise_const"] = b
    return ws[0], recon, history, kept_noise


def synthesise(G, ws: torch.Tensor, noise_maps=None) -> torch.Tensor:
    """Images (N, 3, H, W) in [-1, 1] of ws (N, num_ws, w_dim), with the projection's noise maps
    in place of the network's constant noise when given."""
    layers = _noise_layers(G)
    saved = [m._buffers["noise_const"] for m in layers]
    try:
        if noise_maps:
            for m, n in zip(layers, noise_maps):
                m._buffers["noise_const"] = n
        with torch.no_grad():
            return G.synthesis(ws, noise_mode="const").float().clamp(-1, 1)
    finally:
        for m, b in zip(layers, saved):
            m._buffers["noise_const"] = b


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) in [-1, 1] -> uint8 HWC."""
    x = x[None] if x.ndim == 3 else x
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def quality(real: np.ndarray, recon: np.ndarray) -> dict:
    """PSNR (dB) and SSIM of two uint8 HWC tiles (scikit-image; SSIM with the Gaussian window of
    Wang et al.)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    psnr = float(peak_signal_noise_ratio(real, recon, data_range=255)) if (real != recon).any() else math.inf
    ssim = float(structural_similarity(real, recon, channel_axis=-1, data_range=255, gaussian_weights=True,
                                       sigma=1.5, use_sample_covariance=False))
    return {"psnr": psnr, "ssim": ssim}


@torch.no_grad()
def counterfactual(G, ws: torch.Tensor, direction: torch.Tensor, model, class_index: int, steps: int,
                   noise_maps=None) -> dict:
    """The projected ws moved by t * direction (t from 0 to 1) in each layer group: the reference
    classifier's probability of class `class_index` at each t, its 0.5 crossing, and the images."""
    ts = np.linspace(0, 1, steps)
    out = {}
    for group, layers in layer_groups(G).items():
        mask = torch.zeros(G.num_ws, 1, device=ws.device)
        mask[layers] = 1
        batch = torch.stack([ws + float(t) * mask * direction for t in ts])
        imgs = synthesise(G, batch, noise_maps)
        p = torch.softmax(model(imgs), 1)[:, class_index].cpu().numpy()
        out[group] = {"p": p.tolist(), "crossing": crossing(ts, p), "images": to_uint8(imgs)}
    return out


def _ci(v) -> list:
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return [float("nan"), float("nan")]
    h = 1.96 * v.std(ddof=1) / math.sqrt(len(v))
    return [float(v.mean() - h), float(v.mean() + h)]


def choose_tiles(tiles, column: str, values: list, n: int, partition: str, seed: int):
    """`n` kept tiles of `partition`, spread evenly over the values of `column` (seeded)."""
    import pandas as pd

    t = tiles[tiles["kept"].astype(bool) & (tiles["partition"] == partition)]
    t = t[t[column].astype(str).isin(values)]
    per = -(-n // max(1, len(values)))
    parts = [g.sample(min(per, len(g)), random_state=seed) for _, g in t.groupby(t[column].astype(str), sort=True)]
    if not parts:
        return t.iloc[:0]
    return pd.concat(parts).sort_values([column, "slide_id", "y", "x"]).head(n)


def _profile_target(spec, label: str, values: list):
    """(name, vector, label) of the counterfactual for a tile of `label` in an expression or
    vector run: the first training profile (patient vector) of the next label."""
    table = spec.extra["table"]
    nxt = values[(values.index(label) + 1) % len(values)] if label in values else values[0]
    key = sorted(k for k, v in table.items() if v["label"] == nxt)[0]
    return f"{key} ({nxt})", np.asarray(table[key]["mu"], np.float32)[None], nxt


def run_projection(network, tiles, reference, o: dict, device="cpu", progress=True, embeddings=None):
    """Project `o["tiles"]` real tiles of the split `tiles` into the network (see the module's
    docstring). Class and attributes runs change one condition column to its next value;
    expression and vector runs move towards the first training profile of the next label
    (`embeddings`: the β-VAE embeddings, for expression runs). Returns (summary dict, per-tile
    table, arrays for the npz)."""
    import time

    import pandas as pd
    from tqdm import tqdm

    from histosynth.classify.study import load_reference
    from histosynth.generate.sample import stylegan2_network
    from histosynth.slides.store import load_tiles
    from histosynth.utils import UserError

    G, spec, _ = stylegan2_network(network, device)
    if spec.kind not in ("class", "attributes", "expression", "vector"):
        raise UserError(f"{network} is {spec.kind}-conditioned: projection needs a conditional StyleGAN2 (class, "
                        f"attributes, expression or vector) for its counterfactuals")
    model, classes, ref = load_reference(reference, device)
    target = ref.get("target", "label")
    profiles = spec.kind in ("expression", "vector")
    if spec.kind == "expression":
        if embeddings is None:
            raise UserError(f"{network} is expression-conditioned: projection needs the β-VAE embeddings "
                            f"(--embeddings results/expression/embeddings.parquet)")
        from histosynth.expression.prepare import attach_embeddings

        tiles = attach_embeddings(tiles, pd.read_parquet(embeddings))
    if profiles:
        col = "label"
        values = sorted({v["label"] for v in spec.extra["table"].values()})
        if "label" not in tiles.columns or len(values) < 2:
            raise UserError(f"{network}: its training profiles carry fewer than two labels ({values}); there is no "
                            f"counterfactual profile of another label")
    else:
        col = spec.columns[0] if spec.kind == "class" else (o["attribute"] or target)
        if col not in spec.columns:
            raise UserError(f"generate.project.attribute {col!r} is not a condition column of {network} "
                            f"({spec.columns})")
        values = spec.categories[col]
        if len(values) < 2:
            raise UserError(f"{network}: condition column {col!r} has one value ({values}); there is no "
                            f"counterfactual")
    missing = [c for c in spec.columns if c not in tiles.columns]
    if missing:
        raise UserError(f"the tile index has no column {missing} that {network} is conditioned on")
    chosen = choose_tiles(tiles, col, values, o["tiles"], o["partition"], o["seed"])
    if not profiles:
        for c in spec.columns:
            chosen = chosen[chosen[c].astype(str).isin(spec.categories[c])]
    if chosen.empty:
        raise UserError(f"no kept tile of partition {o['partition']!r} with a {col} the network knows ({values}); "
                        f"change generate.project.partition")
    real = load_tiles(chosen)
    if real.shape[1] != G.img_resolution:
        raise UserError(f"tiles are {real.shape[1]} px but {network} makes {G.img_resolution} px tiles")
    judged = target == col  # the reference predicts the column the counterfactual changes
    feat = perceptual(model)
    stats = {}

    def mean_w(name, vec):
        if name not in stats:
            stats[name] = condition_w_stats(G, torch.from_numpy(vec).to(device), seed=o["seed"])[0]
        return stats[name]

    rows, ws_all, recon_all, cf_all, base_all = [], [], [], [], []
    t0 = time.perf_counter()
    for k, (_, r) in enumerate(tqdm(list(chosen.iterrows()), desc="projecting", unit="tile", disable=not progress)):
        if profiles:
            own_vec = spec.encode(pd.DataFrame([r]))
            key = r["expression_key"] if spec.kind == "expression" else r["patient_id"]
            own_name = f"{key} ({r['label']})"
            other_name, other_vec, other_value = _profile_target(spec, str(r["label"]), values)
        else:
            own = {c: str(r[c]) for c in spec.columns}
            other = dict(own, **{col: values[(values.index(own[col]) + 1) % len(values)]})
            own_vec, other_vec = (spec.encode(pd.DataFrame([d])) for d in (own, other))
            own_name, other_name, other_value = spec.name(own), spec.name(other), other[col]
        c = torch.from_numpy(own_vec).to(device)
        x = torch.from_numpy(real[k]).permute(2, 0, 1).float().to(device) / 127.5 - 1
        ws, recon, hist, maps = project(G, x, c, steps=o["steps"], w_plus=o["w_plus"], noise=o["noise"], features=feat,
                                        lr=o["lr"], pixel_weight=o["pixel_weight"], feature_weight=o["feature_weight"],
                                        noise_weight=o["noise_weight"], seed=o["seed"] + k)
        w_own = mean_w(own_name, own_vec)
        base = synthesise(G, w_own.reshape(1, 1, -1).expand(1, G.num_ws, -1))[0]
        with torch.no_grad():
            f = feat(torch.stack([x, recon, base]))
            fd = (1 - F.cosine_similarity(f[:1], f[1:])).cpu().numpy()
        rec8, base8 = to_uint8(recon)[0], to_uint8(base)[0]
        q, qb = quality(real[k], rec8), quality(real[k], base8)
        direction = (mean_w(other_name, other_vec) - w_own).reshape(1, -1)
        judge = judged and str(other_value) in classes
        cf = counterfactual(G, ws, direction, model, classes.index(str(other_value)) if judge else 0,
                            o["counterfactual_steps"], maps)
        row = {"slide_id": r["slide_id"], "patient_id": r["patient_id"], "x": int(r["x"]), "y": int(r["y"]),
               "condition": own_name, "counterfactual": other_name, "psnr": q["psnr"], "ssim": q["ssim"],
               "feature_distance": float(fd[0]), "mean_image_psnr": qb["psnr"], "mean_image_ssim": qb["ssim"],
               "mean_image_feature_distance": float(fd[1]), "final_loss": hist[-1] if hist else float("nan")}
        for g, v in cf.items():
            if judge:
                row.update({f"p_{g}_start": v["p"][0], f"p_{g}_end": v["p"][-1],
                            f"crossing_{g}": np.nan if v["crossing"] is None else v["crossing"]})
        rows.append(row)
        ws_all.append(ws.cpu().numpy())
        recon_all.append(rec8)
        base_all.append(base8)
        cf_all.append(np.stack([v["images"][-1] for v in cf.values()]))
    seconds = time.perf_counter() - t0
    table = pd.DataFrame(rows)
    groups = list(layer_groups(G))
    summary = {"n_tiles": len(table), "partition": o["partition"], "steps": o["steps"], "w_plus": o["w_plus"],
               "noise": o["noise"], "column": col, "seconds_per_tile": seconds / max(1, len(table)),
               "perceptual": "reference classifier penultimate features (1 - cosine)",
               "reconstruction": {m: float(table[m].mean()) for m in ("psnr", "ssim", "feature_distance")},
               "reconstruction_ci95": {m: _ci(table[m]) for m in ("psnr", "ssim", "feature_distance")},
               "mean_image": {m: float(table[f"mean_image_{m}"].mean()) for m in ("psnr", "ssim", "feature_distance")},
               "better_than_mean_image": float((table["psnr"] > table["mean_image_psnr"]).mean()),
               "groups": groups, "counterfactual": {}}
    if judged and f"p_{groups[0]}_end" in table.columns:
        for g in groups:
            s, e, cr = table[f"p_{g}_start"], table[f"p_{g}_end"], table[f"crossing_{g}"]
            summary["counterfactual"][g] = {"p_target_start": float(s.mean()), "p_target_end": float(e.mean()),
                                            "moved_towards_target": float((e > s).mean()),
                                            "crossed": float(cr.notna().mean()),
                                            "crossing_mean": float(cr.mean()) if cr.notna().any() else None}
    else:
        summary["counterfactual_skipped"] = (f"the reference classifier predicts {target} ({classes}), not the "
                                             f"{col} the counterfactual changes: images without probabilities")
    arrays = {"ws": np.stack(ws_all), "real": real, "reconstruction": np.stack(recon_all),
              "mean_image": np.stack(base_all), "counterfactual": np.stack(cf_all),
              "groups": np.array(groups)}
    return summary, table, arrays


def projection_grid(arrays: dict, n: int) -> tuple[np.ndarray, int]:
    """A row per tile: real, reconstruction, class-mean image, then the counterfactual (t = 1) of
    each layer group; returns (images, rows) for images.grid."""
    k = min(n, len(arrays["real"]))
    cols = [arrays["real"][:k], arrays["reconstruction"][:k], arrays["mean_image"][:k]]
    cols += [arrays["counterfactual"][:k, g] for g in range(arrays["counterfactual"].shape[1])]
    return np.stack(cols, 1).reshape(-1, *arrays["real"].shape[1:]), k
