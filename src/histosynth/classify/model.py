"""The downstream tile classifier: a torchvision architecture trained from scratch (or from
user-supplied weights) with the usual histology augmentations (flips, 90° rotations, mild
colour jitter). The same code serves the augmentation study and the reference classifier
behind the domain feature extractor and concordance."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from histosynth.utils import UserError


def build(arch: str, num_classes: int, weights: str | None = None) -> nn.Module:
    import torchvision

    try:
        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (ValueError, KeyError):
        raise UserError(f"classify.arch {arch!r} is not a torchvision model (e.g. resnet18, mobilenet_v3_small)") from None
    if weights:
        sd = torch.load(weights, map_location="cpu", weights_only=True)
        sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "classifier."))}
        missing = model.load_state_dict(sd, strict=False)
        if len(missing.missing_keys) > 4:
            raise UserError(f"classify.weights {weights}: does not fit {arch} ({len(missing.missing_keys)} keys missing)")
    return model


def penultimate(model: nn.Module) -> nn.Module:
    """The model with its last linear layer replaced by identity (for feature extraction)."""
    import copy

    m = copy.deepcopy(model)
    if hasattr(m, "fc"):
        m.fc = nn.Identity()
    elif hasattr(m, "classifier"):
        m.classifier[-1] = nn.Identity()
    else:
        raise UserError("cannot find the classifier head to remove for feature extraction")
    return m


AUGMENTATIONS = ("flips_jitter", "none", "flips_hed")


def _dihedral(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    k = int(torch.randint(0, 4, (1,), generator=gen))
    x = x.rot90(k, dims=(2, 3))
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


def hed_jitter(x: torch.Tensor, gen: torch.Generator, sigma: float) -> torch.Tensor:
    """H&E stain augmentation as Tellez et al. (Medical Image Analysis 2019): each tile's pixels
    in haematoxylin, eosin and DAB optical densities (Ruifrok's colour deconvolution with
    scikit-image's matrices, densities in natural-log units as the scikit-image of that paper
    returned them) scaled by alpha ~ U(1 - sigma, 1 + sigma) and shifted by beta ~ U(-sigma, sigma)
    per channel and tile, and back to RGB, clipped to the valid range. `x` in [-1, 1]; sigma 0
    returns the tile (up to rounding)."""
    from skimage.color.colorconv import hed_from_rgb, rgb_from_hed

    n = x.shape[0]
    alpha = (1 + (torch.rand(n, 3, generator=gen) * 2 - 1) * sigma).to(x.device)
    beta = ((torch.rand(n, 3, generator=gen) * 2 - 1) * sigma).to(x.device)
    to_hed = torch.as_tensor(hed_from_rgb, dtype=torch.float32, device=x.device)
    to_rgb = torch.as_tensor(rgb_from_hed, dtype=torch.float32, device=x.device)
    rgb = ((x.float() + 1) / 2).clamp_min(1e-6).permute(0, 2, 3, 1)  # N, H, W, 3
    hed = -torch.log(rgb) @ to_hed
    hed = hed * alpha[:, None, None, :] + beta[:, None, None, :]
    out = torch.exp(-(hed @ to_rgb)).clamp(0, 1)
    return (out.permute(0, 3, 1, 2) * 2 - 1).to(x.dtype)


def _augment(x: torch.Tensor, gen: torch.Generator, mode: str = "flips_jitter", hed_sigma: float = 0.05) -> torch.Tensor:
    """The training augmentation; draws from the CPU generator `gen`, applied on x's device.
    flips_jitter: dihedral + brightness/contrast jitter (every arm's default); none; flips_hed:
    dihedral + HED stain jitter."""
    if mode == "none":
        return x
    x = _dihedral(x, gen)
    if mode == "flips_hed":
        return hed_jitter(x, gen, hed_sigma)
    n = x.shape[0]
    b = ((torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2).to(x.device)
    cst = (1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2).to(x.device)
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * cst + mean + b


def normalise(x_uint8: torch.Tensor) -> torch.Tensor:
    return x_uint8.float() / 127.5 - 1


def _autocast(device):
    """bf16 autocast for training on a GPU (tensor cores; the GAN's policy,
    histosynth.torch_utils.distributed.autocast); fp32 on the CPU. Prediction and features
    stay fp32 everywhere: FID and AUC must not depend on the device's precision."""
    from histosynth.torch_utils.distributed import autocast

    return autocast("bf16", torch.device(device))()


DEVICE_TILES_MAX_BYTES = 8 * 2**30  # training tiles held on the GPU up to this size, else sent per batch


def train(tiles_uint8: np.ndarray, labels: np.ndarray, num_classes: int, opts: dict, seed: int, device="cpu",
          progress=False, augment: str = "flips_jitter") -> nn.Module:
    """Train for exactly ``opts['steps']`` steps of ``opts['batch']`` tiles, classes balanced,
    whatever the training set's size: every arm of the study gets the same budget. `augment`:
    one of AUGMENTATIONS (HED jitter of strength ``opts['hed_sigma']``)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build(opts["arch"], num_classes, opts.get("weights")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=opts["lr"], weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=opts["lr"], total_steps=opts["steps"])
    x_all = torch.from_numpy(tiles_uint8).permute(0, 3, 1, 2)
    if torch.device(device).type == "cuda" and x_all.numel() <= DEVICE_TILES_MAX_BYTES:
        x_all = x_all.to(device)  # batches gathered and augmented on the GPU: no loader to starve it
    y_all = torch.from_numpy(labels.astype(np.int64)).to(x_all.device)
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = torch.as_tensor(1.0 / np.maximum(counts[labels], 1))
    model.train()
    for _ in tqdm(range(opts["steps"]), desc="classifier", disable=not progress):
        idx = torch.multinomial(w, opts["batch"], replacement=True, generator=gen)
        idx = idx.to(x_all.device)
        x = _augment(normalise(x_all[idx].to(device, non_blocking=True)), gen, augment, opts.get("hed_sigma", 0.05))
        with _autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y_all[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, tiles_uint8: np.ndarray, device="cpu", batch=256) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(tiles_uint8), batch):
        x = normalise(torch.from_numpy(tiles_uint8[i:i + batch]).permute(0, 3, 1, 2).to(device))
        out.append(torch.softmax(model(x), 1).cpu())  # fp32: predictions and features feed the metrics
    return torch.cat(out).numpy() if out else np.zeros((0, 0))


@torch.no_grad()
def features(model: nn.Module, tiles_uint8: np.ndarray, device="cpu", batch=256) -> np.ndarray:
    feat = penultimate(model).to(device).eval()
    out = []
    for i in range(0, len(tiles_uint8), batch):
        x = normalise(torch.from_numpy(tiles_uint8[i:i + batch]).permute(0, 3, 1, 2).to(device))
        out.append(feat(x).flatten(1).double().cpu())
    return torch.cat(out).numpy()
