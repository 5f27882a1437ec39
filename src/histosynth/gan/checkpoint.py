"""Network checkpoints: one file with G, D, G_ema, optimisers, augmentation and RNG states,
the resolved options and the conditioning spec. Written atomically."""
from __future__ import annotations

import random

import numpy as np
import torch

from histosynth.gan.conditioning import ConditioningSpec
from histosynth.gan.networks import Generator
from histosynth.utils import UserError, atomic_path


def rng_state():
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])
    if s.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def save(path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load(path, map_location="cpu") -> dict:
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise UserError(f"network checkpoint {path} does not exist; run the train_gan rule first") from None
    except Exception as exc:
        raise UserError(f"cannot read network checkpoint {path}: {exc}. It may be truncated; re-run train_gan.") from None


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
