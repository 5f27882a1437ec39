"""The wheels a GPU machine needs to run histosynth, for benchmarks/gpu/run.sh.

The lent GPU machines have Python 3.12, PyTorch and a scientific stack but none of histosynth's
own dependencies, and reach no package registry. This script, run where pip works (with
histosynth installed, so that its dependency closure can be read from the installed metadata),
writes cp312 manylinux wheels of every dependency that the GPU image lacks into one folder (pure
wheels are built locally for packages published only as source). Carry that folder with the run.

  python benchmarks/gpu/wheels.py --out .whl
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

# Python packages of the GPU image ('cuda'), as the device tool's notes list them (2026-11-17).
GPU_IMAGE = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels sympy
tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp
""".split())
# Left out or swapped to keep the carried folder under the device call's 64 MiB: pulp (16 MB of
# solver binaries) serves only Snakemake's ILP scheduler, and run.py schedules with --scheduler
# greedy; imageio-ffmpeg 0.5.1 (27 MB, ffmpeg 6) satisfies histosynth's >= 0.5 where the newest
# wheel is 68 MB.
LEAVE_OUT = {"pulp"}
PINS = {"imageio-ffmpeg": "0.5.1"}
PLATFORMS = ["manylinux_2_39_x86_64", "manylinux_2_35_x86_64", "manylinux_2_34_x86_64", "manylinux_2_31_x86_64",
             "manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64", "any"]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "histosynth", exclude=GPU_IMAGE) -> dict:
    """name -> installed version of every run-time dependency of `root` (not extras) outside `exclude`."""
    seen: dict = {}

    def walk(name):
        n = norm(name)
        if n in seen or n in exclude:
            return
        try:
            v = version(name)
        except PackageNotFoundError:
            return  # a dependency for another platform or Python, not installed here
        seen[n] = v
        for r in requires(name) or []:
            if "extra ==" in r:
                continue
            walk(re.match(r"[A-Za-z0-9_.\-]+", r).group(0))

    walk(root)
    seen.pop(norm(root), None)
    return seen


def fetch(pkgs: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    plat = [a for p in PLATFORMS for a in ("--platform", p)]
    for name, ver in sorted(pkgs.items()):
        spec = f"{name}=={ver}"
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.12", "--implementation", "cp", *plat, "-d", str(out), spec],
                           capture_output=True, text=True)
        if r.returncode:  # published as source only: build it here; it must come out pure Python
            r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), spec],
                               capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(f"{spec}: no cp312 wheel and no local build: {r.stderr[-500:]}")
            built = sorted(out.glob(f"{re.sub(r'[-.]', '_', name)}-{ver}-*.whl"), key=lambda p: p.stat().st_mtime)
            if built and not built[-1].name.endswith("-none-any.whl"):
                raise SystemExit(f"{spec}: built {built[-1].name}, which is not pure Python; it will not run on "
                                 f"the GPU machine's Python 3.12")
    total = sum(p.stat().st_size for p in out.glob("*.whl"))
    print(f"{len(list(out.glob('*.whl')))} wheels, {total / 2**20:.1f} MiB in {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=".whl")
    ap.add_argument("--list", action="store_true", help="print the packages and stop")
    a = ap.parse_args()
    pkgs = {k: PINS.get(k, v) for k, v in closure().items() if k not in LEAVE_OUT}
    if a.list:
        print(" ".join(f"{k}=={v}" for k, v in sorted(pkgs.items())))
        return
    fetch(pkgs, Path(a.out))


if __name__ == "__main__":
    main()
