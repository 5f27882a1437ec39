"""Runs: every GAN run of a configuration, whatever its kind, as one :class:`RunSpec` resolved
once from the config. The workflow's ``{run}`` wildcard ranges over these names; each rule
passes its run's spec to ``histosynth`` as JSON.

Kinds: ``class``, ``attributes``, ``vector``, ``expression``, ``none`` (StyleGAN2 runs, after
``gan.conditioning``) and ``mask`` (SPADE or pix2pix from label maps).

* the ``gan`` run: named ``gan.name``, of kind ``gan.conditioning``;
* the expression run, when ``expression.enabled`` and the gan run is not itself expression-
  conditioned: named ``expression.run_name``, options ``gan`` overridden by ``expression.gan``;
* the mask run, when ``masks.enabled``: named ``masks.run_name``, options ``gan`` overridden by
  ``masks.gan``, with the masks section (label set resolved).
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass

from histosynth.utils import UserError

STYLEGAN2_KINDS = ("class", "attributes", "vector", "expression", "none")


@dataclass(frozen=True)
class RunSpec:
    name: str
    kind: str
    gan: dict  # the validated gan section of this run
    masks: dict | None = None  # mask runs: the masks section, labels resolved

    @classmethod
    def of_gan(cls, gan: dict) -> RunSpec:
        return cls(gan["name"], gan["conditioning"], gan)

    @classmethod
    def of_masks(cls, gan: dict, masks: dict) -> RunSpec:
        return cls(gan["name"], "mask", gan, masks)

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "kind": self.kind, "gan": self.gan, "masks": self.masks}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str = "--run-spec") -> RunSpec:
        from histosynth.config import validate

        try:
            d = json.loads(text)
            name, kind, gan, masks = d["name"], d["kind"], d["gan"], d.get("masks")
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a run spec (JSON with name, kind, gan[, masks]): {exc}") from exc
        if kind not in STYLEGAN2_KINDS + ("mask",):
            raise UserError(f"{where}: unknown run kind {kind!r}; one of {', '.join(STYLEGAN2_KINDS + ('mask',))}")
        gan = validate({"gan": gan}, f"{where} gan")["gan"]
        if kind == "mask":
            from histosynth.masks.run import resolve_labels

            return cls(name, kind, gan, resolve_labels(validate({"masks": masks or {}}, f"{where} masks")["masks"]))
        return cls(name, kind, gan)


def _override(gan: dict, changes: dict) -> dict:
    """A second run's gan options: the gan run's, with `changes` (its own preset applied to the
    keys `changes` leaves out); a pretrained network (and its class names) is the gan run's alone."""
    from histosynth.presets import apply_preset

    o = copy.deepcopy(gan)
    o.update(changes)
    o["pretrained"], o["pretrained_classes"] = changes.get("pretrained"), changes.get("pretrained_classes")
    if "preset" in changes:
        apply_preset(o, explicit=changes)
    return o


def resolve_runs(config: dict) -> dict[str, RunSpec]:
    """Every run of a validated config, by name (the gan run first)."""
    from histosynth.config import validate

    gan = config["gan"]
    runs = {gan["name"]: RunSpec.of_gan(gan)}
    ex = config["expression"]
    if ex["enabled"] and gan["conditioning"] != "expression":
        if ex["run_name"] in runs:
            raise UserError(f"expression.run_name {ex['run_name']!r} must differ from gan.name")
        o = _override(gan, ex["gan"])
        o.update(name=ex["run_name"], conditioning="expression")
        runs[ex["run_name"]] = RunSpec.of_gan(validate({"gan": o}, "expression.gan")["gan"])
    m = config["masks"]
    if m["enabled"]:
        from histosynth.masks.run import resolve_labels

        if m["run_name"] in runs:
            raise UserError(f"masks.run_name {m['run_name']!r} must differ from the other runs' names {sorted(runs)}")
        o = _override(gan, m.get("gan") or {})
        o.update(name=m["run_name"], conditioning="none")
        # conditioning is "none" in the gan section (no class input); the kind says "mask"
        runs[m["run_name"]] = RunSpec.of_masks(validate({"gan": o}, "masks.gan")["gan"], resolve_labels(m))
    return runs
