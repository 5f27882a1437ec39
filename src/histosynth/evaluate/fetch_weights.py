"""Download torch-fidelity's Inception-v3 weights once, verified (``python -m histosynth.evaluate.fetch_weights DEST [URL]``).

torch-fidelity names the file by the first 8 hex digits of its SHA-256; the file is accepted
only if its SHA-256 starts with them."""
from __future__ import annotations

import re
import sys

from histosynth.acquire.download import fetch
from histosynth.utils import UserError, file_hash

INCEPTION_URL = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/"
                 "weights-inception-2015-12-05-6726825d.pth")


def main(dest, url=INCEPTION_URL):
    m = re.search(r"-([0-9a-f]{8})\.pth$", url)
    res = fetch(url, dest, label="inception-v3 weights")
    digest = file_hash(res.path, "sha256")
    if m and not digest.startswith(m.group(1)):
        res.path.unlink()
        raise UserError(f"inception weights: SHA-256 {digest} does not start with {m.group(1)}; file removed")
    print(f"{res.path}: sha256 {digest}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
