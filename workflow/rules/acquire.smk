rule demo_slides:
    output:
        manifest=DEMO_MANIFEST,
        expression=str(Path(config["demo"]["outdir"]) / "expression_tpm.gct.gz"),
        new_profiles=str(Path(config["demo"]["outdir"]) / "new_profiles.csv"),
    log:
        "logs/demo_slides.log",
    conda:
        "../envs/acquire.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        hs=HISTOSYNTH,
        opts=opts("demo"),
    shell:
        "{params.hs} -q demo-slides --options {params.opts:q} "
        "--manifest {output.manifest} > {log} 2>&1"


checkpoint acquire_query:
    input:
        unpack(acquire_query_input),
    output:
        **GDC_MANIFEST,
        sheet="results/acquire/slides.tsv",
    log:
        "logs/acquire_query.log",
    conda:
        "../envs/acquire.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        hs=HISTOSYNTH,
        opts=opts("acquire"),
    shell:
        "{params.hs} -q acquire-query --options {params.opts:q} --out {output.sheet} > {log} 2>&1"


rule download:
    input:
        sheet="results/acquire/slides.tsv",
    output:
        slide=f"{SLIDE_DIR}/{{slide}}.{{ext}}",
        record="results/acquire/verified/{slide}.{ext}.json",
    log:
        "logs/download/{slide}.{ext}.log",
    wildcard_constraints:
        ext="[a-z0-9]+",
    retries: 1
    conda:
        "../envs/acquire.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        downloads=1,
    params:
        hs=HISTOSYNTH,
        opts=opts("acquire"),
    shell:
        "{params.hs} -q download --options {params.opts:q} --sheet {input.sheet} --slide-id {wildcards.slide} "
        "--out {output.slide} --record {output.record} > {log} 2>&1"


rule acquire_record:
    input:
        sheet="results/acquire/slides.tsv",
        records=all_download_records,
    output:
        sheet="results/acquire/slides.verified.tsv",
    log:
        "logs/acquire_record.log",
    conda:
        "../envs/acquire.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        hs=HISTOSYNTH,
    shell:
        "{params.hs} -q acquire-record --sheet {input.sheet} --records {input.records} --out {output.sheet} > {log} 2>&1"
