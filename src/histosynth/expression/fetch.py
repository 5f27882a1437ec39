"""Download an expression matrix once, resumably (``python -m histosynth.expression.fetch URL DEST``).

Expression portals (GTEx) publish no checksums for these files, so the file is accepted when
its content looks like what its name says (a GCT starts with ``#1.``; an HTML error page
served with status 200 does not), and its MD5 is recorded beside it (``DEST.md5``)."""
from __future__ import annotations

import gzip
import sys
from pathlib import Path

from histosynth.acquire.download import fetch
from histosynth.utils import atomic_path, file_hash


def looks_right(path: Path, name: str) -> str | None:
    """The problem with the downloaded file, judged by the name it will have, or None."""
    name = name.lower()
    if ".gct" not in name:
        return None
    try:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(path, "rt") as fh:
            first = fh.readline()
    except (OSError, UnicodeDecodeError, EOFError) as e:
        return f"not a readable {'gzipped ' if name.endswith('.gz') else ''}GCT file ({e})"
    if not first.startswith("#1."):
        return f"does not start like a GCT file (first line {first[:60]!r}); the server sent something else"
    return None


def main(url, dest):
    res = fetch(url, dest, label="expression matrix", check=lambda p: looks_right(p, Path(dest).name))
    digest = file_hash(res.path, "md5")
    with atomic_path(Path(f"{res.path}.md5")) as tmp:
        Path(tmp).write_text(f"{digest}  {res.path.name}\n")
    print(f"{res.path}: md5 {digest}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
