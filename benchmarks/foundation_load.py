"""Loading UNI's weights file (timm's ViT-L/16 layout, 1.2 GB; random values here):
histosynth's load (the architecture built on PyTorch's meta device, the file's tensors assigned
as its parameters) against building the model with random weights and copying the file's
tensors into them, in one process. Prints seconds per load (best of --reps), the ratio, and
whether both give the same parameters.

  python benchmarks/foundation_load.py
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()

    import torch

    from histosynth.evaluate import foundation as F

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        model = F.build("uni")
        sd = model.state_dict()
        path = Path(d) / "weights.pt"
        torch.save(sd, path)
        del model, sd

        def baseline():  # random initialisation, then a copy of every tensor into it
            m = F.build("uni")
            s = F.read_state_dict(path)
            m.load_state_dict(s, strict=True)
            return m.eval()

        times = {}
        for label, fn in (("random init + copy", baseline), ("meta + assign (histosynth)", lambda: F.load("uni", path))):
            best = float("inf")
            for _ in range(a.reps):
                t = time.perf_counter()
                m = fn()
                best = min(best, time.perf_counter() - t)
            times[label] = (best, m)
        (tb, mb), (th, mh) = times.values()
        same = all(torch.equal(x, y) for x, y in zip(mb.state_dict().values(), mh.state_dict().values()))
        n = sum(p.numel() for p in mh.parameters())
        print(f"uni: {n / 1e6:.0f} M parameters, torch {torch.__version__}, {torch.get_num_threads()} threads")
        for label, (t, _) in times.items():
            print(f"  {label:28s} {t:6.2f} s")
        print(f"  ratio {tb / th:.1f}x faster; same parameters: {same}")


if __name__ == "__main__":
    main()
