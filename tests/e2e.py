"""The tiny end-to-end configuration and how the tests run Snakemake on it; the DAG run itself is
the suite-wide `e2e_workdir` fixture (conftest.py), shared by every test that reads its results."""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TINY = {
    "run_name": "tiny e2e",
    "torch_threads": 1,  # as the demo: one-thread jobs side by side on the two cores
    "demo": {"outdir": "resources/demo", "patients_per_class": 3, "size_px": 2048},
    "acquire": {"manifest": "resources/demo/manifest.tsv"},
    "tiles": {"tile_px": 32, "tile_um": 128, "blur": 5},
    "split": {"test_fraction": 0.34, "val_fraction": 0.0},
    "gan": {"resolution": 32, "kimg": 0.3, "batch": 8, "z_dim": 32, "w_dim": 64, "mapping_layers": 2,
            "channel_base": 256, "channel_max": 32, "snap_kimg": 0.3, "tick_kimg": 0.1, "gpus": 0, "device": "cpu"},
    "generate": {"per_class": 200, "blend_steps": 4, "blend_seeds": [0, 1], "blend_analysis_steps": 5},
    "evaluate": {"extractors": ["domain"], "allow_small": True, "kid_subset_size": 100, "kid_subsets": 20},
    "classify": {"arch": "shufflenet_v2_x0_5", "synthetic_ratio": [1], "seeds": [0, 1], "steps": 10, "batch": 16,
                 "bootstrap": 100},
    "expression": {"enabled": True, "matrix": "resources/demo/expression_tpm.gct.gz", "id_regex": "^(P\\d+)-",
                   "new_profiles": "resources/demo/new_profiles.csv", "vae_samples": 2, "per_profile": 4,
                   "heldout_per_profile": 40, "top_variance": 200,
                   "vae": {"epochs": 60, "latent": 8, "hidden": [64, 32]}, "gan": {"kimg": 0.2}},
    "masks": {"enabled": True, "gan": {"kimg": 0.3, "batch": 8, "z_dim": 16}, "channel_base": 256, "channel_max": 32,
              "spade_hidden": 16, "ndf": 16, "d_scales": 1, "eval_maps": 64, "max_maps": 150, "triplets": 4},
}
SNAKE = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"), "--cores", "2"]


_NO_SLURM_BIN: list = []


def snakemake_env() -> dict:
    """The environment of the tests' Snakemake runs: this interpreter's commands first, and a
    `scontrol` that fails at once. The SLURM executor plugin (installed for tests/test_slurm.py)
    runs `scontrol show config` whenever Snakemake starts; on a machine with the SLURM client but
    no controller that answers, every start then waits about 10 s for it. These runs use no SLURM
    (test_slurm.py's run through sbatch keeps the real command: run(..., slurm=True))."""
    if not _NO_SLURM_BIN:
        d = Path(tempfile.mkdtemp(prefix="histosynth-no-slurm-"))
        stub = d / "scontrol"
        stub.write_text("#!/bin/sh\necho 'scontrol: not used by this test run' >&2\nexit 1\n")
        stub.chmod(0o755)
        _NO_SLURM_BIN.append(str(d))
    path = os.pathsep.join([_NO_SLURM_BIN[0], os.path.dirname(sys.executable), os.environ["PATH"]])
    return dict(os.environ, PATH=path)


def run(args, cwd, slurm: bool = False, **kw):
    """Snakemake on `args` in `cwd`; `slurm`: with the machine's own SLURM commands (the SLURM
    executor needs the real `scontrol`)."""
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]) if slurm \
        else snakemake_env()
    return subprocess.run(SNAKE + args, cwd=cwd, capture_output=True, text=True, env=env, timeout=1500, **kw)


def build_workdir(d: Path) -> Path:
    """The whole DAG on TINY in `d`: first the `tiles` target alone, then everything."""
    (d / "config").mkdir()
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(TINY))
    # a stage target first: up to tiling (QC thumbnails included) and nothing after it
    r = run(["tiles"], d)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    assert len(list((d / "results/tiles").glob("*.parquet"))) == 8
    assert len(list((d / "results/tiles/qc").glob("*.png"))) == 8
    assert not (d / "results/split").exists() and not (d / "results/gan").exists()
    r = run([], d)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    return d
