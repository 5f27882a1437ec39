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


# Free-form objects whose keys are another section's (a run's gan keys that differ).
_OVERRIDE_SECTIONS = {("masks", "gan"): "gan", ("expression", "gan"): "gan"}
_NULL_WORDS = {"null", "none", "~", ""}


def _types(spec) -> list:
    if "enum" in spec and "type" not in spec:
        return sorted({type(v).__name__ for v in spec["enum"]})
    t = spec.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _coerce_value(value, spec, key: str):
    """A value from `snakemake --config` (nested values arrive as text) in the schema's type."""
    types = _types(spec)
    if isinstance(value, list) and "array" in types:
        return [_coerce_value(v, spec.get("items", {}), f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str) or not types or "string" in types or "str" in types:
        return value
    text = value.strip()
    if "null" in types and text.lower() in _NULL_WORDS:
        return None
    if "boolean" in types and text.lower() in ("true", "false", "yes", "no"):
        return text.lower() in ("true", "yes")
    if "integer" in types or "int" in types:
        try:
            return int(text)
        except ValueError:
            pass
    if "number" in types or "float" in types:
        try:
            return float(text)
        except ValueError:
            pass
    if "array" in types and text.startswith("["):
        parsed = yaml.safe_load(text)
        return _coerce_value(parsed, spec, key)
    words = {"array": "a list", "integer": "an integer", "int": "an integer", "number": "a number",
             "float": "a number", "boolean": "true or false", "null": "null", "object": "a mapping"}
    want = " or ".join(words.get(t, t) for t in types)
    raise UserError(f"config key '{key}': {value!r} is not {want}. (Values given with snakemake --config arrive as "
                    f"text and are read as the schema's type; check the spelling, e.g. --config "
                    f"'{key.split('.')[0]}={{{key.split('.', 1)[-1]}: <value>}}'.)")


def coerce(cfg: dict, schema: dict | None = None) -> dict:
    """Convert text values to the types the schema asks for, in place: `snakemake --config
    'gan={kimg: 20}'` passes nested values as strings ('20'). Dotted top-level keys
    (`gan.kimg: 20` in a YAML file) are refused with the nested form to use instead."""
    schema = schema or yaml.safe_load(schema_path().read_text())
    props = schema["properties"]
    dotted = [k for k in cfg if isinstance(k, str) and "." in k and k.split(".", 1)[0] in props]
    if dotted:
        k = dotted[0]
        sec, rest = k.split(".", 1)
        raise UserError(f"config key '{k}': keys do not nest with dots. Write the nested form: in YAML "
                        f"'{sec}: {{{rest}: {cfg[k]}}}', on the command line --config '{sec}={{{rest}: {cfg[k]}}}'")

    def walk(obj, sub, path):
        if not isinstance(obj, dict):
            return
        for k, v in list(obj.items()):
            spec = sub.get("properties", {}).get(k)
            key = f"{path}.{k}" if path else str(k)
            if spec is None:
                continue  # unknown keys are reported by validation
            override = _OVERRIDE_SECTIONS.get((path, k))
            if override and isinstance(v, dict):
                walk(v, props[override], key)
            elif spec.get("type") == "object" and isinstance(v, dict):
                walk(v, spec, key)
            else:
                obj[k] = _coerce_value(v, spec, key)

    walk(cfg, schema, "")
    return cfg


def validate(cfg: dict, source="config") -> dict:
    import jsonschema

    from histosynth.presets import apply_preset

    schema = yaml.safe_load(schema_path().read_text())
    coerce(cfg, schema)
    if isinstance(cfg.get("gan"), dict):
        apply_preset(cfg["gan"])  # before the defaults: a preset fills only the keys not written
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


def print_schema_markdown() -> None:
    print(schema_markdown())
