"""Network checkpoints: one file with G, D, G_ema, optimisers, augmentation and RNG states,
the resolved options and the conditioning spec, as tensors and plain data (read with
``weights_only=True``, see histosynth.torchio). Written atomically."""
from __future__ import annotations

import random

import numpy as np
import torch

from histosynth import torchio
from histosynth.gan.conditioning import ConditioningSpec
from histosynth.gan.networks import Generator


def rng_state():
    """Every generator's state as tensors and plain data (numpy's key array as an int64 tensor)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                       int(has_gauss), float(cached)),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    name, keys, pos, has_gauss, cached = s["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.int64).astype(np.uint32), pos, has_gauss, cached))
    random.setstate(tuple(s["python"]))
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(path, state: dict) -> None:
    torchio.save(path, state)


def load(path) -> dict:
    return torchio.load(path, "network checkpoint", "train it again with the train_gan rule (for a resume point, "
                        "delete results/gan/<run>/checkpoint.pt to start over)")


def generator_from_checkpoint(path, device="cpu"):
    """(G_ema, conditioning spec, options) from a checkpoint: all generation needs."""
    ck = load(path)
    opts = ck["options"]
    spec = ConditioningSpec.from_dict(ck["conditioning"])
    G = build_generator(opts, spec.dim)
    G.load_state_dict(ck["G_ema"])
    return G.to(device).eval().requires_grad_(False), spec, opts


def build_generator(opts, c_dim):
    return Generator(opts["z_dim"], c_dim, opts["w_dim"], opts["resolution"], opts["channel_base"],
                     opts["channel_max"], opts["mapping_layers"])
