"""Configuration: the JSON schema in workflow/schemas is the single source of keys and defaults.

The workflow validates with snakemake's ``validate``; ``histosynth`` commands run by hand use
:func:`load_config`, which applies the same schema and defaults."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from histosynth.utils import UserError


def schema_path() -> Path:
    packaged = resources.files("histosynth") / "config.schema.yaml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_class):
    validate_props = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if "default" in sub and prop not in instance:
                    import copy

                    instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_props(validator, properties, instance, schema)

    import jsonschema

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def validate(cfg: dict, source="config") -> dict:
    import jsonschema

    schema = yaml.safe_load(schema_path().read_text())
    v = _with_defaults(jsonschema.Draft202012Validator)(schema)
    errors = sorted(v.iter_errors(cfg), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        key = ".".join(str(p) for p in e.absolute_path) or "(top level)"
        raise UserError(f"{source}: invalid value at key '{key}': {e.message}")
    return cfg


def load_config(path=None, overrides: dict | None = None) -> dict:
    cfg = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        cfg = yaml.safe_load(p.read_text()) or {}
    for k, v in (overrides or {}).items():
        cfg[k] = v
    return validate(cfg, str(path or "config"))


def schema_markdown() -> str:
    """config/README.md, generated from the schema (a test keeps the file equal to this)."""
    schema = yaml.safe_load(schema_path().read_text())
    lines = ["# Configuration reference", "",
             "Generated from `workflow/schemas/config.schema.yaml` by `histosynth config-doc > config/README.md`;",
             "a test fails if this file and the schema disagree. Every key is optional: the default applies.",
             "Invalid values stop the workflow before any job runs, with the key named.", ""]

    def fmt(v):
        return "`" + (yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()) + "`"

    for section, sub in schema["properties"].items():
        if sub.get("type") != "object":
            lines += [f"## `{section}`", "", f"{sub.get('description', '')} Default: {fmt(sub.get('default'))}.", ""]
            continue
        lines += [f"## `{section}`", ""]
        if sub.get("description"):
            lines += [sub["description"], ""]
        lines += ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
        nested = []
        for key, spec in sub["properties"].items():
            if spec.get("type") == "object" and "properties" in spec:
                nested.append((f"{section}.{key}", spec))
                continue
            lines.append(_row(f"{section}.{key}", spec, fmt))
        lines.append("")
        for name, spec in nested:
            lines += [f"### `{name}`", ""]
            if spec.get("description"):
                lines += [spec["description"], ""]
            lines += ["| key | default | allowed | meaning |", "| --- | --- | --- | --- |"]
            lines += [_row(f"{name}.{k}", v, fmt) for k, v in spec["properties"].items()]
            lines.append("")
    return "\n".join(lines)


def _allowed(spec) -> str:
    if "anyOf" in spec:
        return " or ".join(_allowed(a) for a in spec["anyOf"])
    if "enum" in spec:
        return " / ".join(f"`{e}`" for e in spec["enum"])
    if spec.get("items", {}).get("enum"):
        return "list of " + " / ".join(f"`{e}`" for e in spec["items"]["enum"])
    t = spec.get("type", "")
    return t if isinstance(t, str) else " or ".join(t)


def _row(name, spec, fmt) -> str:
    return f"| `{name}` | {fmt(spec.get('default'))} | {_allowed(spec)} | {spec.get('description', '')} |"
