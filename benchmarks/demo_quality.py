"""Does every GAN run of the demo make tiles that look like its real tiles and honour its
condition, whatever the training seed? Runs the demo's DAG (config/config.yaml, or --config) up
to the evaluated stage once per seed (gan.seed; the mask run takes its seed from gan) and prints,
per seed and run, the figures the report's verdict is made of:

* StyleGAN2 runs (class, expression): domain-FID against the real-vs-real floor (class shares
  matched), every class's FID against the class's own floor, weak concordance, and whether every
  class's HED colour mean and spread lie within its real patients' range;
* the layout run: mIoU of the generated tiles' segmentation against their maps (held-out maps),
  against chance.

The slides, tiles, split and reference classifier are made once (the first seed's folder) and
copied into the other seeds' folders, so the seeds differ only in training. Writes
<workdir>/demo_quality.json and demo_quality.md (the table the README shows) and a
real-vs-generated picture per run of the first seed.

    python benchmarks/demo_quality.py                      # seeds 0 1 2, 2 cores
    python benchmarks/demo_quality.py --seeds 0 --cores 2  # one seed
    python benchmarks/demo_quality.py --set 'gan={kimg: 200, gpus: 1}'  # longer runs, on a GPU

``--set KEY=YAML`` merges into the config as Snakemake's ``--config`` does (nested mappings key
by key).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = ["resources", "results/acquire", "results/tiles", "results/split", "results/evaluate/reference_classifier.pt",
          "results/evaluate/features", ".snakemake"]


def snakemake(workdir: Path, cores: int, targets: list[str]) -> float:
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    t = time.time()
    with open(workdir / "snakemake.log", "a") as log:
        r = subprocess.run([sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "workflow" / "Snakefile"),
                            "--cores", str(cores), *targets], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                           env=env)
    if r.returncode:
        sys.exit(f"snakemake failed in {workdir}: see {workdir / 'snakemake.log'}")
    return time.time() - t


def merge(config: dict, overrides: list[str]) -> dict:
    """`config` with each ``KEY=YAML`` of `overrides` merged in: mappings key by key (as Snakemake
    merges ``--config`` into the config file), any other value replaced."""
    def into(base: dict, new: dict) -> dict:
        for k, v in new.items():
            base[k] = into(dict(base[k]), v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
        return base

    out = json.loads(json.dumps(config))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            sys.exit(f"--set {item!r}: expected KEY=VALUE, e.g. --set 'gan={{kimg: 200}}'")
        into(out, {key: yaml.safe_load(value)})
    return out


def targets(config: dict) -> tuple[list[str], list[str], str | None]:
    from histosynth.config import validate
    from histosynth.runs import STYLEGAN2_KINDS, resolve_runs

    runs = resolve_runs(validate(config))
    style = [r for r, s in runs.items() if s.kind in STYLEGAN2_KINDS and s.kind != "none"]
    mask = next((r for r, s in runs.items() if s.kind == "mask"), None)
    out = [f"results/evaluate/{r}/metrics.json" for r in style]
    return out + ([f"results/evaluate/{mask}/layout.json"] if mask else []), style, mask


def style_figures(metrics: dict) -> dict:
    from histosynth.report.build import fidelity_verdict

    m = metrics["metrics"]["domain"]
    cls = {k: {"fid": v, "floor": m["per_class_floor"][k], "ratio": v / m["per_class_floor"][k]}
           for k, v in m["per_class_fid"].items()}
    v = fidelity_verdict(metrics["metrics"], metrics["concordance"], metrics.get("colour"))
    return {"fid": m["fid"], "floor": m["fid_real_vs_real"], "ratio": m["fid"] / m["fid_real_vs_real"],
            "per_class": cls, "concordance": metrics["concordance"].get("weak"),
            "colour_within_range": (metrics.get("colour") or {}).get("passed"),
            "colour_outside": (metrics.get("colour") or {}).get("outside", []),
            "colour_checked": sum(len(c.get("checks", {})) for c in (metrics.get("colour") or {}).get("per_class", {}).values()),
            "verdict": v["verdict"], "n": m["n_real"]}


def layout_figures(result: dict) -> dict:
    lay = result["layout"]
    return {"miou": lay["generated"]["miou"], "miou_ci95": lay["generated"].get("miou_ci95"),
            "chance": lay["chance"]["miou"], "ceiling": (lay.get("real") or {}).get("miou"),
            "n_maps": lay["n_maps"], "n_patients": lay["n_patients"]}


def picture(workdir: Path, run: str, out: Path, per_class: int = 8) -> None:
    """Real training tiles (top row of each class) over generated tiles (bottom row)."""
    import numpy as np
    from PIL import Image

    from histosynth.slides.store import load_tiles, read_index

    def rooted(index):  # the stores' paths are relative to the workflow's folder
        index["store"] = [str(Path(workdir) / p) if not os.path.isabs(p) else p for p in index["store"]]
        return index

    real = read_index(workdir / "results/split/tiles.parquet")
    real = rooted(real[real["kept"] & (real["partition"] == "train")].copy())
    fake = rooted(read_index(workdir / f"results/generate/{run}/synthetic.parquet"))
    rows = []
    for label in sorted(real["label"].unique()):
        r = real[real["label"] == label].sample(per_class, random_state=0)
        f = fake[fake["label"] == label].sample(per_class, random_state=0)
        rows += [np.concatenate(list(load_tiles(r)), 1), np.concatenate(list(load_tiles(f)), 1)]
    img = np.concatenate(rows, 0)
    Image.fromarray(img).resize((img.shape[1] * 2, img.shape[0] * 2), Image.NEAREST).save(out)


def markdown_table(results: dict, style: list, mask: str | None) -> list[str]:
    lines = ["| run | seed | FID / floor | worst class FID / its floor | concordance | colour in range | verdict |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for seed, res in results.items():
        for r in style:
            f = res[r]
            k, c = max(f["per_class"].items(), key=lambda kv: kv[1]["ratio"])
            colour = "yes" if f["colour_within_range"] else f"no ({len(f['colour_outside'])} of {f['colour_checked']} outside)"
            lines.append(f"| {r} | {seed} | {f['fid']:.1f} / {f['floor']:.1f} = {f['ratio']:.2f}x | {k}: {c['fid']:.1f} / "
                         f"{c['floor']:.1f} = {c['ratio']:.2f}x | {f['concordance']:.1%} | "
                         f"{colour} | "
                         f"{f['verdict']} |")
        if mask:
            f = res[mask]
            lines.append(f"| {mask} | {seed} | mIoU {f['miou']:.3f} (chance {f['chance']:.3f}) | – | – | – | – |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "config" / "config.yaml"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--workdir", default=str(REPO / "benchmarks" / "out" / "demo_quality"))
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=YAML",
                    help="config overrides, merged as Snakemake's --config: --set 'gan={kimg: 200, gpus: 1}'")
    a = ap.parse_args(argv)
    base_cfg = merge(yaml.safe_load(Path(a.config).read_text()), a.set)
    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results, first = {}, None
    for seed in a.seeds:
        d = work / f"seed{seed}"
        cfg = json.loads(json.dumps(base_cfg))
        cfg.setdefault("gan", {})["seed"] = seed
        want, style, mask = targets(cfg)
        if first is not None and not (d / "results").exists():
            for p in SHARED:  # the same slides, tiles, split and judge; cp -a keeps Snakemake's view of them
                if (first / p).exists():
                    (d / p).parent.mkdir(parents=True, exist_ok=True)
                    subprocess.run(["cp", "-a", str(first / p), str(d / p)], check=True)
        (d / "config").mkdir(parents=True, exist_ok=True)
        (d / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
        secs = snakemake(d, a.cores, want)
        first = first or d
        res = {"seconds": secs}
        for r in style:
            res[r] = style_figures(json.loads((d / f"results/evaluate/{r}/metrics.json").read_text()))
        if mask:
            res[mask] = layout_figures(json.loads((d / f"results/evaluate/{mask}/layout.json").read_text()))
        results[seed] = res
        print(json.dumps({"seed": seed, **res}), flush=True)
    lines = markdown_table(results, style, mask)
    (work / "demo_quality.md").write_text("\n".join(lines) + "\n")
    (work / "demo_quality.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    if first is not None:
        for r in style:
            picture(first, r, work / f"real_vs_generated_{r}.png")


if __name__ == "__main__":
    main()
