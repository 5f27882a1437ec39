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


def manifest_input(wildcards):
    return config["acquire"]["manifest"]
