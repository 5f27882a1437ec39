# Stage targets: `snakemake --cores N <target>` runs the workflow up to and including that
# stage, for every slide and run. (`--until <rule>` cannot do this for the per-slide rules:
# they are known only once the acquire_query checkpoint has written the sample sheet.)
# `snakemake --list-target-rules` lists them; `all` (the default) is the report.


rule downloads:
    input:
        "results/acquire/slides.verified.tsv",


rule tiles:
    input:
        all_tile_indexes,
        all_qc_thumbs,


rule splits:
    input:
        "results/split/split.tsv",
        "results/split/tiles.parquet",


rule networks:
    input:
        stage_outputs("networks"),


rule generated:
    input:
        stage_outputs("generated"),


rule evaluated:
    input:
        stage_outputs("evaluated"),


rule study:
    input:
        "results/classify/study.json",


rule exported:
    input:
        expand(
            "results/export/{run}/{format}",
            run=config["export"]["runs"] or list(RUNS),
            format=config["export"]["formats"],
        ),
