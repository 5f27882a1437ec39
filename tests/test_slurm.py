"""The SLURM profile against a real scheduler: `.ci/slurm-up` starts a one-node cluster
(Debian's slurm-wlm) before the suite in CI; elsewhere these tests skip and say why."""
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from e2e import REPO, lean_config, run, write_config


def _slurm_up() -> str | None:
    if not shutil.which("sinfo"):
        return "SLURM is not installed (CI runs .ci/slurm-up to start a one-node cluster)"
    r = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    if r.returncode != 0 or not any(s in r.stdout for s in ("idle", "mixed", "allocated")):
        return f"no SLURM node is up (sinfo: {(r.stdout + r.stderr).strip()[:200]}); run .ci/slurm-up as root"
    try:
        import snakemake_executor_plugin_slurm  # noqa: F401
    except ImportError:
        return "snakemake-executor-plugin-slurm is not installed (pip install -e '.[slurm]')"
    return None


REASON = _slurm_up()
needs_slurm = pytest.mark.skipif(REASON is not None, reason=f"SLURM end-to-end test skipped: {REASON}")
SMALL = ["--set-resources"] + [f"{r}:mem_mb=2500" for r in ("train_gan", "generate", "train_reference", "evaluate",
                                                             "classify", "features", "train_segnet",
                                                             "generate_layout", "evaluate_layout")] + \
        ["tile:cpus_per_task=1", "--default-resources", "mem_mb=1000", "runtime=30", "--jobs", "4",
         "--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "1",
         "--seconds-between-status-checks", "2", "--slurm-keep-successful-logs"]


def slurm_config() -> dict:
    """TINY with a class run and a layout run (every kind of job the profile sizes: tiling, a
    StyleGAN2 and a mask GAN, their evaluation, the classifier, the report), without the
    expression run, projection and copy audit, one classifier seed, and two patients per class
    (four slides, one of them a generic TIFF): 28 fewer jobs through sbatch than TINY (each
    round trip costs seconds of scheduler polling)."""
    cfg = lean_config(masks=True)
    cfg["classify"]["seeds"] = [0]
    cfg["demo"]["patients_per_class"] = 2
    return cfg


@needs_slurm
def test_tiny_dag_runs_through_sbatch_and_matches_the_local_run(tmp_path):
    for d in ("slurm", "local"):
        write_config(tmp_path / d, slurm_config())
    r = run(["--profile", str(REPO / "profiles" / "slurm")] + SMALL, tmp_path / "slurm", slurm=True)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    # every rule but `all` went through sbatch: the plugin logged a SLURM job id per job
    logdir = tmp_path / "slurm" / ".snakemake" / "slurm_logs"
    logs = {p.relative_to(logdir).parts[0] for p in logdir.rglob("*.log")}
    assert {"rule_tile", "rule_train_gan", "rule_evaluate", "rule_classify", "rule_report", "rule_label_maps",
            "rule_features", "rule_evaluate_layout"} <= logs, logs
    out = r.stdout + r.stderr
    assert "submitted with SLURM jobid" in out
    ids = [line.split("SLURM jobid ")[1].split()[0] for line in out.splitlines() if "SLURM jobid" in line]
    known = subprocess.run(["squeue", "--states=all", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert set(ids) <= set(known)  # the scheduler ran them
    # the same deterministic stages, run locally, give the same sample sheet, split and tiles
    r = run(["results/split/tiles.parquet"], tmp_path / "local")
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("results/acquire/slides.tsv", "results/split/split.tsv"):
        assert (tmp_path / "slurm" / f).read_text() == (tmp_path / "local" / f).read_text().replace(
            str(tmp_path / "local"), str(tmp_path / "slurm"))
    a, b = (pd.read_parquet(tmp_path / d / "results/split/tiles.parquet") for d in ("slurm", "local"))
    cols = ["slide_id", "x", "y", "kept", "blur", "partition"]
    assert a[cols].equals(b[cols])
    assert (tmp_path / "slurm" / "results/report/summary.json").exists()


def test_train_gan_refuses_to_run_once_per_slurm_task(tmp_path):
    """The plugin pitfall: a GPU job with several tasks runs the command once per task."""
    env = dict(os.environ, SLURM_NTASKS="2")
    r = subprocess.run([sys.executable, "-m", "histosynth.cli", "train-gan", "--tiles", str(tmp_path / "t.parquet"),
                        "--outdir", str(tmp_path / "gan")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "SLURM_NTASKS=2" in r.stderr and "tasks=1" in r.stderr
    assert not (tmp_path / "gan").exists()


def test_profiles_are_valid_snakemake_profiles():
    for name in ("slurm", "default"):
        cfg = yaml.safe_load((REPO / "profiles" / name / "config.yaml").read_text())
        assert isinstance(cfg, dict)
    slurm = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    assert slurm["executor"] == "slurm" and slurm["set-resources"]["train_gan"]["tasks"] == 1
    assert "attempt" in str(slurm["set-resources"]["train_gan"]["mem_mb"])
    r = run(["-n", "--profile", str(REPO / "profiles" / "slurm")], REPO) if REASON is None else None
    assert r is None or r.returncode == 0
