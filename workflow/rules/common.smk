import json
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pandas as pd
from snakemake.utils import validate

# `--config 'gan={kimg: 20}'` passes nested values as text: read them as the schema's types first.
from histosynth.config import coerce as _hs_coerce, validate as _hs_validate

_hs_coerce(config)
validate(config, schema="../schemas/config.schema.yaml", set_default=True)
# Nested defaults too (snakemake fills the top level); the same code the CLI uses.

_hs_validate(config, "config")

GAN = config["gan"]["name"]
SLIDE_DIR = config["acquire"]["slide_dir"]  # downloads land in SLIDE_DIR/<slide>.<ext>
# One GPU for the rules that run networks outside training (reference classifier, generation,
# evaluation, the study) when the GAN is given GPUs: they use CUDA whenever it is visible.
GPU_ONE = min(1, int(config["gan"]["gpus"]))


def _gan_runs():
    """GAN runs by name: the `gan` run, plus the expression-conditioned run when
    expression.enabled (its options: gan, overridden by expression.gan)."""
    runs = {GAN: config["gan"]}
    ex = config["expression"]
    if ex["enabled"] and config["gan"]["conditioning"] != "expression":
        if ex["run_name"] == GAN:
            raise ValueError(
                f"expression.run_name {ex['run_name']!r} must differ from gan.name"
            )
        o = {k: v for k, v in config["gan"].items()}
        o.update(ex["gan"], name=ex["run_name"], conditioning="expression")
        runs[ex["run_name"]] = _hs_validate({"gan": o}, "expression.gan")["gan"]
    return runs


RUNS = _gan_runs()
for _name, _o in RUNS.items():
    if _o["resolution"] != config["tiles"]["tile_px"]:
        raise ValueError(
            f"run {_name}: gan.resolution ({_o['resolution']}) must equal tiles.tile_px "
            f"({config['tiles']['tile_px']}): the GAN trains on the tiles as they are cut"
        )
# expression.matrix may be a URL: fetched once into resources/expression/ (rule fetch_expression)
EXPRESSION_URL = (
    config["expression"]["matrix"]
    if "://" in (config["expression"]["matrix"] or "")
    else None
)
EXPRESSION_MATRIX = (
    f"resources/expression/{PurePosixPath(urlsplit(EXPRESSION_URL).path).name}"
    if EXPRESSION_URL
    else config["expression"]["matrix"]
)
EXPR_RUNS = [r for r, o in RUNS.items() if o["conditioning"] == "expression"]
if EXPR_RUNS and not config["expression"]["matrix"]:
    raise ValueError(
        "an expression-conditioned GAN run needs expression.matrix (a GCT, CSV or STAR manifest)"
    )

# The layout-conditioned (label-map) run, when masks.enabled: its own rules (rules/masks.smk),
# options = gan overridden by masks.gan.
from histosynth.masks.run import (
    resolve_labels as _resolve_labels,
    run_options as _mask_run_options,
)

MASKS = config["masks"]
MASK_RUN = MASKS["run_name"] if MASKS["enabled"] else None
MASK_OPTS = _mask_run_options(config["gan"], MASKS) if MASKS["enabled"] else {}
if MASKS["enabled"]:
    _resolve_labels(MASKS)  # a bad label set stops the workflow before any job runs
    if MASK_RUN in RUNS:
        raise ValueError(
            f"masks.run_name {MASK_RUN!r} must differ from the other runs' names {sorted(RUNS)}"
        )
    if MASKS["source"] == "geojson" and not MASKS["geojson_dir"]:
        raise ValueError(
            "masks.source geojson needs masks.geojson_dir (the folder of <slide_id>.geojson files)"
        )

# How rules call histosynth. Normally the `histosynth` command installed beside Snakemake.
# Under `--software-deployment-method conda` each rule runs in its pinned environment from
# workflow/envs/, which holds the dependencies but not histosynth: the code then runs from
# this checkout's src/ (the same code, whatever the environment).
if "conda" in {
    str(m).lower().rsplit(".", 1)[-1]
    for m in workflow.deployment_settings.deployment_method
}:
    HS_ENV = "PYTHONPATH={}${{PYTHONPATH:+:$PYTHONPATH}} ".format(
        shlex.quote(str(Path(workflow.basedir).parent / "src"))
    )
    HISTOSYNTH = f"{HS_ENV}python -m histosynth.cli"
else:
    HS_ENV = ""
    HISTOSYNTH = "histosynth"
DEMO_MANIFEST = str(Path(config["demo"]["outdir"]) / "manifest.tsv")


wildcard_constraints:
    slide="[A-Za-z0-9_-]+",
    run="|".join(map(re.escape, RUNS)),


def opts(section):
    """A config section as one shell-quoted JSON argument (a change re-runs only its rules)."""
    return json.dumps(config[section], sort_keys=True)


def run_opts(wildcards):
    return json.dumps(RUNS[wildcards.run], sort_keys=True)


def gan_inputs(wildcards):
    inputs = {"tiles": "results/split/tiles.parquet"}
    if wildcards.run in EXPR_RUNS:
        inputs["embeddings"] = "results/expression/embeddings.parquet"
    return inputs


def launcher(wildcards):
    gpus = RUNS[wildcards.run]["gpus"]
    if gpus > 1:
        return (
            f"{HS_ENV}torchrun --standalone --nproc-per-node {gpus} -m histosynth.cli"
        )
    return HISTOSYNTH


def expression_outputs():
    """What the expression runs add to the report."""
    out = []
    for r in EXPR_RUNS:
        out += [
            f"results/evaluate/{r}/profiles.json",
            f"results/evaluate/{r}/metrics.json",
            f"results/gan/{r}/stats.jsonl",
            f"results/evaluate/{r}/blend.png",
        ]
        if config["expression"]["new_profiles"] or config["expression"]["vae_samples"]:
            out.append(f"results/generate/{r}/profiles.parquet")
    return out


def sample_sheet():
    return pd.read_csv(
        checkpoints.acquire_query.get().output.sheet,
        sep="\t",
        dtype=str,
        keep_default_na=False,
    )


def slide_path(wildcards):
    sheet = sample_sheet()
    row = sheet[sheet["slide_id"] == wildcards.slide]
    return row["path"].iloc[0]


def all_tile_indexes(wildcards):
    return expand("results/tiles/{slide}.parquet", slide=sample_sheet()["slide_id"])


def all_qc_thumbs(wildcards):
    return expand("results/tiles/qc/{slide}.png", slide=sample_sheet()["slide_id"])


def acquire_query_input(wildcards):
    """The query's local inputs: the manifest, or a local GTEx annotations file; GDC has none."""
    acq = config["acquire"]
    if acq["source"] == "manifest":
        return {"manifest": acq["manifest"]}
    ann = acq["gtex"]["annotations"]
    if acq["source"] == "gtex" and ann and "://" not in ann:
        return {"annotations": ann}
    return {}


GDC_MANIFEST = (
    {"gdc_manifest": "results/acquire/gdc_manifest.txt"}
    if config["acquire"]["source"] == "gdc"
    else {}
)


def all_download_records(wildcards):
    sheet = sample_sheet()
    slide_dir = f"{SLIDE_DIR}/"
    return [
        f"results/acquire/verified/{p.removeprefix(slide_dir)}.json"
        for p in sheet["path"]
    ]


def label_map_inputs(wildcards):
    inputs = {"tiles": "results/split/tiles.parquet"}
    if MASKS["source"] == "auto":
        inputs["segmenter"] = "results/masks/segmenter.json"
    else:  # geojson: the slide's annotation file, when there is one (slides without it get no maps)
        p = Path(MASKS["geojson_dir"]) / f"{wildcards.slide}.geojson"
        if p.exists():
            inputs["annotations"] = str(p)
    return inputs


def all_label_map_indexes(wildcards):
    return expand(
        "results/masks/slides/{slide}.parquet", slide=sample_sheet()["slide_id"]
    )


def evaluate_layout_inputs(wildcards):
    inputs = {
        "index": "results/masks/index.parquet",
        "synthetic": f"results/generate/{MASK_RUN}/synthetic.parquet",
        "heldout": f"results/generate/{MASK_RUN}/heldout.parquet",
        "segmenter": (
            "results/masks/segmenter.json"
            if MASKS["source"] == "auto"
            else "results/masks/segnet.pt"
        ),
        "reference": "results/evaluate/reference_classifier.pt",
    }
    if "inception-v3" in config["evaluate"]["extractors"]:
        inputs["weights"] = config["evaluate"]["inception_weights"]
    return inputs


def mask_outputs():
    """What the mask run adds to the report."""
    if not MASKS["enabled"]:
        return []
    return [
        f"results/evaluate/{MASK_RUN}/layout.json",
        f"results/evaluate/{MASK_RUN}/triplets.png",
        f"results/gan/{MASK_RUN}/stats.jsonl",
    ]


def stage_outputs(stage):
    """What the networks / generated / evaluated stage targets ask for, over every run."""
    runs = list(RUNS) + ([MASK_RUN] if MASK_RUN else [])
    if stage == "networks":
        return [f"results/gan/{r}/network.pt" for r in runs]
    if stage == "generated":
        return [f"results/generate/{r}/synthetic.parquet" for r in runs]
    out = [f"results/evaluate/{r}/metrics.json" for r in RUNS]
    out += [f"results/evaluate/{r}/profiles.json" for r in EXPR_RUNS]
    return out + ([f"results/evaluate/{MASK_RUN}/layout.json"] if MASK_RUN else [])


def evaluate_inputs(wildcards):
    inputs = {
        "tiles": "results/split/tiles.parquet",
        "synthetic": f"results/generate/{wildcards.run}/synthetic.parquet",
        "reference": "results/evaluate/reference_classifier.pt",
    }
    if "inception-v3" in config["evaluate"]["extractors"]:
        inputs["weights"] = config["evaluate"]["inception_weights"]
    return inputs
