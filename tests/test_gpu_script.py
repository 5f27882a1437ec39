"""benchmarks/gpu/run.sh, the one call a GPU session makes, run on the CPU with tiny settings so
that it works the first time it meets a GPU: the self-check, the training benchmark with ADA
active and the demo's Snakemake call, reported in one markdown file with logs and JSON beside
it. The demo step's figures are read from the suite's end-to-end run (the same DAG, run once)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks" / "gpu"))


def test_gpu_script_runs_every_step_on_the_cpu_and_writes_one_report(tmp_path):
    out = tmp_path / "out" / "gpu-results.md"
    from e2e import snakemake_env

    env = dict(snakemake_env(), PYTHON=sys.executable, HS_DEMO_DIR=str(tmp_path / "demo"))
    r = subprocess.run(["bash", str(REPO / "benchmarks/gpu/run.sh"), "--device", "cpu", "--quick", "--dry-run-demo",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, (r.stdout[-4000:], r.stderr[-4000:])
    md = out.read_text()
    for heading in ("## Self-check", "## Training throughput", "## Demo on the CPU"):
        assert heading in md, md
    res = json.loads((out.parent / "gpu-results-files" / "results.json").read_text())
    assert [s["status"] for s in res["steps"]] == ["PASS"] * 3
    assert res["selfcheck"]["ok"] and len(res["selfcheck"]["items"]) == 11
    bench = res["train_benchmark"]["results"]
    assert bench[0]["setting"] == "fp32+ada" and bench[0]["ada_p"] == 0.5 and bench[0]["img_per_sec"] > 0
    demo_log = (out.parent / "gpu-results-files" / "demo.log").read_text()
    assert "demo_slides" in demo_log and "This was a dry-run" in demo_log  # the DAG the GPU run will execute
    # what comes back from a device call: at most 8 files, no deeper than two folders
    files = [p for p in out.parent.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out.parent).parts) <= 2 for p in files)


def test_demo_figures_and_report_from_a_finished_run(e2e_workdir):
    from run import demo_figures, markdown

    d = demo_figures(e2e_workdir)
    assert {"tile", "train_gan", "generate", "evaluate", "classify"} <= set(d["rules"])
    assert d["rules"]["tile"]["jobs"] == 8 and d["rules"]["train_gan"]["jobs"] == 3 and d["rules"]["tile"]["seconds"] > 0
    assert set(d["runs"]) == {"stylegan2-class", "stylegan2-expression", "spade-layout"}
    cls = d["runs"]["stylegan2-class"]
    assert cls["device"] == "cpu" and cls["img_per_sec"] > 0 and cls["fid"] is not None
    assert cls["fid_real_vs_real"] is not None and 0 <= cls["concordance"] <= 1
    assert set(d["study"]) == {"real", "real_noaug", "real_hed", "synthetic", "mixed_x1"}
    md = markdown({"environment": {"python": "3.12", "torch": "2.x", "cpus": 16, "device": "cuda", "gpu": "H200",
                                   "gpu_memory_gib": 139.8}, "quick": False, "install_seconds": 20, "seconds": 500,
                   "steps": [{"step": "demo", "status": "PASS", "seconds": 120.0, "peak_rss_gib": 2.0}],
                   "demo": dict(d, title="Demo with gan.gpus: 1", wall_s=120.0, peak_rss_gib=2.0)})
    assert "## Demo with gan.gpus: 1 (120 s wall" in md and "| stylegan2-class | cpu |" in md and "| real |" in md


def test_wheel_list_is_the_closure_of_what_the_gpu_image_lacks():
    from wheels import closure

    pkgs = closure()
    assert {"snakemake", "openslide-python", "openslide-bin", "pyvips", "pyvips-binary", "torch-fidelity",
            "torchstain", "imageio-ffmpeg", "jsonschema"} <= set(pkgs)
    assert not {"torch", "numpy", "pandas", "scipy", "torchvision", "pillow"} & set(pkgs)
