"""The shape of the package: stages depend on each other in one direction only, the CLI only
parses and dispatches (and every argument it parses reaches its stage function), and no block
of six lines is written twice in src/."""
from __future__ import annotations

import ast
import inspect
from collections import defaultdict

from importgraph import SRC, _imports

CLI_ONLY = {"help", "config", "options", "masks_options", "run_spec", "target", "sections", "cmd", "verbose", "quiet"}


def _package_graph() -> dict[str, set[str]]:
    """histosynth subpackage (or top-level module) -> those it imports, at any level."""
    edges = defaultdict(set)
    for f in (SRC / "histosynth").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if len(parts) < 2:
            continue
        for imp in _imports(ast.parse(f.read_text()), ".".join(parts)):
            p = imp.split(".")
            if p[0] == "histosynth" and len(p) > 1 and p[1] != parts[1]:
                edges[parts[1]].add(p[1])
    return edges


def _cycle(edges) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = "done"
        stack.pop()
        return None

    for n in sorted(edges):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_no_import_cycle_between_subpackages():
    edges = _package_graph()
    assert _cycle(edges) is None, " -> ".join(_cycle(edges))
    assert "masks" in edges["gan"] and "gan" not in edges["masks"]  # the mask run reads label maps, not the reverse
    assert not edges["torch_utils"] - {"utils"}  # the neutral layer imports no stage
    assert edges["images"] <= {"utils"}


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_cli_parses_and_dispatches_only():
    """cli.py stays small, and every argument of every command reaches its stage function."""
    import histosynth.cli as cli

    assert len((SRC / "histosynth" / "cli.py").read_text().splitlines()) < 300
    sub = next(a for a in cli._parser()._actions if a.dest == "cmd")
    for name, parser in sub.choices.items():
        module, fn = parser.get_default("target").split(":")
        params = inspect.signature(getattr(__import__(module, fromlist=[fn]), fn)).parameters
        dests = {a.dest for a in parser._actions} - CLI_ONLY
        sections = parser.get_default("sections")
        wanted = set(dests)
        if sections and sections[0] not in ("masks", "run"):
            wanted.add("opts")
        wanted |= {s for s in ("masks", "run") if s in sections}
        missing = wanted - set(params)
        assert not missing, f"histosynth {name}: {module}.{fn} does not take {sorted(missing)}"
        required = {p for p, v in params.items() if v.default is inspect.Parameter.empty}
        assert required <= wanted, f"histosynth {name}: {fn} needs {sorted(required - wanted)}, which nothing passes"


def _blocks(text: str, n: int = 6):
    """Windows of `n` code lines (blank, comment and import lines passed over, white space
    folded) that carry some substance."""
    lines = [" ".join(s.split()) for s in text.splitlines()]
    lines = [s for s in lines if s and not s.startswith(("#", "import ", "from "))]
    for k in range(len(lines) - n + 1):
        win = tuple(lines[k:k + n])
        if sum(len(s) > 12 for s in win) >= 4:
            yield win


def test_no_block_of_six_lines_repeated_in_src():
    seen = defaultdict(set)
    for f in sorted((SRC / "histosynth").rglob("*.py")):
        for win in _blocks(f.read_text()):
            seen[win].add(f.relative_to(SRC).as_posix())
    repeated = {w: fs for w, fs in seen.items() if len(fs) > 1}
    assert not repeated, "\n".join(f"{sorted(fs)}: {w[0]}" for w, fs in list(repeated.items())[:5])


def test_the_repeat_finder_sees_a_copied_block():
    body = "\n".join(f"value_{i} = compute_something({i}) + 1" for i in range(6))
    assert list(_blocks(body)) and list(_blocks("import os\n" + body)) == list(_blocks(body))


def test_every_module_imports():
    """Each module of src/ imports (a name moved away from a module still imported elsewhere
    shows here, not only in the rule that runs it)."""
    import importlib

    for f in sorted((SRC / "histosynth").rglob("*.py")):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        importlib.import_module(".".join(parts))
