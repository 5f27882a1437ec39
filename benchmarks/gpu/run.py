"""The GPU session's one call (started by benchmarks/gpu/run.sh, which installs what is missing):

1. ``histosynth selfcheck --device D``: every run kind trained with ADA at p = 0.5, bf16 and
   torch.compile, generation, the reference classifier, FID/KID/PR and the study's arms;
2. ``benchmarks/gan_train.py`` at paper256 widths, 256 px, ADA held at p = 0.5: bf16 eager and
   bf16 + torch.compile (the training's default on a GPU), img/s and peak GPU memory;
3. the demo (``config/config.yaml``) with ``gan.gpus: 1``: wall time, peak memory of the
   workflow's processes, each rule's time, each GAN run's device, speed and FID against its
   real-vs-real floor, concordance and the study's AUCs;

and one markdown file with all of it (plus the JSON each step wrote, beside it). A step that fails
or runs out of its time is reported as such and the next one still runs; the exit status is 1
when any step failed. ``--quick`` shrinks every step (CPU test: tests/test_gpu_script.py).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# --quick: a tiny cohort and networks, class run only (the CPU test of this script)
QUICK_DEMO = {
    "demo": {"patients_per_class": 3, "size_px": 1024},
    "tiles": {"tile_px": 32, "tile_um": 64, "blur": 5},
    "split": {"test_fraction": 0.34, "val_fraction": 0.0},
    "gan": {"resolution": 32, "kimg": 0.1, "batch": 8, "z_dim": 32, "w_dim": 64, "mapping_layers": 2,
            "channel_base": 256, "channel_max": 32, "snap_kimg": 0.1, "tick_kimg": 0.05},
    "generate": {"per_class": 64, "blend_steps": 3, "blend_seeds": [0, 1], "blend_analysis_steps": 3},
    "evaluate": {"extractors": ["domain"], "allow_small": True, "kid_subset_size": 32, "kid_subsets": 5},
    "classify": {"arch": "shufflenet_v2_x0_5", "synthetic_ratio": [1], "seeds": [0], "steps": 4, "batch": 16,
                 "bootstrap": 100},
    "expression": {"enabled": False},
    "masks": {"enabled": False},
}


def run_step(name: str, cmd: list, log: Path, timeout: float, env=None) -> dict:
    """Run `cmd` with its output in `log`; status, seconds and the children's peak memory."""
    t0 = time.time()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    print(f"[gpu/run] {name}: {' '.join(map(str, cmd))}", flush=True)
    with open(log, "w") as f:
        try:
            r = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, timeout=max(1, timeout),
                               env=env, cwd=ROOT)
            status = "PASS" if r.returncode == 0 else f"FAIL (exit {r.returncode})"
        except subprocess.TimeoutExpired:
            status = f"TIMEOUT after {timeout:.0f} s"
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out = {"step": name, "status": status, "seconds": round(time.time() - t0, 1), "log": log.name,
           "peak_rss_gib": round(max(peak, before) / 2**20, 2)}
    print(f"[gpu/run] {name}: {status} in {out['seconds']} s", flush=True)
    if status != "PASS":
        tail = log.read_text(errors="replace").splitlines()[-25:]
        print("\n".join(tail), flush=True)
    return out


def environment(device: str) -> dict:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
           "cuda_available": torch.cuda.is_available(), "device": device}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return env


def rule_times(log_text: str) -> dict:
    """rule -> {jobs, seconds}: each job's time from its start to its finish as Snakemake's log
    stamps them (one-second resolution)."""
    import re
    from datetime import datetime

    stamp, started, out = None, {}, {}
    lines = log_text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]", line)
        if m:
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        m = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):$", line)
        if m and stamp is not None:
            for nxt in lines[i + 1:i + 15]:
                j = re.match(r"\s+jobid: (\d+)", nxt)
                if j:
                    started[j.group(1)] = stamp
                    break
            continue
        m = re.search(r"Finished jobid: (\d+) \(Rule: (\w+)\)", line)
        if m and m.group(1) in started and stamp is not None:
            r = out.setdefault(m.group(2), {"jobs": 0, "seconds": 0.0})
            r["jobs"] += 1
            r["seconds"] += (stamp - started.pop(m.group(1))).total_seconds()
    return out


def demo_figures(work: Path) -> dict:
    """What the demo run shows: per-rule times (from Snakemake's logs in the folder), peak memory
    where a rule declares a benchmark file, and each GAN run's device, speed and quality."""
    logs = sorted((work / ".snakemake/log").glob("*.snakemake.log"))
    out = {"rules": rule_times("\n".join(p.read_text(errors="replace") for p in logs)), "runs": {}}
    for tsv in sorted((work / "results/benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(work / "results/benchmarks").parts[0].removesuffix(".tsv")
        with open(tsv) as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if rows and rule in out["rules"]:
            r = out["rules"][rule]
            try:
                r["max_rss_mb"] = max(r.get("max_rss_mb", 0.0), float(rows[0].get("max_rss") or 0))
            except ValueError:
                pass
    summary = work / "results/report/summary.json"
    s = json.loads(summary.read_text()) if summary.exists() else {}
    for opts_file in sorted((work / "results/gan").glob("*/training_options.json")):
        run = opts_file.parent.name
        o = json.loads(opts_file.read_text())
        ticks = [json.loads(x) for x in open(opts_file.parent / "stats.jsonl") if x.strip()]
        speeds = sorted(t["img_per_sec"] for t in ticks[1:] if "img_per_sec" in t) or \
            [t["img_per_sec"] for t in ticks if "img_per_sec" in t]
        m = (s.get("metrics", {}).get(run) or {}).get("domain") or {}
        out["runs"][run] = {"device": o.get("device"), "compiled": o.get("compiled"),
                            "bf16_autocast": o.get("bf16_autocast"), "kimg": o.get("kimg"),
                            "img_per_sec": speeds[len(speeds) // 2] if speeds else None,
                            "fid": m.get("fid"), "fid_real_vs_real": m.get("fid_real_vs_real"),
                            "concordance": (s.get("concordance", {}).get(run) or {}).get("weak")}
    out["study"] = {arm: {"auc": v.get("auc"), "auc_ci95": v.get("auc_ci95")}
                    for arm, v in (s.get("classifier") or {}).items()}
    return out


def _fmt(v, spec=".1f"):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def markdown(res: dict) -> str:
    e = res["environment"]
    lines = ["# histosynth on a GPU: self-check, training benchmark, demo", "",
             f"Machine: {e.get('gpu', 'no GPU')} ({_fmt(e.get('gpu_memory_gib'))} GiB), {e['cpus']} CPUs; Python "
             f"{e['python']}, torch {e['torch']}; device asked: `{e['device']}`; "
             f"{'quick (test) settings' if res['quick'] else 'full settings'}; install "
             f"{res['install_seconds']} s; total {res['seconds']:.0f} s.", "",
             "| step | status | seconds | peak RSS of its processes (GiB) |", "| --- | --- | --- | --- |"]
    lines += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['peak_rss_gib']} |" for s in res["steps"]]
    sc = res.get("selfcheck")
    if sc:
        lines += ["", f"## Self-check ({sc['device']}, {sc['size']['resolution']} px, {sc['size']['steps']} steps, "
                      f"bf16 {_fmt(sc['bf16'])}, compile {_fmt(sc['compile'])})", "",
                  "| item | status | speed | seconds | detail |", "| --- | --- | --- | --- | --- |"]
        for it in sc["items"]:
            speed = f"{it['speed']:.1f} {it['unit']}" if it.get("speed") is not None else "–"
            detail = (it.get("detail") or it.get("error") or "").replace("|", "/")[:160]
            lines.append(f"| {it['name']} | {it['status']} | {speed} | {it['seconds']:.1f} | {detail} |")
    tb = res.get("train_benchmark")
    if tb:
        base = tb["results"][0]["img_per_sec"] if tb["results"] else None
        lines += ["", f"## Training throughput ({tb['preset']}: {tb['options']}, ADA held at p = 0.5)", "",
                  "| setting | img/s | kimg/h | ratio | peak GPU memory (GiB) |", "| --- | --- | --- | --- | --- |"]
        for r in tb["results"]:
            lines.append(f"| {r['setting']} | {r['img_per_sec']:.1f} | {r['kimg_per_hour']:.0f} | "
                         f"{r['img_per_sec'] / base:.2f} | {_fmt(r.get('peak_gpu_mem_gib'))} |")
    d = res.get("demo")
    if d:
        lines += ["", f"## {d['title']} ({d['wall_s']:.0f} s wall, peak RSS {d['peak_rss_gib']} GiB)", "",
                  "| rule | jobs | seconds (sum) | max RSS (MB) |", "| --- | --- | --- | --- |"]
        for rule, r in sorted(d["rules"].items(), key=lambda kv: -kv[1]["seconds"]):
            lines.append(f"| {rule} | {r['jobs']} | {r['seconds']:.0f} | {_fmt(r.get('max_rss_mb'), '.0f')} |")
        lines += ["", "| GAN run | device | compiled | bf16 | kimg | img/s | domain-FID | real-vs-real floor | "
                      "concordance |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for run, r in d["runs"].items():
            lines.append(f"| {run} | {r['device']} | {_fmt(r['compiled'])} | {_fmt(r['bf16_autocast'])} | "
                         f"{_fmt(r['kimg'], 'g')} | {_fmt(r['img_per_sec'])} | {_fmt(r['fid'], '.3g')} | "
                         f"{_fmt(r['fid_real_vs_real'], '.3g')} | {_fmt(r['concordance'], '.3f')} |")
        if d.get("study"):
            lines += ["", "| study arm | AUC | 95% CI |", "| --- | --- | --- |"]
            for arm, v in d["study"].items():
                ci = v.get("auc_ci95") or [None, None]
                lines.append(f"| {arm} | {_fmt(v['auc'], '.3f')} | {_fmt(ci[0], '.3f')} – {_fmt(ci[1], '.3f')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--out", default=None, help="the markdown file (default: $OUT/gpu-results.md, else "
                                                "benchmarks/out/gpu-results.md); step logs and JSON go beside it")
    ap.add_argument("--quick", action="store_true", help="tiny settings everywhere (the CPU test)")
    ap.add_argument("--budget-s", type=float, default=540, help="seconds for all steps together (default 540)")
    ap.add_argument("--skip", nargs="*", default=[], choices=["selfcheck", "train", "demo"])
    ap.add_argument("--dry-run-demo", action="store_true", help="only list the demo's jobs (snakemake -n)")
    ap.add_argument("--install-seconds", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    out = Path(a.out or (Path(os.environ["OUT"]) / "gpu-results.md" if os.environ.get("OUT")
                         else ROOT / "benchmarks/out/gpu-results.md")).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    aux = out.parent / f"{out.stem}-files"  # logs and JSON, one folder down (what a device call brings back)
    aux.mkdir(exist_ok=True)
    t_all = time.time()
    left = lambda: a.budget_s - (time.time() - t_all)  # noqa: E731
    res = {"environment": environment(a.device), "quick": a.quick, "install_seconds": a.install_seconds, "steps": []}
    py = sys.executable

    if "selfcheck" not in a.skip:
        cmd = ["histosynth", "selfcheck", "--device", a.device, "--json", aux / "selfcheck.json"]
        if a.quick:
            cmd += ["--steps", "2", "--resolution", "16"]
        res["steps"].append(run_step("selfcheck", cmd, aux / "selfcheck.log", min(left(), 0.35 * a.budget_s)))
        if (aux / "selfcheck.json").exists():
            res["selfcheck"] = json.loads((aux / "selfcheck.json").read_text())

    if "train" not in a.skip:
        if a.quick:
            bench = ["--preset", "demo64", "--settings", "fp32+ada", "--kimg", "0.032", "--batch", "8"]
        elif a.device == "cuda":
            bench = ["--preset", "paper256", "--settings", "bf16+ada", "bf16+compile+ada", "--kimg", "2"]
        else:
            bench = ["--preset", "demo64", "--settings", "fp32", "fp32+ada"]
        cmd = [py, "benchmarks/gan_train.py", *bench, "--ada-p", "0.5", "--json", aux / "train_benchmark.json"]
        res["steps"].append(run_step("train benchmark", cmd, aux / "train_benchmark.log",
                                     min(left(), 0.3 * a.budget_s)))
        if (aux / "train_benchmark.json").exists():
            res["train_benchmark"] = json.loads((aux / "train_benchmark.json").read_text())

    if "demo" not in a.skip:
        # the demo's folder stays out of `out`'s folder: a device call brings back only a few files
        work = Path(os.environ.get("HS_DEMO_DIR") or tempfile.mkdtemp(prefix="histosynth-gpu-demo-"))
        work.mkdir(parents=True, exist_ok=True)
        print(f"[gpu/run] demo folder: {work}", flush=True)
        overrides = dict(QUICK_DEMO) if a.quick else {}
        gan = dict(overrides.get("gan", {}), gpus=1 if a.device == "cuda" else 0, device=a.device)
        overrides["gan"] = gan
        (work / "gpu.yaml").write_text(yaml.safe_dump(overrides))
        cmd = [py, "-m", "snakemake", "--snakefile", ROOT / "workflow/Snakefile", "--directory", work,
               "--configfile", ROOT / "config/config.yaml", work / "gpu.yaml", "--cores", "all",
               "--scheduler", "greedy", "--rerun-incomplete"] + (["-n"] if a.dry_run_demo else [])
        title = "Demo with gan.gpus: 1" if a.device == "cuda" else "Demo on the CPU (gan.gpus: 0)"
        step = run_step(title, cmd, aux / "demo.log", left())
        res["steps"].append(step)
        res["demo"] = dict(demo_figures(work), title=title, folder=str(work), wall_s=step["seconds"],
                           peak_rss_gib=step["peak_rss_gib"])

    res["seconds"] = time.time() - t_all + a.install_seconds
    out.write_text(markdown(res))
    (aux / "results.json").write_text(json.dumps(res, indent=2, default=str))
    print(out.read_text())
    return 0 if all(s["status"] == "PASS" for s in res["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
