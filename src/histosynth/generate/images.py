"""Single images by seed, as NVIDIA's ``generate.py`` makes them: for each seed,
``z = numpy.random.RandomState(seed).randn(1, z_dim)``, the condition as a one-hot class vector
(or the named condition of one of our networks), truncation ψ towards the network's global
mean w, and noise mode const (the layers' stored noise), seeded (noise maps drawn from the seed,
as bulk generation makes its tiles), none, or random (torch's generator, so only const, seeded
and none repeat). The image goes to ``<outdir>/seed<NNNN>.png``."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from histosynth.utils import UserError


def parse_seeds(text: str) -> list[int]:
    """'0-7', '1,3,5' or '0-3,10' -> the seeds, in order."""
    seeds = []
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UserError(f"--seeds {text!r}: write seeds as 0-7, 1,3,5 or 0-3,10 (whole numbers >= 0)")
        a, b = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if b < a:
            raise UserError(f"--seeds {text!r}: the range {a}-{b} runs backwards")
        seeds += range(a, b + 1)
    return seeds


def condition_vector(net, class_name=None, class_index=None) -> torch.Tensor:
    """(1, c_dim) condition: a class (or attribute combination) by name, or a one-hot index."""
    spec, c_dim = net.spec, net.G.c_dim
    if c_dim == 0:
        if class_name is not None or class_index is not None:
            raise UserError(f"{net.path} is unconditional: leave out --class and --class-index")
        return torch.zeros(1, 0)
    if class_name is not None and class_index is not None:
        raise UserError("give --class or --class-index, not both")
    if spec.kind not in ("class", "attributes"):
        raise UserError(f"{net.path} is {spec.kind}-conditioned: its condition is a vector, not a class; generate "
                        f"from profiles with `histosynth generate-profiles`")
    names = [spec.name(c) for c in spec.conditions()]
    if class_name is not None:
        if class_name not in names:
            raise UserError(f"{net.path} has no class {class_name!r}; its classes: {', '.join(names)}")
        cond = spec.conditions()[names.index(class_name)]
        return torch.from_numpy(spec.encode(pd.DataFrame([cond])))
    if class_index is None:
        raise UserError(f"{net.path} is conditional: give --class (one of {', '.join(names)}) or --class-index")
    if spec.kind != "class" or not 0 <= class_index < c_dim:
        raise UserError(f"--class-index {class_index}: this network takes indices 0 to {c_dim - 1} of a one-hot "
                        f"class vector" if spec.kind == "class" else "--class-index needs a one-hot class network; "
                        f"name the attribute combination with --class (one of {', '.join(names)})")
    c = torch.zeros(1, c_dim)
    c[0, class_index] = 1
    return c


@torch.no_grad()
def generate_images(network, seeds, outdir, class_name=None, class_index=None, trunc=1.0, noise_mode="const",
                    device="cpu") -> list[Path]:
    """One PNG per seed; the paths written."""
    from histosynth.gan.checkpoint import load_generator, require_kind
    from histosynth.gan.networks import SeededNoise
    from histosynth.images import save_png
    from histosynth.runs import STYLEGAN2_KINDS
    from histosynth.torch_utils.images import to_uint8

    if noise_mode not in ("const", "seeded", "random", "none"):
        raise UserError(f"--noise-mode {noise_mode!r}: one of const, seeded, random, none")
    net = load_generator(network, device)
    require_kind(net, STYLEGAN2_KINDS, "generate-images")
    c = condition_vector(net, class_name, class_index).to(device)
    out, paths = Path(outdir), []
    for seed in seeds:
        z = torch.from_numpy(np.random.RandomState(seed).randn(1, net.G.z_dim)).to(device, torch.float32)
        img = net.G(z, c, psi=trunc, noise_mode=SeededNoise([seed]) if noise_mode == "seeded" else noise_mode)
        paths.append(out / f"seed{seed:04d}.png")
        save_png(to_uint8(img)[0], paths[-1])
    return paths
