"""Networks trained elsewhere: stylegan2-ada-pytorch and slideflow StyleGAN2 pickles, read
without executing anything from the file.

Their snapshots (``network-snapshot-*.pkl``) are pickles of a dict ``{G, D, G_ema,
augment_pipe, training_set_kwargs}`` whose networks are "persistent" objects: each pickles as a
call of ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with ``meta`` holding the
class name, the source code of its module and the object's ``__dict__`` (parameters, buffers,
submodules, hyper-parameters). A plain ``pickle.load`` would import and run that source. Here a
restricted unpickler resolves only the handful of globals such a file needs, each to a function
of ours that builds plain data: persistent objects become records of class name and state,
parameters and tensors are rebuilt by PyTorch's own tensor constructors from storages read with
``torch.load(weights_only=True)``, numpy scalars are read from their bytes. Any other global
(a class of the user's, ``os.system``...) stops the reading with an error naming it.

The records are checked against stylegan2-ada's StyleGAN2 architecture (skip generator,
residual discriminator, [1, 3, 3, 1] filters, noise inputs), their hyper-parameters read, and
the state loaded into :mod:`histosynth.gan.networks` with ``strict=True``, so a network that is
not exactly that architecture (StyleGAN3, other layouts) is refused, not half-loaded.
"""
from __future__ import annotations

import io
import logging
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

from histosynth.utils import UserError, md5_of

log = logging.getLogger(__name__)

# class names of stylegan2-ada-pytorch's networks (and slideflow's copy of them)
STYLEGAN2_CLASSES = {"Generator", "MappingNetwork", "SynthesisNetwork", "SynthesisBlock", "SynthesisLayer",
                     "ToRGBLayer", "FullyConnectedLayer", "Conv2dLayer", "Discriminator", "DiscriminatorBlock",
                     "DiscriminatorEpilogue", "MinibatchStdLayer", "AugmentPipe"}
STYLEGAN3_CLASSES = {"SynthesisInput", "SynthesisLayer3"}


class Persistent:
    """What a pickled persistent object becomes: its class name and state, nothing executed.

    The unpickler hands out :func:`_persistent` (a function), never this class: a pickle can
    therefore neither build one without ``__init__``'s checks (NEWOBJ needs a class) nor
    overwrite its fields afterwards (BUILD calls ``__setstate__``, which refuses)."""

    def __setstate__(self, state):
        raise UserError("not a stylegan2-ada network pickle: it rewrites a persistent object after building it")

    def __init__(self, meta):
        if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
            raise UserError("not a stylegan2-ada network pickle: a persistent object without class state")
        self.class_name = str(meta.get("class_name"))
        self.module_src = str(meta.get("module_src") or "")
        self.state = meta["state"]

    def attr(self, name, default=None):
        return self.state.get(name, default)

    def child(self, name) -> Persistent | None:
        return (self.state.get("_modules") or {}).get(name)

    def children(self) -> dict:
        return dict(self.state.get("_modules") or {})

    def state_dict(self, prefix="") -> OrderedDict:
        """Parameters and persistent buffers, by dotted name, as torch's ``state_dict``."""
        out = OrderedDict()
        skip = set(self.state.get("_non_persistent_buffers_set") or ())
        for group in ("_parameters", "_buffers"):
            for k, v in (self.state.get(group) or {}).items():
                if v is not None and k not in skip:
                    out[prefix + k] = v
        for k, m in self.children().items():
            if isinstance(m, Persistent):
                out.update(m.state_dict(f"{prefix}{k}."))
            elif m is not None:
                raise UserError(f"unexpected submodule {prefix}{k} of type {type(m).__name__}")
        return out

    def class_names(self) -> set:
        names = {self.class_name}
        for m in self.children().values():
            if isinstance(m, Persistent):
                names |= m.class_names()
        return names


def _persistent(meta) -> Persistent:
    return Persistent(meta)


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _parameter(data, requires_grad=False, backward_hooks=None, *state):
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise UserError("refusing a numpy object scalar in the pickle")
    return np.frombuffer(data, dtype=dtype)[0]


def _numpy_dtype(*args):
    dt = np.dtype(*args[:1])
    if dt.hasobject:
        raise UserError("refusing a numpy object dtype in the pickle")
    return dt


_GLOBALS = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _parameter,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if name == "_reconstruct_persistent_obj" and module.split(".")[-2:] == ["torch_utils", "persistence"]:
            return _persistent
        if name == "EasyDict" and module.split(".")[-2:] == ["dnnlib", "util"]:
            return dict
        if (module, name) in _GLOBALS:
            return _GLOBALS[(module, name)]
        raise UserError(f"the pickle asks for {module}.{name}, which is not part of a stylegan2-ada network "
                        f"snapshot; refusing to read it (nothing from the file was run)")

    def persistent_load(self, pid):
        raise UserError("the pickle uses persistent ids (a torch.save zip file?); give a stylegan2-ada .pkl, or a "
                        "histosynth network.pt as it is")


def read_pickle(path) -> dict:
    """The snapshot dict of a stylegan2-ada / slideflow pickle, its networks as :class:`Persistent`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such network file")
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated, not a pickle...
        raise UserError(f"{path}: not a readable stylegan2-ada network pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("G_ema"), Persistent):
        have = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise UserError(f"{path}: a stylegan2-ada snapshot holds G_ema (and G, D); this pickle has {have}")
    return data


# Sizes read from a file are bounded before anything is built from them: a crafted pickle naming
# block b1000000000000 or w_dim 4096 must be refused, not spin or allocate gigabytes.
MAX_RESOLUTION = 2048
MAX_CHANNELS = 1024  # stylegan2-ada's largest: 512
MAX_DIM = 1024  # z_dim, w_dim, cmap_dim (stylegan2-ada: 512)
MAX_CLASSES = 4096
MAX_MAPPING_LAYERS = 16  # stylegan2-ada: 2 (paper256) to 8


def _int_attr(net: Persistent, name: str, lo: int, hi: int, what: str, path, default=None) -> int:
    """An integer hyper-parameter of a record, checked to lie in [lo, hi]."""
    v = net.attr(name, default)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise UserError(f"{path}: {what}.{name} is {type(v).__name__} {str(v)[:40]!r}, not an integer")
    if not lo <= int(v) <= hi:
        raise UserError(f"{path}: {what}.{name} = {int(v)} is outside [{lo}, {hi}]; not a network histosynth can build")
    return int(v)


def _block_resolutions(net: Persistent, what: str, path, top: int, skip=()) -> dict:
    """{resolution: block} of a network's ``b<res>`` children: every res a power of two from 4 to `top`, each once."""
    blocks = {}
    for k, b in net.children().items():
        if not isinstance(k, str) or not k.startswith("b") or k in skip:
            continue
        r = k[1:]
        if not (r.isdigit() and len(r) <= 5 and int(r) >= 4 and int(r) & (int(r) - 1) == 0 and int(r) <= top):
            raise UserError(f"{path}: {what} has a block named {k[:40]!r}; blocks are b4, b8, ... up to b{top}")
        if not isinstance(b, Persistent):
            raise UserError(f"{path}: {what}.{k} is not a network layer")
        blocks[int(r)] = b
    return blocks


def _channels(layer: Persistent | None, name: str, path) -> int:
    """Output channels of a layer's weight, bounded."""
    w = (layer.state.get("_parameters") or {}).get("weight") if isinstance(layer, Persistent) else None
    if not isinstance(w, torch.Tensor) or w.dim() < 1:
        raise UserError(f"{path}: {name} has no weight tensor")
    if not 1 <= w.shape[0] <= MAX_CHANNELS:
        raise UserError(f"{path}: {name} has {w.shape[0]} channels; at most {MAX_CHANNELS} are accepted")
    return int(w.shape[0])


def _refuse_unknown(net: Persistent, what: str, path) -> None:
    names = net.class_names()
    if names & STYLEGAN3_CLASSES or "networks_stylegan3" in net.module_src or net.child("synthesis") and \
            net.child("synthesis").child("input") is not None:
        raise UserError(f"{path}: {what} is a StyleGAN3 (alias-free) network; histosynth runs StyleGAN2(-ADA) "
                        f"networks only (stylegan2-ada-pytorch, slideflow's StyleGAN2, or stylegan3's --cfg=stylegan2)")
    unknown = sorted(names - STYLEGAN2_CLASSES)
    if unknown:
        raise UserError(f"{path}: {what} holds layers {unknown} that are not stylegan2-ada's; only its StyleGAN2 "
                        f"architecture can be imported")


def _widths(per_res: dict, what: str, path) -> tuple[int, int]:
    """(channel_base, channel_max) that give these channels per resolution, as min(base // r, max)."""
    cmax = max(per_res.values())
    below = {r: c for r, c in per_res.items() if c < cmax}
    r, c = max(below.items()) if below else (max(per_res), cmax)
    for base in range(r * c, r * (c + 1)):  # every base with base // r == c at that resolution
        if all(min(base // q, cmax) == n for q, n in per_res.items()):
            return base, cmax
    raise UserError(f"{path}: the {what}'s channels per resolution {per_res} are not min(base / r, max) for any "
                    f"base and max; not a stylegan2-ada layout")


def _generator_options(G: Persistent, path) -> dict:
    syn, mapping = G.child("synthesis"), G.child("mapping")
    if syn is None or mapping is None:
        raise UserError(f"{path}: G_ema has no synthesis/mapping network")
    res = _int_attr(G, "img_resolution", 8, MAX_RESOLUTION, "G_ema", path)
    if res & (res - 1):
        raise UserError(f"{path}: G_ema.img_resolution {res} is not a power of two")
    z_dim = _int_attr(G, "z_dim", 1, MAX_DIM, "G_ema", path)
    w_dim = _int_attr(G, "w_dim", 1, MAX_DIM, "G_ema", path)
    n_mapping = _int_attr(mapping, "num_layers", 1, MAX_MAPPING_LAYERS, "G_ema.mapping", path)
    blocks = _block_resolutions(syn, "G_ema.synthesis", path, res)
    want = [2 ** i for i in range(2, res.bit_length())]
    if sorted(blocks) != want:
        raise UserError(f"{path}: G_ema.synthesis has blocks {[f'b{r}' for r in sorted(blocks)]}; a {res} px "
                        f"generator has {[f'b{r}' for r in want]}")
    for r, b in blocks.items():
        arch = b.attr("architecture", "skip")
        if arch != "skip":
            raise UserError(f"{path}: generator block b{r} has architecture {arch!r}; histosynth runs stylegan2-ada's "
                            f"'skip' generator")
        layers = [b.child(n) for n in ("conv0", "conv1") if b.child(n) is not None]
        if any(not layer.attr("use_noise", True) for layer in layers):
            raise UserError(f"{path}: generator block b{r} has no noise inputs (use_noise=False); not supported")
    if int(G.attr("img_channels", 3)) != 3:
        raise UserError(f"{path}: the generator makes {G.attr('img_channels')}-channel images; histosynth needs RGB")
    per_res = {r: _channels(b.child("conv1"), f"G_ema.synthesis.b{r}.conv1", path) for r, b in blocks.items()}
    base, cmax = _widths(per_res, "generator", path)
    clamp = blocks[4].child("conv1").attr("conv_clamp")
    if clamp is not None and not (isinstance(clamp, (int, float, np.number)) and 0 < float(clamp) < 1e6):
        raise UserError(f"{path}: conv_clamp {str(clamp)[:40]!r} is not a positive number")
    return {"resolution": res, "z_dim": z_dim, "w_dim": w_dim, "mapping_layers": n_mapping, "channel_base": base,
            "channel_max": cmax, "conv_clamp": None if clamp is None else float(clamp)}


def _discriminator(D: Persistent, opts: dict, c_dim: int, path):
    """Our discriminator with D's weights, or None (with a warning) when it is not the layout
    that goes with the generator (it is only needed to train on from the import)."""
    from histosynth.gan.networks import Discriminator

    _refuse_unknown(D, "D", path)
    try:
        blocks = _block_resolutions(D, "D", path, opts["resolution"], skip=("b4",))
        if isinstance(D.child("b4"), Persistent):
            _int_attr(D.child("b4"), "cmap_dim", 0, MAX_DIM, "D.b4", path, default=0)
        mbstd = D.child("b4").child("mbstd") if isinstance(D.child("b4"), Persistent) else None
        if mbstd is not None:
            _int_attr(mbstd, "group_size", 0, 256, "D.b4.mbstd", path, default=4)
        mapping = D.child("mapping")
        if any(b.attr("architecture", "resnet") != "resnet" for b in blocks.values()) or mbstd is None or \
                int(mbstd.attr("num_channels", 1)) != 1 or (mapping is not None and int(mapping.attr("num_layers")) != 8):
            raise ValueError("not the residual discriminator with one minibatch-std channel and an 8-layer mapping")
        per_res = {r: _channels(b.child("conv0"), f"D.b{r}.conv0", path) for r, b in blocks.items()}
        per_res[4] = _channels(D.child("b4").child("conv"), "D.b4.conv", path)
        base, cmax = _widths(per_res, "discriminator", path)
        if (base, cmax) != (opts["channel_base"], opts["channel_max"]):  # one width setting serves both networks
            raise ValueError(f"its widths (base {base}, max {cmax}) differ from the generator's "
                             f"({opts['channel_base']}, {opts['channel_max']})")
        net = Discriminator(c_dim, opts["resolution"], base, cmax, cmap_dim=D.child("b4").attr("cmap_dim") or None,
                            mbstd_group=mbstd.attr("group_size") or 4, conv_clamp=opts["conv_clamp"])
        net.load_state_dict(D.state_dict())
        return net, {"mbstd_group": mbstd.attr("group_size") or 4}
    except (ValueError, RuntimeError, UserError, AttributeError, KeyError, TypeError) as exc:
        log.warning("%s: the discriminator is left out (%s); generation needs only G_ema", path, exc)
        return None, {}


def import_stylegan2(pkl, out=None, class_names=None, name="imported") -> dict:
    """Read a stylegan2-ada / slideflow StyleGAN2 pickle into a histosynth checkpoint (written to
    `out` when given). `class_names`: the names of a conditional network's label indices, in
    order (default class0, class1, ...). Returns the checkpoint.

    Whatever the file holds, the outcome is this checkpoint or a :class:`UserError` naming the
    file: records of unexpected shapes (a list where a dict belongs, a string for a size...)
    are reported as what they are, not as a traceback."""
    try:
        return _import(pkl, out, class_names, name)
    except (AttributeError, TypeError, ValueError, KeyError, IndexError, RecursionError, OverflowError) as exc:
        raise UserError(f"{pkl}: not a stylegan2-ada network pickle histosynth can read: its records are not "
                        f"stylegan2-ada's ({type(exc).__name__}: {str(exc)[:200]})") from None


def _import(pkl, out, class_names, name) -> dict:
    from histosynth.config import validate
    from histosynth.gan import checkpoint as ckpt
    from histosynth.gan.conditioning import ConditioningSpec
    from histosynth.gan.networks import build_generator

    snap = read_pickle(pkl)
    G = snap["G_ema"]
    if G.class_name != "Generator":
        raise UserError(f"{pkl}: G_ema is a {G.class_name}, not a Generator")
    _refuse_unknown(G, "G_ema", pkl)
    c_dim = _int_attr(G, "c_dim", 0, MAX_CLASSES, "G_ema", pkl, default=0)
    if c_dim and class_names is not None and len(class_names) != c_dim:
        raise UserError(f"{pkl}: the network has {c_dim} classes but {len(class_names)} class names were given "
                        f"({list(class_names)}); give one name per label index, in index order")
    if c_dim and len(set(class_names or [])) != len(class_names or []):
        raise UserError(f"{pkl}: class names {list(class_names)} repeat")
    g = _generator_options(G, pkl)
    kind = "class" if c_dim else "none"
    opts = validate({"gan": dict(g, name=name, conditioning=kind, pretrained=str(pkl))}, f"{pkl}")["gan"]
    names = [str(n) for n in class_names] if class_names is not None else [f"class{i}" for i in range(c_dim)]
    spec = ConditioningSpec("class", ["label"], {"label": names}) if c_dim else ConditioningSpec("none")
    states = {}
    for key in ("G_ema", "G"):
        if not isinstance(snap.get(key), Persistent):
            continue
        net = build_generator(opts, c_dim)
        try:
            net.load_state_dict(snap[key].state_dict())
        except RuntimeError as exc:
            raise UserError(f"{pkl}: {key} is not stylegan2-ada's StyleGAN2 architecture as histosynth builds it: "
                            f"{str(exc).splitlines()[0]} {str(exc).splitlines()[1:2]}") from None
        states[key] = net.state_dict()
    D, d_opts = _discriminator(snap["D"], opts, c_dim, pkl) if isinstance(snap.get("D"), Persistent) else (None, {})
    opts.update(d_opts)
    tool = "slideflow" if any("slideflow" in str(v) for v in (snap.get("training_set_kwargs") or {}).values()) \
        else "stylegan2-ada-pytorch"
    imported = {"source": str(Path(pkl).resolve()), "md5": md5_of(pkl), "tool": tool,
                "training_set_kwargs": {k: str(v) for k, v in (snap.get("training_set_kwargs") or {}).items()}}
    state = ckpt.training_state(kind, G=states.get("G", states["G_ema"]), G_ema=states["G_ema"],
                                D=D.state_dict() if D is not None else None, options=opts,
                                conditioning=spec.to_dict(), imported=imported,
                                training_set={"n_tiles": None, "patients": None}, cur_nimg=0, step=0)
    if out is not None:
        ckpt.save(out, state)  # atomically
    return state
