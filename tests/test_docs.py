"""The README and docs/ as a user reads them: every relative link and anchor resolves, and every
`histosynth` command they show exists with the options written."""
import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "config" / "README.md"]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|\*", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set:
    out, seen, fence = set(), {}, False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        s = slug(line.lstrip("#"))
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(page: Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        yield target


def test_slug_follows_github():
    assert slug("Reading the numbers (and what they do not prove)") == "reading-the-numbers-and-what-they-do-not-prove"
    assert slug("Fidelity to StyleGAN2-ADA, and networks from NVIDIA's code or slideflow") == \
        "fidelity-to-stylegan2-ada-and-networks-from-nvidias-code-or-slideflow"
    assert slug("Running on a cluster (SLURM)") == "running-on-a-cluster-slurm"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_and_anchor_resolves(page):
    bad = []
    for target in links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest.relative_to(REPO) if REPO in dest.parents else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    assert not bad, bad


def test_readme_is_a_front_page():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, f"the README does not link {page.name}"


def test_docs_state_what_is_true_now():
    """No history in the docs: what changed, and when, belongs in git log."""
    pattern = re.compile(r"\bissue \d+|\bearlier version|\bprevious version|\bthis version\b|\bno longer\b|"
                         r"\bbefore runs were unified|\bwas lent\b|\bsince the .{0,20} fix\b", re.I)
    found = [f"{p.relative_to(REPO)}:{i}: {m.group(0)}" for p in PAGES
             for i, line in enumerate(p.read_text().splitlines(), 1) for m in pattern.finditer(line)]
    assert not found, found


def _commands():
    """(page, argv) of every `histosynth ...` command in a code span or block of the docs."""
    for page in PAGES:
        text = page.read_text()
        spans = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S) + re.findall(r"`([^`\n]+)`", text)
        for span in spans:
            for line in span.splitlines():
                line = line.split("#")[0].strip()
                m = re.search(r"(?:^|&& |\| )(histosynth [a-z][\w-]*(?: .*)?)$", line)
                if m:
                    yield page, m.group(1)


def test_every_histosynth_command_shown_exists_with_its_options():
    from histosynth.cli import _parser

    parser = _parser()
    sub = next(a for a in parser._actions if a.dest == "cmd").choices
    seen, bad = 0, []
    for page, cmd in _commands():
        try:
            argv = shlex.split(cmd.replace("...", ""))
        except ValueError:
            continue
        name = argv[1]
        if name.startswith("<"):
            continue
        seen += 1
        if name not in sub:
            bad.append(f"{page.name}: {cmd}: no command {name!r}")
            continue
        known = {o for a in sub[name]._actions for o in a.option_strings}
        for opt in (a.split("=")[0] for a in argv[2:] if a.startswith("--")):
            if opt not in known:
                bad.append(f"{page.name}: {cmd}: {name} has no option {opt}")
    assert seen >= 10 and not bad, bad


def test_snakemake_report_needs_are_installed_by_the_package_itself():
    """`snakemake --report report.html`, as the README gives it, must work after `pip install -e .`
    alone: Snakemake's HTML report imports pygments without declaring it."""
    from importlib.metadata import requires

    declared = {re.split(r"[<>=!~ ;\[]", r)[0].lower() for r in requires("histosynth") if "extra ==" not in r}
    assert "pygments" in declared
