"""Feature extractors for the generative metrics.

* ``inception-v3``: torch-fidelity's TF-compatible Inception-v3 (pool3, 2048-d), the network
  behind published FIDs. Its weights are loaded from a local file (``evaluate.inception_weights``),
  fetched once by the ``fetch_inception`` rule with a SHA-256 check.
* ``domain``: the penultimate layer of this run's reference classifier, trained from scratch on
  the cohort's real training tiles. Needs no download; its numbers are comparable only within
  one run (same extractor), never with published FIDs.

Real and fake tiles pass through identical resizing (each extractor resizes internally).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from histosynth.evaluate.fetch_weights import INCEPTION_URL
from histosynth.utils import UserError

FOUNDATION = ("uni", "phikon")  # pathology foundation encoders (histosynth.evaluate.foundation)


def inception_extractor(weights_path):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    p = Path(weights_path) if weights_path else None
    if p is None or not p.is_file():
        raise UserError(
            f"the inception-v3 extractor needs its weights file, and {p} does not exist. Run "
            f"`snakemake fetch_inception` on a machine with internet (it downloads {INCEPTION_URL} and checks "
            f"its SHA-256), or copy that file to the path in evaluate.inception_weights. Offline, use "
            f"evaluate.extractors: [domain].")
    return FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(p))


@torch.no_grad()
def inception_features(extractor, tiles_uint8: np.ndarray, batch=64, device="cpu") -> np.ndarray:
    extractor = extractor.to(device).eval()
    out = []
    for i in range(0, len(tiles_uint8), batch):
        x = torch.from_numpy(tiles_uint8[i:i + batch]).permute(0, 3, 1, 2).contiguous().to(device)
        out.append(extractor(x)[0].double().cpu())
    return torch.cat(out).numpy()


def extractor_function(extractor: str, opts: dict, reference: str, device="cpu"):
    """(id, fn) of an extractor: `fn(tiles_uint8) -> (n, d) features`, and an id naming the network
    and a hash of its weights (the feature cache's key), the network loaded once."""
    from histosynth.evaluate.cache import file_digest

    if extractor == "domain":
        from histosynth.classify.model import features
        from histosynth.classify.study import load_reference

        model, _, _ = load_reference(reference, device)
        return f"domain-{file_digest(reference)}", lambda x: features(model, x, device)
    if extractor in FOUNDATION:
        from histosynth.evaluate.foundation import foundation_extractor

        path = opts.get(f"{extractor.replace('-', '_')}_weights")
        net = foundation_extractor(extractor, path, device)
        return f"{extractor}-{file_digest(path)}", net
    ext = inception_extractor(opts["inception_weights"])
    return (f"inception-v3-{file_digest(opts['inception_weights'])}",
            lambda x: inception_features(ext, x, device=device))


def extract(indexes: list, extractor: str, opts: dict, reference: str, device="cpu", cache_dir=None,
            write_cache: bool = False) -> list:
    """Features of each index's tiles by `extractor`, with the network loaded and its weights
    hashed once; taken from the cache folder `cache_dir` where it holds them, and written into it
    too with `write_cache` (see histosynth.evaluate.cache)."""
    from histosynth.evaluate.cache import cached_features

    ex_id, fn = extractor_function(extractor, opts, reference, device)
    return [cached_features(index, ex_id, fn, cache_dir, write=write_cache) for index in indexes]
