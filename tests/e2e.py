"""The tiny end-to-end configuration and how the tests run Snakemake on it; the DAG run itself is
the suite-wide `e2e_workdir` fixture (conftest.py), shared by every test that reads its results."""
import json
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
    # QuPath regions over part of each slide (write_config writes them): labels from their classes
    "tiles": {"tile_px": 32, "tile_um": 128, "blur": 5,
              "roi": {"dir": "resources/regions", "require": True, "labels": True,
                      "classes": {"Tumour": "tumor", "Normal tissue": "normal"}}},
    "split": {"test_fraction": 0.34, "val_fraction": 0.0},
    "gan": {"resolution": 32, "kimg": 0.3, "batch": 8, "z_dim": 32, "w_dim": 64, "mapping_layers": 2,
            "channel_base": 256, "channel_max": 32, "snap_kimg": 0.15, "tick_kimg": 0.1, "gpus": 0, "device": "cpu",
            "metrics": ["fid", "pr"], "metrics_samples": 64, "keep_snapshots": 1},
    "generate": {"snapshot": "best", "per_class": 200, "blend_steps": 4, "blend_seeds": [0, 1], "blend_analysis_steps": 5,
                 "project": {"tiles": 4, "steps": 20, "counterfactual_steps": 3, "grid_tiles": 4}},
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


def lean_config(masks: bool) -> dict:
    """TINY without the expression run, projection and copy audit (and without the mask run
    unless `masks`): the class run computes exactly as in TINY, since those do not feed it."""
    cfg = json.loads(json.dumps(TINY))
    cfg["expression"]["enabled"] = False
    cfg["masks"]["enabled"] = masks
    cfg["generate"]["project"]["tiles"] = 0
    cfg["evaluate"]["audit"] = {"enabled": False}
    return cfg


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


REGION_X1, HOLE, IGNORE = 1700, (520, 760), (1000, 1100)  # level-0 px of the 2048 px demo slides


def write_regions(d: Path, demo: dict | None = None) -> None:
    """One QuPath export per slide of the demo cohort `demo` (TINY's by default) in
    d/resources/regions: a region of the slide's class ("Tumour" / "Normal tissue") over x <
    REGION_X1, crossing the slide's top, left and bottom edges, with a hole (HOLE x HOLE), and
    an Ignore* square (IGNORE x IGNORE). Half the slides as QuPath 0.5 writes them
    (FeatureCollection, objectType, color list), half as 0.3 (a bare list, PathAnnotationObject,
    packed colorRGB)."""
    import json

    from histosynth.slides.synthetic import demo_cohort

    demo = demo or TINY["demo"]
    out = d / "resources" / "regions"
    out.mkdir(parents=True, exist_ok=True)
    (h0, h1), (i0, i1) = HOLE, IGNORE

    def sq(a, b):
        return [[a, a], [b, a], [b, b], [a, b], [a, a]]

    for k, spec in enumerate(demo_cohort(demo["patients_per_class"], demo["size_px"], 0.5, 0)):
        name = {"tumor": "Tumour", "normal": "Normal tissue"}[spec.label]
        shapes = [(name, [[[-60, -40], [REGION_X1, -40], [REGION_X1, 2100], [-60, 2100], [-60, -40]], sq(h0, h1)]),
                  ("Ignore*", [sq(i0, i1)])]
        if k % 2:
            feats = [{"type": "Feature", "id": "PathAnnotationObject", "geometry": {"type": "Polygon", "coordinates": c},
                      "properties": {"classification": {"name": n, "colorRGB": -3670016}, "isLocked": False}}
                     for n, c in shapes]
            doc = feats
        else:
            feats = [{"type": "Feature", "id": f"0f{k}-{j}", "geometry": {"type": "Polygon", "coordinates": c},
                      "properties": {"objectType": "annotation", "classification": {"name": n, "color": [200, 0, 0]}}}
                     for j, (n, c) in enumerate(shapes)]
            doc = {"type": "FeatureCollection", "features": feats}
        (out / f"{spec.slide_id}.geojson").write_text(json.dumps(doc))


def write_config(d: Path, cfg: dict | None = None) -> None:
    """A working directory for `cfg` (TINY): its config and the regions it names."""
    (d / "config").mkdir(parents=True, exist_ok=True)
    (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg or TINY))
    write_regions(d, (cfg or TINY)["demo"])


def build_workdir(d: Path) -> Path:
    """The whole DAG on TINY in `d`: first the `tiles` target alone, then everything."""
    write_config(d)
    # a stage target first: up to tiling (QC thumbnails included) and nothing after it
    r = run(["tiles"], d)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    assert len(list((d / "results/tiles").glob("*.parquet"))) == 8
    assert len(list((d / "results/tiles/qc").glob("*.png"))) == 8
    assert not (d / "results/split").exists() and not (d / "results/gan").exists()
    r = run([], d)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-6000:])
    return d
