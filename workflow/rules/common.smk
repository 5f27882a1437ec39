import json
import shlex
from pathlib import Path

import pandas as pd
from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml", set_default=True)
# Nested defaults too (snakemake fills the top level); the same code the CLI uses.
from histosynth.config import validate as _hs_validate

_hs_validate(config, "config")

GAN = config["gan"]["name"]

# How rules call histosynth. Normally the `histosynth` command installed beside Snakemake.
# Under `--software-deployment-method conda` each rule runs in its pinned environment from
# workflow/envs/, which holds the dependencies but not histosynth: the code then runs from
# this checkout's src/ (the same code, whatever the environment).
if "conda" in {str(m).lower().rsplit(".", 1)[-1] for m in workflow.deployment_settings.deployment_method}:
    HS_ENV = "PYTHONPATH={}${{PYTHONPATH:+:$PYTHONPATH}} ".format(shlex.quote(str(Path(workflow.basedir).parent / "src")))
    HISTOSYNTH = HS_ENV + "python -m histosynth.cli"
else:
    HS_ENV = ""
    HISTOSYNTH = "histosynth"
DEMO_MANIFEST = str(Path(config["demo"]["outdir"]) / "manifest.tsv")


wildcard_constraints:
    slide="[A-Za-z0-9_-]+",


def opts(section):
    """A config section as one shell-quoted JSON argument (a change re-runs only its rules)."""
    return json.dumps(config[section], sort_keys=True)


def sample_sheet():
    return pd.read_csv(checkpoints.acquire_query.get().output.sheet, sep="\t", dtype=str, keep_default_na=False)


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


GDC_MANIFEST = {"gdc_manifest": "results/acquire/gdc_manifest.txt"} if config["acquire"]["source"] == "gdc" else {}


def all_download_records(wildcards):
    sheet = sample_sheet()
    slide_dir = config["acquire"]["slide_dir"] + "/"
    return ["results/acquire/verified/" + p.removeprefix(slide_dir) + ".json" for p in sheet["path"]]
