# Layout-conditioned run (masks.enabled): label maps -> SPADE / pix2pix -> generation from
# training and held-out maps -> layout fidelity (mIoU) and FID. See README "Layout-conditioned synthesis".


if MASKS["source"] == "pannuke":

    rule import_pannuke:
        output:
            index="results/masks/index.parquet",
        log:
            "logs/import_pannuke.log",
        conda:
            "../envs/slides.yaml"
        threads: 1
        resources:
            mem_mb=8000,
        params:
            hs=HISTOSYNTH,
            opts=opts("masks"),
        shell:
            "{params.hs} -q import-pannuke --options {params.opts:q} --out {output.index} > {log} 2>&1"

else:

    rule fit_segmenter:
        input:
            tiles="results/split/tiles.parquet",
        output:
            "results/masks/segmenter.json",
        log:
            "logs/fit_segmenter.log",
        conda:
            "../envs/slides.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            hs=HISTOSYNTH,
            opts=opts("masks"),
        shell:
            "{params.hs} -q fit-segmenter --options {params.opts:q} --tiles {input.tiles} --out {output} > {log} 2>&1"

    rule label_maps:
        input:
            unpack(label_map_inputs),
        output:
            store="results/masks/slides/{slide}.labels.tiff",
            index="results/masks/slides/{slide}.parquet",
        log:
            "logs/label_maps/{slide}.log",
        conda:
            "../envs/slides.yaml"
        threads: 1
        resources:
            mem_mb=4000,
        params:
            hs=HISTOSYNTH,
            opts=opts("masks"),
            extra=lambda wc, input: " ".join(
                f"--{k} {v}"
                for k, v in input.items()
                if k in ("segmenter", "annotations")
            ),
        shell:
            "{params.hs} -q label-maps --options {params.opts:q} --tiles {input.tiles} --slide-id {wildcards.slide} "
            "{params.extra} --store {output.store} --index {output.index} > {log} 2>&1"

    rule mask_index:
        input:
            all_label_map_indexes,
        output:
            "results/masks/index.parquet",
        log:
            "logs/mask_index.log",
        conda:
            "../envs/slides.yaml"
        threads: 1
        resources:
            mem_mb=2000,
        params:
            hs=HISTOSYNTH,
        shell:
            "{params.hs} -q mask-index --indexes {input} --out {output} > {log} 2>&1"


rule train_segnet:
    input:
        index="results/masks/index.parquet",
    output:
        "results/masks/segnet.pt",
    log:
        "logs/train_segnet.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=min(1, MASK_OPTS.get("gpus", 0)) if MASK_OPTS else 0,
    params:
        hs=HISTOSYNTH,
        opts=opts("masks"),
    shell:
        "{params.hs} -q train-segnet --options {params.opts:q} --index {input.index} --out {output} > {log} 2>&1"


rule train_mask_gan:
    input:
        index="results/masks/index.parquet",
    output:
        network=protected(f"results/gan/{MASK_RUN}/network.pt"),
        stats=f"results/gan/{MASK_RUN}/stats.jsonl",
    log:
        f"logs/train_gan/{MASK_RUN}.log",
    benchmark:
        f"results/benchmarks/train_gan/{MASK_RUN}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=MASK_OPTS.get("gpus", 0),
    params:
        opts=json.dumps(MASK_OPTS, sort_keys=True),
        masks=opts("masks"),
        outdir=lambda wc, output: Path(output.network).parent,
        launcher=(
            f"{HS_ENV}torchrun --standalone --nproc-per-node {MASK_OPTS.get('gpus', 0)} -m histosynth.cli"
            if MASK_OPTS.get("gpus", 0) > 1
            else HISTOSYNTH
        ),
    shell:
        "{params.launcher} -q train-gan --options {params.opts:q} --masks-options {params.masks:q} "
        "--tiles {input.index} --outdir {params.outdir} --threads {threads} > {log} 2>&1"


rule generate_layout:
    input:
        network=f"results/gan/{MASK_RUN}/network.pt",
        index="results/masks/index.parquet",
    output:
        index=f"results/generate/{MASK_RUN}/synthetic.parquet",
        heldout=f"results/generate/{MASK_RUN}/heldout.parquet",
        triplets=report(
            f"results/evaluate/{MASK_RUN}/triplets.png",
            caption="../report/triplets.rst",
            category="Layout-conditioned run",
        ),
    log:
        f"logs/generate/{MASK_RUN}.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=min(1, MASK_OPTS.get("gpus", 0)) if MASK_OPTS else 0,
    params:
        hs=HISTOSYNTH,
        opts=opts("masks"),
        outdir=lambda wc, output: Path(output.index).parent,
    shell:
        "{params.hs} -q generate-layout --options {params.opts:q} --network {input.network} --index {input.index} "
        "--outdir {params.outdir} --out-index {output.index} --out-heldout {output.heldout} "
        "--triplets {output.triplets} > {log} 2>&1"


rule evaluate_layout:
    input:
        unpack(evaluate_layout_inputs),
    output:
        f"results/evaluate/{MASK_RUN}/layout.json",
    log:
        f"logs/evaluate/{MASK_RUN}.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate"),
        masks=opts("masks"),
        partitions=" ".join(MASK_OPTS.get("train_partitions", ["train"])),
        run=MASK_RUN,
    shell:
        "{params.hs} -q evaluate-layout --options {params.opts:q} --masks-options {params.masks:q} --run {params.run} "
        "--index {input.index} --synthetic {input.synthetic} --heldout {input.heldout} --segmenter {input.segmenter} "
        "--reference {input.reference} --real-partitions {params.partitions} --feature-cache results/evaluate/features "
        "--out {output} > {log} 2>&1"
