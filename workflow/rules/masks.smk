# Layout-conditioned run (masks.enabled): label maps -> SPADE / pix2pix -> generation from
# training and held-out maps -> layout fidelity (mIoU) and FID. See docs/layout.md.
# The label-map rules have priority 10 (as the expression run's VAE): they are made before the
# GAN runs start training, so that all runs can train side by side.


if MASKS["source"] == "pannuke":

    rule import_pannuke:
        output:
            index="results/masks/index.parquet",
        log:
            "logs/import_pannuke.log",
        priority: 10
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
        priority: 10
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
        priority: 10
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
        priority: 10
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
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("masks"),
    shell:
        "{params.hs} -q train-segnet --options {params.opts:q} --index {input.index} --out {output} > {log} 2>&1"


# The mask run trains with train_gan (rules/gan.smk) like every run; these are its own
# generation (from training and held-out label maps) and evaluation (layout fidelity).


rule generate_layout:
    input:
        network="results/gan/{run}/selected.pt",
        index="results/masks/index.parquet",
    output:
        index="results/generate/{run}/synthetic.parquet",
        heldout="results/generate/{run}/heldout.parquet",
        triplets=report(
            "results/evaluate/{run}/triplets.png",
            caption="../report/triplets.rst",
            category="Layout-conditioned run",
        ),
    log:
        "logs/generate/{run}.log",
    wildcard_constraints:
        run=_one_of([MASK_RUN]),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=run_gpu_one,
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
        "results/evaluate/{run}/layout.json",
    log:
        "logs/evaluate/{run}.log",
    wildcard_constraints:
        run=_one_of([MASK_RUN]),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate", drop=("audit",)),
        masks=opts("masks"),
        partitions=lambda wc: " ".join(RUNS[wc.run].gan["train_partitions"]),
    shell:
        "{params.hs} -q evaluate-layout --options {params.opts:q} --masks-options {params.masks:q} --run {wildcards.run} "
        "--index {input.index} --synthetic {input.synthetic} --heldout {input.heldout} --segmenter {input.segmenter} "
        "--reference {input.reference} --real-partitions {params.partitions} --features {input.features} "
        "--out {output} > {log} 2>&1"
