"""Network checkpoints, one format for every kind of run.

A checkpoint (``checkpoint.pt``, the resume point, and ``network.pt``, the final one) is a dict
of tensors and plain data, read with ``torch.load(weights_only=True)`` (histosynth.torchio), so
opening a network file someone sent you cannot execute code from it:

  format, version        "histosynth-gan", 3
  imported               (networks from other tools) {"source", "md5", "tool"}: see histosynth.gan.imports
  kind                   class | attributes | vector | expression | none | mask
  G, D, G_ema            state dicts
  opt_G, opt_D, loss     optimiser states; the loss object's state (ADA p, path-length mean)
  cur_nimg, step, rng, sample_gen   progress and every rank's random-number states
  options                the run's resolved gan options
  conditioning           (StyleGAN2 kinds) the conditioning spec
  mask_options, labels, z_dim       (mask runs) the masks section, label set, style-code size
  training_set           {"n_tiles", "patients"}: whom the network has seen

:func:`load_generator` builds the EMA generator of any kind from it. Checkpoints of the first
format (before runs were unified: no ``format`` key) are read and converted on loading; StyleGAN2
networks of versions 1 and 2 (the earlier bilinear architecture) are refused with what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from histosynth import torchio
from histosynth.utils import UserError

FORMAT, VERSION = "histosynth-gan", 3
ARCHITECTURE_VERSION = 3  # StyleGAN2 kinds: stylegan2-ada's layout and FIR resampling from version 3 on
HINT = ("train it again with the train_gan rule (for a resume point, delete results/gan/<run>/checkpoint.pt to "
        "start over)")


def training_state(kind: str, **fields) -> dict:
    return {"format": FORMAT, "version": VERSION, "kind": kind, **fields}


def save(path, state: dict) -> None:
    torchio.save(path, state)


def _upgrade(ck: dict, path) -> dict:
    """The current format from a checkpoint of any earlier one; refuses what is not a network."""
    if ck.get("format") == FORMAT:
        if ck.get("version", 0) > VERSION:
            raise UserError(f"{path}: network format version {ck['version']} is newer than this histosynth reads "
                            f"({VERSION}); update histosynth")
    elif not {"G_ema", "options"} <= set(ck):
        raise UserError(f"{path} is not a histosynth GAN network (no G_ema/options); give a results/gan/<run>/network.pt")
    else:
        ck = dict(ck)  # version 1: the mask run marked itself kind "mask"; ADA state and pl_mean at the top level
        kind = "mask" if ck.get("kind") == "mask" else ck["conditioning"]["kind"]
        loss = {k: ck.pop(k) for k in ("augment", "pl_mean") if k in ck}
        ck = training_state(kind, **{k: v for k, v in ck.items() if k != "kind"}, loss=loss)
        ck["version"] = 1
    if ck["kind"] != "mask" and ck["version"] < ARCHITECTURE_VERSION:
        raise UserError(f"{path}: a StyleGAN2 network of histosynth's earlier architecture (bilinear resampling, "
                        f"format version {ck['version']}), which stylegan2-ada's (FIR filters, its module layout) "
                        f"replaced in version {ARCHITECTURE_VERSION}; {HINT}")
    return dict(ck, version=VERSION)


def load(path) -> dict:
    return _upgrade(torchio.load(path, "network checkpoint", HINT), path)


def read_metadata(path) -> dict:
    """The checkpoint's plain data (kind, options, conditioning, training set...) without reading
    its weights into memory (memory-mapped)."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file: torchio.load says what is wrong with it
        ck = torchio.load(path, "network checkpoint", HINT)
    ck = _upgrade(ck, path)
    return {k: v for k, v in ck.items() if k not in ("G", "D", "G_ema", "opt_G", "opt_D", "rng", "sample_gen")}


@dataclass
class Network:
    """A trained generator and what generation needs to drive it."""

    G: torch.nn.Module  # G_ema, in eval mode, no gradients
    kind: str
    options: dict
    spec: object | None = None  # ConditioningSpec (StyleGAN2 kinds)
    labels: object | None = None  # LabelSet (mask runs)
    mask_options: dict | None = None
    z_dim: int = 0
    path: Path | None = None


def load_generator(path, device="cpu", ck: dict | None = None) -> Network:
    """The EMA generator of the network at `path`, of any kind (`ck`: the checkpoint already
    loaded from `path`, so it is not read twice)."""
    ck = _upgrade(ck, path) if ck is not None else load(path)
    opts = ck["options"]
    if ck["kind"] == "mask":
        from histosynth.gan.mask_networks import build_mask_generator
        from histosynth.masks.labels import LabelSet

        labels = LabelSet.from_config(ck["labels"])
        G = build_mask_generator(ck["mask_options"], len(labels), opts["resolution"], ck["z_dim"])
        net = Network(G, "mask", opts, labels=labels, mask_options=ck["mask_options"], z_dim=ck["z_dim"])
    else:
        from histosynth.gan.conditioning import ConditioningSpec
        from histosynth.gan.networks import build_generator

        spec = ConditioningSpec.from_dict(ck["conditioning"])
        net = Network(build_generator(opts, spec.dim), spec.kind, opts, spec=spec, z_dim=opts["z_dim"])
    net.G.load_state_dict(ck["G_ema"])
    net.G = net.G.to(device).eval().requires_grad_(False)
    net.path = Path(path)
    return net


def require_kind(net: Network, kinds, what: str) -> None:
    """A clear error when `net` is not of one of `kinds` (e.g. a mask network given to class generation)."""
    if net.kind not in kinds:
        hint = ("pick a mask run's network.pt (masks.enabled, results/gan/<masks.run_name>/network.pt)" if "mask" in kinds
                else "pick a StyleGAN2 run's network.pt (results/gan/<gan.name>/network.pt)")
        raise UserError(f"{net.path} is a {net.kind!r} network; {what} needs {' or '.join(map(repr, kinds))}: {hint}")
