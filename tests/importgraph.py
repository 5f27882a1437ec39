"""Which third-party modules each `histosynth <stage>` can import, found statically.

The CLI maps each command to a stage function (cli.COMMANDS), whose module imports stage code
lazily inside each function, and the stage modules import their own dependencies; following those imports (module level and function level
alike) gives everything a stage could need at run time, without importing anything.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _module_file(name: str) -> Path | None:
    parts = name.split(".")
    base = SRC.joinpath(*parts)
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.exists():
            return p
    return None


def _optional(node: ast.AST) -> set[int]:
    """ids of import nodes inside `try: ... except ImportError` (optional dependencies)."""
    out: set[int] = set()
    for t in ast.walk(node):
        if isinstance(t, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
            for h in t.handlers
        ):
            out.update(id(n) for stmt in t.body for n in ast.walk(stmt))
    return out


def _imports(node: ast.AST, module: str) -> set[str]:
    """Absolute module names imported anywhere under `node`, optional imports excepted."""
    out: set[str] = set()
    optional = _optional(node)
    for n in ast.walk(node):
        if id(n) in optional:
            continue
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                f = _module_file(module)
                parts = module.split(".")
                if f is not None and f.name == "__init__.py":
                    parts = parts + ["__init__"]
                root = ".".join(parts[: -n.level] + ([n.module] if n.module else []))
            else:
                root = n.module or ""
            out.add(root)
            for a in n.names:  # `from histosynth.x import y` may name a submodule
                if _module_file(f"{root}.{a.name}"):
                    out.add(f"{root}.{a.name}")
    return out


@functools.cache
def _parse(name: str) -> ast.Module:
    return ast.parse(_module_file(name).read_text())


@functools.cache
def _file_imports(name: str) -> frozenset[str]:
    """Everything a histosynth module imports (parsed once per session: every stage walks the
    same modules)."""
    return frozenset(_imports(_parse(name), name))


def third_party(roots: set[str]) -> set[str]:
    """Top-level third-party module names reachable from the histosynth modules `roots`."""
    seen: set[str] = set()
    found: set[str] = set()
    todo = list(roots)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        # importing a.b.c runs a/__init__ and a/b/__init__ too
        parts = mod.split(".")
        for i in range(1, len(parts)):
            todo.append(".".join(parts[:i]))
        f = _module_file(mod)
        if f is None:
            continue
        for imp in _file_imports(mod):
            top = imp.split(".")[0]
            if top == "histosynth":
                todo.append(imp)
            elif top and top not in sys.stdlib_module_names and top != "__future__":
                found.add(top)
    return found


def _functions(module: str):
    """(module-level imports, {function name: node}) of a histosynth module."""
    tree = _parse(module)
    funcs = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    top = {imp for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)) for imp in _imports(n, module)}
    return top, funcs


def _reached(funcs: dict, name: str) -> set[str]:
    """The functions of one module that `name` runs: itself and the module's functions it calls."""
    out, todo = set(), [name]
    while todo:
        f = todo.pop()
        if f in out:
            continue
        out.add(f)
        todo += [n.id for n in ast.walk(funcs[f]) if isinstance(n, ast.Name) and n.id in funcs]
    return out


def _commands() -> dict[str, tuple[str, str]]:
    """`histosynth` subcommand -> (module, function), read from cli.COMMANDS without running it."""
    tree = ast.parse((SRC / "histosynth" / "cli.py").read_text())
    table = next(n.value for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "COMMANDS" for t in n.targets))
    out = {}
    for key, value in zip(table.keys, table.values):
        target = value.elts[0].value
        out[key.value] = tuple(target.split(":"))
    return out


def stage_modules() -> dict[str, set[str]]:
    """`histosynth` subcommand -> the histosynth modules it imports: the CLI's own (parsing and
    the config sections it resolves) and its stage function's (module level, the function and
    the module's helpers it calls)."""
    cli_top, cli_funcs = _functions("histosynth.cli")
    base = set(cli_top)
    for f in _reached(cli_funcs, "main"):
        base |= _imports(cli_funcs[f], "histosynth.cli")
    result = {}
    for sub, (module, name) in _commands().items():
        top, funcs = _functions(module)
        mods = base | top | {module}
        for f in _reached(funcs, name):
            mods |= _imports(funcs[f], module)
        result[sub] = mods
    return result


def stage_requirements() -> dict[str, set[str]]:
    return {sub: third_party(mods) for sub, mods in stage_modules().items()}


if __name__ == "__main__":
    for sub, mods in sorted(stage_requirements().items()):
        print(f"{sub:18s} {' '.join(sorted(mods))}")
