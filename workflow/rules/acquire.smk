rule demo_slides:
    output:
        manifest=DEMO_MANIFEST,
        expression=str(Path(config["demo"]["outdir"]) / "expression_tpm.gct.gz"),
        new_profiles=str(Path(config["demo"]["outdir"]) / "new_profiles.csv"),
    log:
        "logs/demo_slides.log",
    threads: 1
    resources:
        mem_mb=4000,
    params:
        opts=opts("demo"),
    conda:
        "../envs/acquire.yaml"
    shell:
        "{HISTOSYNTH} -q demo-slides --options {params.opts:q} --outdir {config[demo][outdir]} "
        "--manifest {output.manifest} > {log} 2>&1"


checkpoint acquire_query:
    input:
        unpack(acquire_query_input),
    output:
        sheet="results/acquire/slides.tsv",
        **GDC_MANIFEST,
    log:
        "logs/acquire_query.log",
    threads: 1
    resources:
        mem_mb=1000,
    params:
        opts=opts("acquire"),
    conda:
        "../envs/acquire.yaml"
    shell:
        "{HISTOSYNTH} -q acquire-query --options {params.opts:q} --out {output.sheet} > {log} 2>&1"


rule download:
    input:
        sheet="results/acquire/slides.tsv",
    output:
        slide=config["acquire"]["slide_dir"] + "/{slide}.{ext}",
        record="results/acquire/verified/{slide}.{ext}.json",
    wildcard_constraints:
        ext="[a-z0-9]+",
    log:
        "logs/download/{slide}.{ext}.log",
    threads: 1
    resources:
        mem_mb=1000,
        downloads=1,
    retries: 1
    params:
        opts=opts("acquire"),
    conda:
        "../envs/acquire.yaml"
    shell:
        "{HISTOSYNTH} -q download --options {params.opts:q} --sheet {input.sheet} --slide-id {wildcards.slide} "
        "--out {output.slide} --record {output.record} > {log} 2>&1"


rule acquire_record:
    input:
        sheet="results/acquire/slides.tsv",
        records=all_download_records,
    output:
        sheet="results/acquire/slides.verified.tsv",
    log:
        "logs/acquire_record.log",
    threads: 1
    resources:
        mem_mb=1000,
    conda:
        "../envs/acquire.yaml"
    shell:
        "{HISTOSYNTH} -q acquire-record --sheet {input.sheet} --records {input.records} --out {output.sheet} > {log} 2>&1"
