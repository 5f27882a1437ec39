import hashlib
import json
import re
import shlex
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pandas as pd
from snakemake.utils import validate

# `--config 'gan={kimg: 20}'` passes nested values as text: histosynth's validation reads them as
# the schema's types, fills a gan.preset's values and every nested default (the same code the CLI
# uses); snakemake's validation follows, on the completed config.
from histosynth.config import validate as _hs_validate

_hs_validate(config, "config")
validate(config, schema="../schemas/config.schema.yaml", set_default=True)

GAN = config["gan"]["name"]
TORCH_THREADS = int(config["torch_threads"])  # threads of every PyTorch rule
SLIDE_DIR = config["acquire"]["slide_dir"]  # downloads land in SLIDE_DIR/<slide>.<ext>
# One GPU for the rules that run networks outside training (reference classifier, generation,
# evaluation, the study) when the GAN is given GPUs: they use CUDA whenever it is visible.
GPU_ONE = min(1, int(config["gan"]["gpus"]))
AUDIT = config["evaluate"]["audit"][
    "enabled"
]  # the copy audit of every run (rule audit_copies)
# the resolved configuration's SHA-256, recorded in exported datasets' cards
CONFIG_DIGEST = hashlib.sha256(
    json.dumps(config, sort_keys=True, default=str).encode()
).hexdigest()

# Every GAN run, whatever its kind (class, attributes, vector, expression, none, mask), resolved
# once (histosynth.runs): the {run} wildcard ranges over their names.
from histosynth.runs import resolve_runs as _resolve_runs
from histosynth.utils import UserError as _UserError

try:
    RUNS = _resolve_runs(config)
except _UserError as _exc:
    raise ValueError(str(_exc)) from None
STYLE_RUNS = [r for r, s in RUNS.items() if s.kind != "mask"]
EXPR_RUNS = [r for r, s in RUNS.items() if s.kind == "expression"]
MASK_RUN = next((r for r, s in RUNS.items() if s.kind == "mask"), None)
ATTR_RUNS = [r for r, s in RUNS.items() if s.kind == "attributes"]
# runs whose real test tiles are projected (generate.project.tiles > 0; rule project)
PROJECT_RUNS = (
    [
        r
        for r, s in RUNS.items()
        if s.kind in ("class", "attributes", "expression", "vector")
    ]
    if config["generate"]["project"]["tiles"]
    else []
)
# runs whose network blends between two conditions (classes, attribute combinations, profiles)
BLEND_RUNS = [
    r for r, s in RUNS.items() if s.kind in ("class", "attributes", "expression")
]
MASKS = RUNS[MASK_RUN].masks if MASK_RUN else config["masks"]  # labels resolved
for _name, _spec in RUNS.items():
    if _spec.gan["resolution"] != config["tiles"]["tile_px"]:
        raise ValueError(
            f"run {_name}: gan.resolution ({_spec.gan['resolution']}) must equal tiles.tile_px "
            f"({config['tiles']['tile_px']}): the GAN trains on the tiles as they are cut"
        )
_unknown = sorted(set(config["export"]["runs"] or []) - set(RUNS))
if _unknown:
    raise ValueError(
        f"export.runs names {_unknown}, which are not runs of this config; its runs: {', '.join(RUNS)}"
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
if EXPR_RUNS and not config["expression"]["matrix"]:
    raise ValueError(
        "an expression-conditioned GAN run needs expression.matrix (a GCT, CSV or STAR manifest)"
    )
if MASK_RUN and MASKS["source"] == "geojson" and not MASKS["geojson_dir"]:
    raise ValueError(
        "masks.source geojson needs masks.geojson_dir (the folder of <slide_id>.geojson files)"
    )


# classify.folds >= 2: k-fold cross-validation of the study, one GAN run per fold (rules/folds.smk)
FOLDS = int(config["classify"]["folds"])
if FOLDS > 1 and RUNS[GAN].kind == "expression":
    raise ValueError(
        "classify.folds > 1 needs a gan run conditioned on classes, attributes, vectors or nothing: the "
        "expression run's beta-VAE is fitted on the split's training profiles, which include other folds' "
        "test patients. Set classify.folds: 1 for an expression-conditioned gan run"
    )


def _one_of(names):
    """A wildcard constraint matching exactly these names (or nothing)."""
    return "|".join(map(re.escape, names)) or "(?!)"


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
    run=_one_of(RUNS),
    fold="[0-9]+",


def opts(section, drop=()):
    """A config section as one shell-quoted JSON argument (a change re-runs only its rules),
    without the keys in `drop` (a subsection other rules read: evaluate.audit)."""
    return json.dumps(
        {k: v for k, v in config[section].items() if k not in drop}, sort_keys=True
    )


def run_spec(wildcards):
    """The run as JSON (histosynth.runs.RunSpec): name, kind, gan options, masks section."""
    return RUNS[wildcards.run].to_json()


def train_priority(wildcards):
    """The order in which the runs start training when they cannot all train at once: the gan
    run first (the augmentation study, the longest step after training, waits for it), then the
    mask run (generation from maps and the layout evaluation wait for it), then the others.
    """
    return {GAN: 5, MASK_RUN: 3}.get(wildcards.run, 0)


def run_gpus(wildcards):
    return RUNS[wildcards.run].gan["gpus"]


def run_gpu_one(wildcards):
    """One GPU for a run's generation when the run trains on GPUs."""
    return min(1, run_gpus(wildcards))


def gan_inputs(wildcards):
    kind = RUNS[wildcards.run].kind
    inputs = {
        "tiles": (
            "results/masks/index.parquet"
            if kind == "mask"
            else "results/split/tiles.parquet"
        )
    }
    if kind == "expression":
        inputs["embeddings"] = "results/expression/embeddings.parquet"
    gan = RUNS[wildcards.run].gan
    if gan["pretrained"]:
        inputs["pretrained"] = gan["pretrained"]
    if gan["finetune_from"]:
        inputs["finetune_from"] = gan["finetune_from"]
    if gan["metrics"] and not gan["pretrained"]:
        extractor = gan["metrics_extractor"]
        if extractor == "domain":
            inputs["reference"] = "results/evaluate/reference_classifier.pt"
        else:
            inputs["metrics_weights"] = config["evaluate"][
                metrics_weights_key(extractor)
            ]
    return inputs


def fold_gan_inputs(wildcards):
    """A fold's GAN run: the run's inputs with the fold's tiles (its patients held out) and,
    for domain-space snapshot metrics, the fold's reference classifier."""
    inputs = gan_inputs(wildcards)
    inputs["tiles"] = f"results/folds/{wildcards.fold}/tiles.parquet"
    if "reference" in inputs:
        inputs["reference"] = f"results/folds/{wildcards.fold}/reference_classifier.pt"
    return inputs


def metrics_weights_key(extractor):
    return {"inception-v3": "inception_weights"}.get(extractor, f"{extractor}_weights")


def metrics_args(wildcards, input):
    """train_gan's arguments for the snapshot metrics' feature space."""
    args = ""
    if "reference" in input.keys():
        args += f" --reference {input.reference}"
    if "metrics_weights" in input.keys():
        args += f" --metrics-weights {input.metrics_weights}"
    return args


def snapshot_choice(wildcards):
    """generate.snapshot alone (a change of other generate keys leaves the choice as it is)."""
    return json.dumps({"snapshot": config["generate"]["snapshot"]})


def launcher(wildcards):
    gpus = RUNS[wildcards.run].gan["gpus"]
    if gpus > 1:
        return (
            f"{HS_ENV}torchrun --standalone --nproc-per-node {gpus} -m histosynth.cli"
        )
    return HISTOSYNTH


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


def roi_file(wildcards):
    """The slide's QuPath regions in tiles.roi.dir (histosynth.slides.roi.region_file), or
    nothing: an input, so a changed export re-tiles its slide."""
    roi_dir = config["tiles"]["roi"]["dir"]
    if not roi_dir:
        return []
    from histosynth.slides.roi import region_file

    found = region_file(roi_dir, wildcards.slide, slide_path(wildcards))
    return str(found) if found else []


def roi_arg(wildcards, input):
    return f"--roi {shlex.quote(str(input.roi))}" if input.roi else ""


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
    return {
        "index": "results/masks/index.parquet",
        "synthetic": f"results/generate/{wildcards.run}/synthetic.parquet",
        "heldout": f"results/generate/{wildcards.run}/heldout.parquet",
        "segmenter": (
            "results/masks/segmenter.json"
            if MASKS["source"] == "auto"
            else "results/masks/segnet.pt"
        ),
        "reference": "results/evaluate/reference_classifier.pt",
        "features": "results/evaluate/features",
    }


def feature_inputs(wildcards):
    """What the real-tile features are computed from: the split's tiles (and PanNuke's, whose
    tiles are not the slides'), the reference classifier, the Inception weights when used.
    """
    inputs = {
        "indexes": ["results/split/tiles.parquet"]
        + (
            ["results/masks/index.parquet"]
            if MASK_RUN and MASKS["source"] == "pannuke"
            else []
        ),
        "reference": "results/evaluate/reference_classifier.pt",
    }
    if "inception-v3" in config["evaluate"]["extractors"]:
        inputs["weights"] = config["evaluate"]["inception_weights"]
    return inputs


def project_inputs(wildcards):
    """The project rule's inputs: the network, the split, the reference classifier, and for an
    expression run the beta-VAE embeddings of the held-out patients."""
    inputs = {
        "network": f"results/gan/{wildcards.run}/selected.pt",
        "tiles": "results/split/tiles.parquet",
        "reference": "results/evaluate/reference_classifier.pt",
    }
    if RUNS[wildcards.run].kind == "expression":
        inputs["embeddings"] = "results/expression/embeddings.parquet"
    return inputs


def report_inputs(wildcards):
    """Every file the report reads, per run: training options, statistics, sample grids and
    training curves, the evaluation outputs of its kind, the study and the QC thumbnails.
    """
    inputs = {
        "sheet": "results/acquire/slides.verified.tsv",
        "tiles": "results/split/tiles.parquet",
        "metrics": f"results/evaluate/{GAN}/metrics.json",
        "study": "results/classify/study.json",
        "study_plot": "results/classify/study.png",
    }
    for r, spec in RUNS.items():
        gan, ev = f"results/gan/{r}", f"results/evaluate/{r}"
        files = [
            f"{gan}/training_options.json",
            f"{gan}/stats.jsonl",
            f"{gan}/metrics.jsonl",
            f"{gan}/selected.pt",
            f"{ev}/training.png",
        ]
        if spec.kind == "mask":
            files += [f"{ev}/layout.json", f"{ev}/triplets.png"]
        else:
            files += [f"{ev}/metrics.json", f"{gan}/samples"]
            files += [
                f"{ev}/{f}"
                for f in ("blend.png", "blend.gif", "latent.png", "latent.gif")
            ]
        if AUDIT:
            files += [f"{ev}/copies.json", f"{ev}/copies.png"]
        if r in ATTR_RUNS:
            files.append(f"{ev}/attributes.png")
        if r in PROJECT_RUNS:
            files += [f"{ev}/projection.json", f"{ev}/projection.png"]
        if r in BLEND_RUNS:
            files += [
                f"{ev}/{f}"
                for f in (
                    "blend_probability.json",
                    "blend_probability.png",
                    "blend_layers.png",
                )
            ]
        if spec.kind == "expression":
            files += [f"{ev}/profiles.json", f"{ev}/heldout.png"]
            if (
                config["expression"]["new_profiles"]
                or config["expression"]["vae_samples"]
            ):
                files.append(f"{ev}/profiles.png")
        inputs[f"run_{r}"] = files
    if EXPR_RUNS:
        inputs["vae"] = [
            "results/expression/vae_report.json",
            "results/expression/vae.png",
        ]
    return inputs


def stage_outputs(stage):
    """What the networks / generated / evaluated stage targets ask for, over every run."""
    if stage == "networks":
        return [f"results/gan/{r}/selected.pt" for r in RUNS]
    if stage == "generated":
        return [f"results/generate/{r}/synthetic.parquet" for r in RUNS]
    out = [f"results/evaluate/{r}/metrics.json" for r in STYLE_RUNS]
    out += [f"results/evaluate/{r}/profiles.json" for r in EXPR_RUNS]
    out += [f"results/evaluate/{r}/blend_probability.json" for r in BLEND_RUNS]
    out += [f"results/evaluate/{r}/attributes.png" for r in ATTR_RUNS]
    out += [f"results/evaluate/{r}/copies.json" for r in RUNS if AUDIT]
    return out + ([f"results/evaluate/{MASK_RUN}/layout.json"] if MASK_RUN else [])


def attribute_args(wildcards):
    """An attributes run's condition columns, for FID per attribute value."""
    spec = RUNS[wildcards.run]
    if spec.kind != "attributes":
        return ""
    return "--attributes " + " ".join(
        shlex.quote(c) for c in spec.gan["condition_columns"]
    )


def audit_inputs(wildcards):
    """The copy audit's inputs: the tiles the run trained on (the mask index for the mask run),
    its generated tiles, and the extractors' network and feature cache."""
    return {
        "tiles": (
            "results/masks/index.parquet"
            if wildcards.run == MASK_RUN
            else "results/split/tiles.parquet"
        ),
        "synthetic": f"results/generate/{wildcards.run}/synthetic.parquet",
        "reference": "results/evaluate/reference_classifier.pt",
        "features": "results/evaluate/features",
    }


def heldout_partitions(wildcards):
    """The partitions of patients the run's GAN never saw: the copy audit's null."""
    train = RUNS[wildcards.run].gan["train_partitions"]
    return " ".join(p for p in ("train", "val", "test") if p not in train)


def export_inputs(wildcards):
    """What the dataset card of a run's export reads: its tiles, network and options, its
    evaluation (metrics, or layout fidelity for the mask run), its copy audit, the cohort.
    """
    run, mask = wildcards.run, wildcards.run == MASK_RUN
    inputs = {
        "synthetic": f"results/generate/{run}/synthetic.parquet",
        "network": f"results/gan/{run}/selected.pt",
        "options": f"results/gan/{run}/training_options.json",
        "evaluation": f"results/evaluate/{run}/{'layout' if mask else 'metrics'}.json",
        "cohort": (
            "results/masks/index.parquet" if mask else "results/split/tiles.parquet"
        ),
    }
    if AUDIT:
        inputs["copies"] = [
            f"results/evaluate/{run}/copies.json",
            f"results/evaluate/{run}/copies.parquet",
        ]
    return inputs


def evaluate_inputs(wildcards):
    return {
        "tiles": "results/split/tiles.parquet",
        "synthetic": f"results/generate/{wildcards.run}/synthetic.parquet",
        "reference": "results/evaluate/reference_classifier.pt",
        "features": "results/evaluate/features",
    }
