"""benchmarks/gpu/run.sh, the one call a GPU session makes, run on the CPU with tiny settings so
that it works the first time it meets a GPU: the self-check, the training benchmark with ADA
active and the demo DAG, each reported in one markdown file with its logs and JSON beside it."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_gpu_script_runs_every_step_on_the_cpu_and_writes_one_report(tmp_path):
    out = tmp_path / "out" / "gpu-results.md"
    env = dict(os.environ, PYTHON=sys.executable, HS_DEMO_DIR=str(tmp_path / "demo"),
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), "--device", "cpu", "--quick", "--out", str(out)],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    md = out.read_text()
    for heading in ("## Self-check", "## Training throughput", "## Demo on the CPU"):
        assert heading in md, md
    res = json.loads((out.parent / "gpu-results-files" / "results.json").read_text())
    assert [s["status"] for s in res["steps"]] == ["PASS"] * 3
    assert res["selfcheck"]["ok"] and len(res["selfcheck"]["items"]) == 10
    bench = res["train_benchmark"]["results"]
    assert bench[0]["setting"] == "fp32+ada" and bench[0]["ada_p"] == 0.5 and bench[0]["img_per_sec"] > 0
    demo = res["demo"]
    assert demo["runs"]["stylegan2-class"]["device"] == "cpu" and demo["runs"]["stylegan2-class"]["img_per_sec"] > 0
    assert {"tile", "train_gan", "classify"} <= set(demo["rules"]) and set(demo["study"]) >= {"real", "mixed_x1"}
    assert (tmp_path / "demo" / "results/report/summary.html").exists()
    # what comes back from a device call: at most 8 files, no deeper than two folders
    files = [p for p in out.parent.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out.parent).parts) <= 2 for p in files)


def test_wheel_list_is_the_closure_of_what_the_gpu_image_lacks():
    sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))
    from wheels import closure

    pkgs = closure()
    assert {"snakemake", "openslide-python", "openslide-bin", "pyvips", "pyvips-binary", "torch-fidelity",
            "torchstain", "imageio-ffmpeg", "jsonschema"} <= set(pkgs)
    assert not {"torch", "numpy", "pandas", "scipy", "torchvision", "pillow"} & set(pkgs)
