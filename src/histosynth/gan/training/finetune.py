"""``gan.finetune_from``: a StyleGAN2 run that starts from a trained network instead of from
random weights (a small cohort from a network trained on a large one).

The start is stylegan2-ada's ``--resume``: G, D and G_ema copied from the file; the optimisers
new; ADA's p from 0 with ``ada_kimg`` at most 100 (p reacts fast at the beginning); no EMA
ramp-up (G_ema is already a trained average). Resolution and architecture come from the network;
a resolution other than ``gan.resolution`` is refused.

What carries over, tensor by tensor (the run records it in training_options.json):

* every tensor whose name and shape agree;
* the label embeddings (G's ``mapping.embed``, D's ``mapping.embed``) column by column: each of
  the cohort's classes takes the column of the network's class of the same name, or of the one
  ``gan.finetune_classes`` names; the other classes keep new columns (a subset, a remapping and a
  different number of classes are all this one rule);
* an unconditional network as the start of a conditional one: G's first mapping layer keeps its
  weights for z and starts with zeros for the new embedding, so the network at step 0 is the
  unconditional one; D's condition mapping and its projection head are new;
* whatever the file does not hold (a pickle without D) or holds in another shape starts new.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from histosynth.gan import checkpoint as ckpt
from histosynth.gan.conditioning import ConditioningSpec
from histosynth.runs import RunSpec
from histosynth.utils import UserError, md5_of

log = logging.getLogger(__name__)

ARCH_KEYS = ("resolution", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "conv_clamp",
             "mbstd_group")
RESUME_KEYS = ("ada_kimg", "ema_rampup")  # what stylegan2-ada's --resume changes


def condition_names(spec: ConditioningSpec) -> list[str]:
    """A name per condition dimension: the class for class runs, column=value for attributes,
    the column for vectors; expression dimensions have none (two β-VAEs' latents do not match)."""
    if spec.kind == "class":
        return [str(v) for v in spec.categories[spec.columns[0]]]
    if spec.kind == "attributes":
        return [f"{c}={v}" for c in spec.columns for v in spec.categories[c]]
    if spec.kind == "vector":
        return list(spec.columns)
    return [None] * spec.dim


def class_map(source: list, target: list, mapping: dict | None) -> dict:
    """target condition index -> source condition index: by `mapping` (target name -> source
    name), else by equal names; unmatched target conditions are absent."""
    mapping = {str(k): str(v) for k, v in (mapping or {}).items()}
    unknown_t = sorted(set(mapping) - {t for t in target if t is not None})
    if unknown_t:
        raise UserError(f"gan.finetune_classes names {unknown_t}, which are not this cohort's conditions "
                        f"({[t for t in target if t is not None]})")
    unknown_s = sorted(set(mapping.values()) - {s for s in source if s is not None})
    if unknown_s:
        raise UserError(f"gan.finetune_classes maps to {unknown_s}, which the network does not know (its conditions: "
                        f"{[s for s in source if s is not None]}; a pickle's classes are named by "
                        f"gan.pretrained_classes)")
    out = {}
    for j, t in enumerate(target):
        want = mapping.get(t, t)
        if want is not None and want in source:
            out[j] = source.index(want)
    return out


def _transfer(dst: dict, src: dict | None, cols: dict, z_dim: int, prefix: str, report: dict) -> dict:
    """`dst` (a freshly built state dict) with what carries over from `src`."""
    out = dict(dst)
    if src is None:
        report["new"].append(f"{prefix} (the file holds none)")
        return out
    for k, v in dst.items():
        s = src.get(k)
        name = f"{prefix}.{k}"
        if k == "mapping.embed.weight" and s is not None and s.dim() == 2 and s.shape[0] == v.shape[0]:
            w = v.clone()
            for j, i in cols.items():
                w[:, j] = s[:, i]
            out[k] = w
            report["kept" if len(cols) == v.shape[1] else "partly"].append(name)
            continue
        if k == "mapping.fc0.weight" and s is not None and s.shape != v.shape and s.shape[0] == v.shape[0] \
                and z_dim and s.shape[1] >= z_dim and v.shape[1] >= z_dim:
            # z's columns kept, rescaled for the layer's equalised-lr gain 1/sqrt(fan-in), which the
            # embedding's columns change; a new embedding starts at zero weight
            w = torch.zeros_like(v)
            w[:, :z_dim] = s[:, :z_dim] * (v.shape[1] / s.shape[1]) ** 0.5
            out[k] = w
            report["partly"].append(name)
            continue
        if s is not None and s.shape == v.shape:
            out[k] = s.clone()
            report["kept"].append(name)
        else:
            report["new"].append(name)
    return out


@dataclass
class Start:
    """A network to fine-tune from, read and checked against the run."""

    path: Path
    ck: dict
    options: dict  # the run's gan options with the network's architecture and --resume's changes
    info: dict = field(default_factory=dict)

    def apply(self, G, D, spec: ConditioningSpec):
        """Load the network into the freshly built G and D; (G_ema's state, the report)."""
        src_spec = ConditioningSpec.from_dict(self.ck["conditioning"])
        cols = class_map(condition_names(src_spec), condition_names(spec), self.options["finetune_classes"])
        if spec.kind == "expression" and src_spec.kind == "expression":
            cols = {}
        report = {"kept": [], "partly": [], "new": []}
        z = self.options["z_dim"]
        g_src = self.ck.get("G") or self.ck["G_ema"]
        G.load_state_dict(_transfer(G.state_dict(), g_src, cols, z, "G", report))
        ema_report = {"kept": [], "partly": [], "new": []}
        ema = _transfer(G.state_dict(), self.ck["G_ema"], cols, z, "G_ema", ema_report)
        d_src = self.ck.get("D")
        if d_src is not None and (src_spec.dim > 0) != (spec.dim > 0):  # projection head of another kind
            d_src = {k: v for k, v in d_src.items() if not k.startswith(("b4.out.", "mapping."))}
        D.load_state_dict(_transfer(D.state_dict(), d_src, cols, 0, "D", report))
        names_t, names_s = condition_names(spec), condition_names(src_spec)
        summary = dict(self.info, classes={str(names_t[j]): (names_s[cols[j]] if j in cols else None)
                                           for j in range(len(names_t))},
                       kept=len(report["kept"]), partly_kept=report["partly"], new=report["new"],
                       g_ema_new=ema_report["new"])
        log.info("fine-tuning from %s (%s, MD5 %s): %d tensors kept, partly kept: %s; new: %s; classes %s",
                 self.path, self.info["tool"], self.info["md5"], len(report["kept"]), report["partly"] or "none",
                 report["new"] or "none", summary["classes"])
        return ema, summary


def read_start(run: RunSpec, opts: dict) -> Start:
    """The network of gan.finetune_from, checked against `run`."""
    path = Path(opts["finetune_from"])
    if not path.is_file():
        raise UserError(f"gan.finetune_from: {path} does not exist (give a histosynth network.pt or a stylegan2-ada "
                        f".pkl)")
    if path.suffix.lower() == ".pkl":
        from histosynth.gan.imports import import_stylegan2

        ck = import_stylegan2(path, class_names=opts["pretrained_classes"], name=run.name)
        tool = ck["imported"]["tool"]
    else:
        ck = ckpt.load(path)
        if ck["kind"] == "mask":
            raise UserError(f"gan.finetune_from {path} is a mask (SPADE/pix2pix) network; give a StyleGAN2 network")
        tool = "histosynth"
    net = ck["options"]
    if net["resolution"] != opts["resolution"]:
        raise UserError(f"gan.finetune_from {path} makes {net['resolution']} px tiles but gan.resolution is "
                        f"{opts['resolution']}: a network carries over only at its own resolution; set gan.resolution "
                        f"and tiles.tile_px to {net['resolution']}, or train from scratch")
    changed = {k: (opts[k], net[k]) for k in ARCH_KEYS if k in net and opts.get(k) != net[k]}
    if changed:
        log.info("gan.finetune_from: the network's architecture replaces the config's: %s",
                 ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
    new = dict(opts, **{k: net[k] for k in ARCH_KEYS if k in net})
    new.update(ada_kimg=min(opts["ada_kimg"], 100), ema_rampup=None)
    info = {"source": str(path.resolve()), "md5": md5_of(path), "tool": tool,
            "source_kind": ck["kind"], "source_kimg": (ck.get("cur_nimg") or 0) / 1000,
            "architecture_from_network": {k: b for k, (a, b) in changed.items()},
            "ada_kimg": new["ada_kimg"], "ema_rampup": None}
    return Start(path, ck, new, info)


def resumed_options(checkpoint: Path, opts: dict) -> dict:
    """A fine-tuning run's options on resume: the architecture and --resume changes it started
    with, as its checkpoint records them."""
    saved = ckpt.read_metadata(checkpoint)["options"]
    return dict(opts, **{k: saved[k] for k in ARCH_KEYS + RESUME_KEYS if k in saved})

