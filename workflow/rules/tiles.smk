rule tile:
    input:
        sheet="results/acquire/slides.tsv",
        slide=slide_path,
        roi=roi_file,
    output:
        store="results/tiles/{slide}.tiff",
        index="results/tiles/{slide}.parquet",
        thumb=report(
            "results/tiles/qc/{slide}.png",
            caption="../report/qc.rst",
            category="Tiling QC",
            subcategory="{slide}",
        ),
    log:
        "logs/tile/{slide}.log",
    benchmark:
        "results/benchmarks/tile/{slide}.tsv"
    conda:
        "../envs/slides.yaml"
    threads: 2
    resources:
        mem_mb=4000,
    params:
        hs=HISTOSYNTH,
        opts=opts("tiles"),
        roi=roi_arg,
    shell:
        "{params.hs} -q tile --options {params.opts:q} --sheet {input.sheet} --slide-id {wildcards.slide} "
        "--slide {input.slide} {params.roi} --store {output.store} --index {output.index} --thumb {output.thumb} "
        "--threads {threads} > {log} 2>&1"


rule split:
    input:
        sheet="results/acquire/slides.tsv",
        indexes=all_tile_indexes,
    output:
        split="results/split/split.tsv",
        tiles="results/split/tiles.parquet",
    log:
        "logs/split.log",
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        hs=HISTOSYNTH,
        opts=opts("split"),
    shell:
        "{params.hs} -q split --options {params.opts:q} --sheet {input.sheet} --indexes {input.indexes} "
        "--out-split {output.split} --out-tiles {output.tiles} > {log} 2>&1"
