"""stylegan2-ada's training configurations (``--cfg`` of its train.py) as ``gan.preset``.

A preset fills the gan keys that the configuration leaves out; keys written in the config win.
Values are those of stylegan2-ada-pytorch's configurations (Karras et al. 2020, table of
``cfg_specs``): ``channel_base`` is ``fmaps * 32768``, ``batch`` the total minibatch,
``mbstd_group`` the minibatch-std group, ``ema_kimg`` the EMA half-life, ``ema_rampup`` its
ramp-up. ``auto`` derives them from the resolution and GPU count as stylegan2-ada does.
"""
from __future__ import annotations

PRESETS = {
    "stylegan2": dict(batch=32, mbstd_group=4, fmaps=1, lr=0.002, r1_gamma=10, ema_kimg=10, ema_rampup=None, mapping_layers=8),
    "paper256": dict(batch=64, mbstd_group=8, fmaps=0.5, lr=0.0025, r1_gamma=1, ema_kimg=20, ema_rampup=None, mapping_layers=8),
    "paper512": dict(batch=64, mbstd_group=8, fmaps=1, lr=0.0025, r1_gamma=0.5, ema_kimg=20, ema_rampup=None, mapping_layers=8),
    "paper1024": dict(batch=32, mbstd_group=4, fmaps=1, lr=0.002, r1_gamma=2, ema_kimg=10, ema_rampup=None, mapping_layers=8),
}
NAMES = ("custom", "auto", *PRESETS)


def preset_values(name: str, resolution: int, gpus: int) -> dict:
    """The gan keys preset `name` sets, for a run at `resolution` on `gpus` GPUs (0 = CPU: 1)."""
    if name == "custom":
        return {}
    if name == "auto":
        g, res = max(gpus, 1), resolution
        mb = max(min(g * min(4096 // res, 32), 64), g)
        spec = dict(batch=mb, mbstd_group=min(mb // g, 4), fmaps=1 if res >= 512 else 0.5,
                    lr=0.002 if res >= 1024 else 0.0025, r1_gamma=0.0002 * res ** 2 / mb, ema_kimg=mb * 10 / 32,
                    ema_rampup=0.05, mapping_layers=2)
    else:
        spec = PRESETS[name]
    return {"batch": spec["batch"], "mbstd_group": spec["mbstd_group"], "channel_base": int(spec["fmaps"] * 32768),
            "channel_max": 512, "lr_g": spec["lr"], "lr_d": spec["lr"], "r1_gamma": spec["r1_gamma"],
            "ema_kimg": spec["ema_kimg"], "ema_rampup": spec["ema_rampup"], "mapping_layers": spec["mapping_layers"],
            "z_dim": 512, "w_dim": 512}


def apply_preset(gan: dict, explicit=None) -> dict:
    """Fill `gan` in place with its preset's values for the keys not in `explicit` (default: the
    keys `gan` holds now). Resolution and GPU count are the section's, or the schema defaults."""
    name = gan.get("preset", "custom")
    if name not in NAMES or not isinstance(gan.get("resolution", 256), int):
        return gan  # validation names the bad value
    explicit = set(gan) if explicit is None else set(explicit)
    for k, v in preset_values(name, int(gan.get("resolution", 256)), int(gan.get("gpus", 1))).items():
        if k not in explicit:
            gan[k] = v
    return gan
