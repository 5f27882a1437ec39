"""Crash consistency: SIGKILL Snakemake and its jobs at points through the DAG, restart, and
compare with the uninterrupted suite-wide end-to-end run (`e2e_workdir`)."""
import json
import os
import subprocess

from e2e import SNAKE, TINY, lean_config, run, snakemake_env, write_config

# Kill points: (what, a path whose appearance means the stage is running, seconds to wait then).
KILL_POINTS = [("tile", "logs/tile/*.log", 0.3), ("train_gan", "logs/train_gan/stylegan2-class.log", 2.0),
               ("generate", "logs/generate/stylegan2-class.log", 0.5), ("evaluate", "logs/evaluate/*.log", 0.5),
               ("classify", "logs/classify.log", 3.0), ("report", "logs/report.log", 0.3)]
TEMP_PATTERNS = (".*.tmp", "*.partial", "*.tmp.npz")


def _killed_at(cwd, pattern, delay, timeout=1500):
    """Run snakemake in its own session; SIGKILL the whole session (Snakemake and its jobs)
    `delay` s after `pattern` appears. True if it was killed, False if it finished first."""
    import signal
    import time

    with open(cwd / "snakemake.log", "a") as log:
        p = subprocess.Popen(SNAKE + ["--rerun-incomplete"], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                             env=snakemake_env(),
                             start_new_session=True)
        t0 = time.time()
        while p.poll() is None and time.time() - t0 < timeout:
            if list(cwd.glob(pattern)):
                time.sleep(delay)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return True
            time.sleep(0.05)
        p.wait(timeout=60)
        return False


def _finished_files_are_whole(root):
    """Every output at its final name reads completely (nothing half-written looks finished)."""
    import pandas as pd
    import tifffile
    import torch
    from PIL import Image

    for f in (root / "results").rglob("*"):
        if not f.is_file() or f.name.startswith("."):
            continue
        if f.suffix == ".parquet":
            pd.read_parquet(f)
        elif f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".pt":
            torch.load(f, weights_only=True)
        elif f.suffix == ".png":
            Image.open(f).verify()
        elif f.suffix == ".tiff":
            with tifffile.TiffFile(f) as t:
                t.pages[-1].asarray()


def crash_config() -> dict:
    """TINY with only the class run, as far as the kill points go: no expression or mask run, no
    projection, no copy audit. Every file of the class run is the uninterrupted e2e run's (the
    runs and those stages do not feed it), so that run is the reference."""
    return lean_config(masks=False)


def test_killed_anywhere_and_restarted_equals_uninterrupted(e2e_workdir, tmp_path):
    """SIGKILL Snakemake and its jobs during tile, train_gan, generate, evaluate, classify and
    report; after each kill, `snakemake --unlock` and the same command again. The end result
    equals the uninterrupted run's (`e2e_workdir`, whose class run is the same computation):
    split, tile indexes, network weights and every metric of summary.json; no temporary file is
    left behind."""
    import pandas as pd
    import torch

    write_config(tmp_path, crash_config())
    kills = []
    for what, pattern, delay in KILL_POINTS:
        if _killed_at(tmp_path, pattern, delay):
            kills.append(what)
            _finished_files_are_whole(tmp_path)
            assert run(["--unlock"], tmp_path).returncode == 0
    assert len(kills) >= 4, f"killed only during {kills}"
    print("killed during", kills)
    r = run(["--rerun-incomplete"], tmp_path)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Nothing to be done" in r.stdout + r.stderr or (tmp_path / "results/report/summary.json").exists()

    left = [str(p) for pat in TEMP_PATTERNS for d in ("results", "resources") for p in (tmp_path / d).rglob(pat)]
    assert not left, left
    assert (tmp_path / "results/split/split.tsv").read_text() == (e2e_workdir / "results/split/split.tsv").read_text()
    for idx in sorted((e2e_workdir / "results/tiles").glob("*.parquet")):
        a, b = pd.read_parquet(idx), pd.read_parquet(tmp_path / "results/tiles" / idx.name)
        pd.testing.assert_frame_equal(a.drop(columns=["store"]), b.drop(columns=["store"]))
    nets = sorted((tmp_path / "results/gan").glob("*/network.pt"))
    assert [n.parent.name for n in nets] == [TINY["gan"].get("name", "stylegan2-class")]
    for net in nets:
        a = torch.load(e2e_workdir / "results/gan" / net.parent.name / "network.pt", weights_only=True)["G_ema"]
        b = torch.load(net, weights_only=True)["G_ema"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), net.parent.name
    sa = json.loads((e2e_workdir / "results/report/summary.json").read_text())
    sb = json.loads((tmp_path / "results/report/summary.json").read_text())
    run_name = nets[0].parent.name
    assert sa["slides"] == sb["slides"] and sa["classifier"] == sb["classifier"], kills
    for key in ("metrics", "concordance", "colour", "verdict"):
        assert sa[key][run_name] == sb[key][run_name], (key, kills)

    def untimed(runs):  # training speed and evaluation times are wall-clock, what a restart may change
        out = {r: {k: v for k, v in o.items() if "per_sec" not in k} for r, o in runs.items()}
        for o in out.values():
            sm = o.get("snapshot_metrics")
            if sm:
                o["snapshot_metrics"] = dict(sm, eval_share=None, series=[
                    {k: v for k, v in x.items() if not k.startswith("eval_")} for x in sm["series"]])
        return out

    assert untimed(sa["gan"])[run_name] == untimed(sb["gan"])[run_name], kills
