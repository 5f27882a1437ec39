"""workflow/envs/*.yaml: every rule has a pinned environment that holds what its stage imports.

conda cannot be reached here, so the environments are checked statically: YAML shape,
exact pins that satisfy pyproject.toml, one version per package across environments, and
coverage of every third-party module the rule's `histosynth <stage>` can import (found by
following the imports in src/, tests/importgraph.py).
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from importgraph import stage_requirements, third_party
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENVS = ROOT / "workflow" / "envs"
# What a module needs beyond the distribution that provides it: parquet I/O through pandas,
# the C libraries that openslide-python and pyvips load.
IMPLIED = {"pandas": {"pyarrow"}, "openslide-python": {"openslide-bin"}, "pyvips": {"pyvips-binary"}}
LIGHT = {"acquire", "slides"}  # no torch: these run on login nodes and small CPU jobs


def _rules() -> dict[str, dict]:
    """rule name -> {env, stages} read from workflow/rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^(?:rule|checkpoint) (\w+):\n", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            body = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]  # up to the next top-level line
            if not re.search(r"^    (shell|run|script):", body, flags=re.M):
                continue  # stage targets (rules/targets.smk) only collect inputs: no command, no environment
            env = re.search(r"^    conda:\n\s+\"\.\./envs/([\w-]+)\.yaml\"", body, flags=re.M)
            stages = set(re.findall(r"-q ([a-z][a-z-]+) ", body))
            modules = set(re.findall(r"python -m (histosynth[\w.]+)", body))
            out[name] = {"env": env.group(1) if env else None, "stages": stages, "modules": modules,
                         "file": smk.name}
    return out


def _env(name: str) -> dict:
    return yaml.safe_load((ENVS / f"{name}.yaml").read_text())


def _pins(env: dict) -> dict[str, str]:
    pip = [d for d in env["dependencies"] if isinstance(d, dict)]
    assert len(pip) == 1 and list(pip[0]) == ["pip"], "one pip: section"
    pins = {}
    for spec in pip[0]["pip"]:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)==([0-9][0-9A-Za-z.+]*)", spec)
        assert m, f"not an exact pin: {spec!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def _requirements() -> dict[str, Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    return md.packages_distributions()  # scans every installed distribution: once per session


def _distributions(modules: set[str]) -> set[str]:
    provided = _packages_distributions()
    out = set()
    for mod in modules:
        assert mod in provided, f"module {mod} is imported but no installed distribution provides it"
        out |= {canonicalize_name(d) for d in provided[mod]}
    for dist in list(out):
        out |= IMPLIED.get(dist, set())
    return out


def test_every_rule_names_an_existing_environment():
    rules = _rules()
    assert {"download", "tile", "train_gan", "evaluate", "classify", "report"} <= set(rules)
    for name, r in rules.items():
        assert r["env"], f"rule {name} ({r['file']}) has no conda: directive"
        assert (ENVS / f"{r['env']}.yaml").exists(), f"rule {name}: workflow/envs/{r['env']}.yaml missing"
        assert r["stages"] or r["modules"], f"rule {name}: no histosynth command found in its shell"
    used = {r["env"] for r in rules.values()}
    assert used == {p.stem for p in ENVS.glob("*.yaml")}, "an environment file no rule uses"


@pytest.mark.parametrize("name", sorted(p.stem for p in ENVS.glob("*.yaml")))
def test_environment_is_valid_and_pinned(name):
    env = _env(name)
    assert set(env) == {"channels", "dependencies"}, f"{name}: unexpected keys {set(env)}"
    assert env["channels"] == ["conda-forge", "nodefaults"]
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    for spec in conda:
        assert re.fullmatch(r"[a-z0-9_-]+=[0-9][0-9.*]*", spec), f"{name}: conda dependency not pinned: {spec!r}"
    python = next(s for s in conda if s.startswith("python="))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert Version(python.split("=")[1]) in SpecifierSet(project["requires-python"])
    reqs = _requirements()
    for dist, version in _pins(env).items():
        assert dist in reqs, f"{name}: {dist} is not a dependency in pyproject.toml"
        assert reqs[dist].specifier.contains(version), f"{name}: {dist}=={version} outside pyproject's {reqs[dist]}"


def test_one_version_per_package_across_environments():
    seen: dict[str, tuple[str, str]] = {}
    for p in sorted(ENVS.glob("*.yaml")):
        for dist, version in _pins(_env(p.stem)).items():
            if dist in seen:
                assert seen[dist][1] == version, f"{dist}: {seen[dist][0]} pins {seen[dist][1]}, {p.stem} {version}"
            seen[dist] = (p.stem, version)


def test_each_environment_holds_what_its_rules_import():
    needs = stage_requirements()
    for name, r in _rules().items():
        modules = set()
        for stage in r["stages"]:
            assert stage in needs, f"rule {name} calls unknown stage {stage}"
            modules |= needs[stage]
        modules |= third_party(r["modules"])
        missing = _distributions(modules) - set(_pins(_env(r["env"])))
        assert not missing, f"rule {name}: workflow/envs/{r['env']}.yaml lacks {sorted(missing)}"
    for light in LIGHT:
        assert not {"torch", "torchvision"} & set(_pins(_env(light))), f"{light} should not carry torch"


def test_import_graph_sees_lazy_imports():
    """The checker itself: a stage's function-level imports are found, optional ones are not."""
    needs = stage_requirements()
    assert "torch" in needs["train-gan"] and "torch_fidelity" in needs["evaluate"]
    assert "openslide" in needs["download"] and "pyvips" in needs["tile"]
    assert "torch" not in needs["download"]  # utils.seed_everything's guarded torch import is optional


def test_source_checkout_runs_without_installation(tmp_path):
    """The command conda-deployed rules use: the package from src/ by PYTHONPATH, from any cwd."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-m", "histosynth.cli", "config-doc"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "acquire.source" in out.stdout or "`source`" in out.stdout
    common = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    assert 'python -m histosynth.cli"' in common and "PYTHONPATH=" in common


def test_constraints_pin_every_dependency_to_one_version():
    """constraints.txt (what the Quick start and CI install with) pins every package that
    histosynth and its test extras need, directly or not, each once."""
    import re
    from importlib.metadata import PackageNotFoundError, requires
    from pathlib import Path

    norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()  # noqa: E731
    lines = [x.strip() for x in (Path(__file__).resolve().parents[1] / "constraints.txt").read_text().splitlines()
             if x.strip() and not x.startswith("#")]
    pins = [norm(x.split("==")[0]) for x in lines]
    assert all("==" in x for x in lines) and len(pins) == len(set(pins))
    needed, todo = set(), ["histosynth[test]"]
    while todo:
        name = todo.pop()
        base, _, extra = name.partition("[")
        try:
            reqs = requires(base) or []
        except PackageNotFoundError:
            continue
        for r in reqs:
            marker = r.partition(";")[2]
            if "extra ==" in marker and f'extra == "{extra.rstrip("]")}"' not in marker:
                continue
            if "sys_platform" in marker or "platform_system" in marker or "python_version" in marker:
                continue
            dep = norm(re.match(r"[A-Za-z0-9_.\-]+", r).group(0))
            if dep not in needed:
                needed.add(dep)
                todo.append(dep)
    missing = sorted(needed - set(pins) - {"histosynth"})
    assert not missing, f"not pinned in constraints.txt: {missing}"
