"""Pathology foundation encoders as feature extractors, built by timm and loaded from the weights
file their authors publish (never downloaded here: users bring the file).

* ``uni``: UNI (Chen et al., Nature Medicine 2024; MahmoodLab/UNI on Hugging Face, gated), a
  ViT-L/16 in timm's layout (``pytorch_model.bin``), created as its model card does:
  ``timm.create_model("vit_large_patch16_224", img_size=224, patch_size=16, init_values=1e-5,
  num_classes=0, dynamic_img_size=True)``. Input 224 px, ImageNet mean and std; output the class
  token after the final norm (1024 dimensions).
* ``phikon``: Phikon (Filiot et al. 2023; owkin/phikon on Hugging Face), a ViT-B/16 saved in the
  Hugging Face ``transformers`` ViTModel layout (``model.safetensors`` or ``pytorch_model.bin``).
  Its keys are mapped one to one onto timm's ``vit_base_patch16_224`` (query, key and value
  concatenated into timm's qkv) with every key accounted for; its layer norms keep the
  checkpoint's epsilon (1e-12). Input 224 px, ImageNet mean and std; output the class token of
  the last hidden state after the final layer norm (768 dimensions), as its model card reads it.

Tiles are resized to 224 px (bilinear, antialiased) from whatever size they are cut at; real
and generated tiles pass through the same resizing.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import torch

from histosynth.utils import UserError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

SPECS = {
    "uni": {"arch": "vit_large_patch16_224", "layout": "timm", "dim": 1024, "size": 224,
            "kwargs": {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0,
                       "dynamic_img_size": True},
            "file": "pytorch_model.bin",
            "where": "https://huggingface.co/MahmoodLab/UNI (gated: accept its terms, then download "
                     "pytorch_model.bin)"},
    "phikon": {"arch": "vit_base_patch16_224", "layout": "hf-vit", "dim": 768, "size": 224,
               "kwargs": {"num_classes": 0}, "ln_eps": 1e-12,
               "file": "model.safetensors (or pytorch_model.bin)",
               "where": "https://huggingface.co/owkin/phikon (download model.safetensors)"},
}


def read_state_dict(path: Path) -> dict:
    """A weights file's tensors, read without running code from it: safetensors, or a PyTorch
    file through ``torch.load(weights_only=True)``."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise UserError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return sd


def hf_vit_to_timm(sd: dict, depth: int) -> dict:
    """A Hugging Face ViTModel state dict (keys ``embeddings.*``, ``encoder.layer.N.*``,
    ``layernorm.*``, optionally under ``vit.`` and with an unused ``pooler``) as timm's
    VisionTransformer keys. Every key must be mapped: an unknown key is an error, not skipped."""
    sd = {k.removeprefix("vit."): v for k, v in sd.items() if not k.removeprefix("vit.").startswith("pooler.")}
    out, used = {}, set()

    def take(key):
        if key not in sd:
            raise KeyError(key)
        used.add(key)
        return sd[key]

    out["cls_token"] = take("embeddings.cls_token")
    out["pos_embed"] = take("embeddings.position_embeddings")
    for p in ("weight", "bias"):
        out[f"patch_embed.proj.{p}"] = take(f"embeddings.patch_embeddings.projection.{p}")
        out[f"norm.{p}"] = take(f"layernorm.{p}")
        for i in range(depth):
            e, b = f"encoder.layer.{i}", f"blocks.{i}"
            out[f"{b}.norm1.{p}"] = take(f"{e}.layernorm_before.{p}")
            out[f"{b}.norm2.{p}"] = take(f"{e}.layernorm_after.{p}")
            out[f"{b}.attn.qkv.{p}"] = torch.cat([take(f"{e}.attention.attention.{n}.{p}")
                                                 for n in ("query", "key", "value")])
            out[f"{b}.attn.proj.{p}"] = take(f"{e}.attention.output.dense.{p}")
            out[f"{b}.mlp.fc1.{p}"] = take(f"{e}.intermediate.dense.{p}")
            out[f"{b}.mlp.fc2.{p}"] = take(f"{e}.output.dense.{p}")
    left = sorted(set(sd) - used)
    if left:
        raise KeyError(f"keys not in the ViTModel layout: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}")
    return out


def build(name: str) -> torch.nn.Module:
    """The extractor's architecture, randomly initialised (timm, no download)."""
    import timm

    spec = SPECS[name]
    kw = dict(spec["kwargs"])
    if "ln_eps" in spec:
        kw["norm_layer"] = functools.partial(torch.nn.LayerNorm, eps=spec["ln_eps"])
    return timm.create_model(spec["arch"], pretrained=False, **kw)


def load(name: str, path) -> torch.nn.Module:
    """The extractor `name` with the weights of the file at `path` in its authors' layout, every
    key matched (strict)."""
    spec = SPECS[name]
    p = Path(path) if path else None
    if p is None or not p.is_file():
        raise UserError(f"the {name} extractor needs its weights file ({spec['file']}, from {spec['where']}), and "
                        f"{p} does not exist: download it there, or set evaluate.{name}_weights to where it is")
    sd = read_state_dict(p)
    with torch.device("meta"):  # no random initialisation of the weights the file replaces
        model = build(name)
    try:
        if spec["layout"] == "hf-vit":
            sd = hf_vit_to_timm(sd, len(model.blocks))
        # the file's tensors become the parameters, in float32 as a freshly built model's
        sd = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()}
        model.load_state_dict(sd, strict=True, assign=True)
        if any(t.is_meta for t in (*model.parameters(), *model.buffers())):  # a buffer no file holds
            model = build(name)
            model.load_state_dict(sd, strict=True)
    except (KeyError, RuntimeError) as exc:
        msg = re.sub(r"\s+", " ", str(exc))[:600]
        raise UserError(f"{p} is not {name}'s published weights ({spec['arch']} in the {spec['layout']} layout): "
                        f"{msg}") from None
    return model.eval()


class FoundationExtractor:
    """`extractor(tiles_uint8) -> (n, dim)` float64 features: resized to the network's input size,
    normalised with its mean and std, the class token after the final norm."""

    def __init__(self, name: str, model: torch.nn.Module, device="cpu", batch: int = 64):
        self.name, self.spec, self.batch, self.device = name, SPECS[name], batch, device
        self.model = model.to(device).eval()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.no_grad()
    def __call__(self, tiles_uint8: np.ndarray) -> np.ndarray:
        import torch.nn.functional as F

        size, out = self.spec["size"], []
        for i in range(0, len(tiles_uint8), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(tiles_uint8[i:i + self.batch])).to(self.device)
            x = x.permute(0, 3, 1, 2).float() / 255
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            out.append(self.model((x - self.mean) / self.std).double().cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, self.spec["dim"]))


def foundation_extractor(name: str, path, device="cpu") -> FoundationExtractor:
    return FoundationExtractor(name, load(name, path), device)
