"""Network files that are data, never code.

Every network histosynth writes (GAN and mask-run checkpoints, the reference classifier, the
β-VAE, the segmentation network) holds tensors and plain data only (dicts, lists, tuples,
strings, numbers, booleans, None), and is read with ``torch.load(weights_only=True)``, which
refuses anything else. Opening a file someone sent you can therefore not run code from it.

:func:`save` turns numpy arrays and scalars and paths into tensors, numbers and strings, and
refuses any other object when the file is written (not when someone tries to read it).
:func:`load` names the file and what to do when it cannot be read safely: a file written by an
older histosynth (which pickled numpy objects) is refused, not unpickled.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from histosynth.utils import UserError, atomic_path

_PLAIN = (str, int, float, bool, type(None))


def plain(obj, where: str = "checkpoint"):
    """`obj` with numpy values as tensors/numbers and paths as strings; TypeError on anything
    that is not a tensor or plain data."""
    if isinstance(obj, np.generic):  # before the plain types: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    raise TypeError(f"{where}: {type(obj).__name__} cannot be saved in a network file (tensors and plain data only)")


def save(path, obj: dict) -> None:
    """Write `obj` (tensors + plain data) atomically: a killed job leaves nothing at `path`. The
    same data gives the same bytes (written through a file object, the archive is not named after
    the temporary file), so files compare and cache by their digest."""
    data = plain(obj)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(data, f)


def load(path, what: str = "network file", remedy: str = "re-run the rule that writes it") -> dict:
    """Read a file written by :func:`save` with ``weights_only=True`` (no code is executed)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} {p} does not exist; {remedy}")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UserError(f"{what} {p} holds objects other than tensors and plain data, so it is not loaded (reading "
                        f"it could run code from the file). Files written by histosynth before safe loading are "
                        f"refused this way: {remedy}. ({str(exc).splitlines()[0]})") from None
    except Exception as exc:
        raise UserError(f"cannot read {what} {p}: {exc}. It may be truncated or not a histosynth file; "
                        f"{remedy}.") from None
