rule train_reference:
    input:
        tiles="results/split/tiles.parquet",
    output:
        model="results/evaluate/reference_classifier.pt",
    log:
        "logs/train_reference.log",
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("classify"),
    shell:
        "{params.hs} -q train-reference --options {params.opts:q} --tiles {input.tiles} --out {output.model} > {log} 2>&1"


rule fetch_inception:
    output:
        config["evaluate"]["inception_weights"],
    log:
        "logs/fetch_inception.log",
    conda:
        "../envs/torch.yaml"
    params:
        hs_env=HS_ENV,
    shell:
        "{params.hs_env}python -m histosynth.evaluate.fetch_weights {output} > {log} 2>&1"


rule features:
    input:
        unpack(feature_inputs),
    output:
        directory("results/evaluate/features"),
    log:
        "logs/features.log",
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate", drop=("audit",)),
    shell:
        "{params.hs} -q features --options {params.opts:q} --indexes {input.indexes} --reference {input.reference} "
        "--out {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/evaluate/{run}/metrics.json",
    log:
        "logs/evaluate/{run}.log",
    wildcard_constraints:
        run=_one_of(STYLE_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate", drop=("audit",)),
        partitions=lambda wc: " ".join(RUNS[wc.run].gan["train_partitions"]),
        attributes=attribute_args,
    shell:
        "{params.hs} -q evaluate --options {params.opts:q} --tiles {input.tiles} --synthetic {input.synthetic} "
        "--reference {input.reference} --real-partitions {params.partitions} --features {input.features} "
        "{params.attributes} --out {output.metrics} > {log} 2>&1"


rule blend_analysis:
    input:
        network="results/gan/{run}/selected.pt",
        reference="results/evaluate/reference_classifier.pt",
    output:
        json="results/evaluate/{run}/blend_probability.json",
        plot=report(
            "results/evaluate/{run}/blend_probability.png",
            caption="../report/blend_probability.rst",
            category="Generation",
            subcategory="{run}",
        ),
        layers="results/evaluate/{run}/blend_layers.png",
    log:
        "logs/blend_analysis/{run}.log",
    wildcard_constraints:
        run=_one_of(BLEND_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=4000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("generate"),
    shell:
        "{params.hs} -q blend-analysis --options {params.opts:q} --network {input.network} "
        "--reference {input.reference} --out-json {output.json} --out-png {output.plot} "
        "--out-layers {output.layers} > {log} 2>&1"


rule project:
    input:
        unpack(project_inputs),
    output:
        json="results/evaluate/{run}/projection.json",
        table="results/evaluate/{run}/projection.parquet",
        npz="results/evaluate/{run}/projection.npz",
        png=report(
            "results/evaluate/{run}/projection.png",
            caption="../report/projection.rst",
            category="Generation",
            subcategory="{run}",
        ),
    log:
        "logs/project/{run}.log",
    wildcard_constraints:
        run=_one_of(PROJECT_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=4000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("generate"),
        embeddings=lambda wc, input: (
            f"--embeddings {input.embeddings}" if "embeddings" in input.keys() else ""
        ),
    shell:
        "{params.hs} -q project --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--reference {input.reference} --out-json {output.json} --out-table {output.table} "
        "--out-npz {output.npz} --out-png {output.png} {params.embeddings} > {log} 2>&1"


rule attribute_grids:
    input:
        network="results/gan/{run}/selected.pt",
    output:
        report(
            "results/evaluate/{run}/attributes.png",
            caption="../report/attributes.rst",
            category="Generation",
            subcategory="{run}",
        ),
    log:
        "logs/attribute_grids/{run}.log",
    wildcard_constraints:
        run=_one_of(ATTR_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("generate"),
    shell:
        "{params.hs} -q attribute-grids --options {params.opts:q} --network {input.network} --out {output} > {log} 2>&1"


rule audit_copies:
    input:
        unpack(audit_inputs),
    output:
        json="results/evaluate/{run}/copies.json",
        pairs=report(
            "results/evaluate/{run}/copies.png",
            caption="../report/copies.rst",
            category="Copy audit",
            subcategory="{run}",
        ),
        flags="results/evaluate/{run}/copies.parquet",
    log:
        "logs/audit_copies/{run}.log",
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate"),
        train=lambda wc: " ".join(RUNS[wc.run].gan["train_partitions"]),
        heldout=heldout_partitions,
    shell:
        "{params.hs} -q audit-copies --options {params.opts:q} --tiles {input.tiles} --synthetic {input.synthetic} "
        "--reference {input.reference} --features {input.features} --run {wildcards.run} "
        "--train-partitions {params.train} --heldout-partitions {params.heldout} --out {output.json} "
        "--pairs {output.pairs} --flags {output.flags} > {log} 2>&1"


rule export:
    input:
        unpack(export_inputs),
    output:
        directory("results/export/{run}/{format}"),
    log:
        "logs/export/{run}.{format}.log",
    wildcard_constraints:
        format="imagefolder|webdataset|hdf5",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        hs=HISTOSYNTH,
        opts=opts("export"),
        digest=CONFIG_DIGEST,
    shell:
        "{params.hs} -q export --options {params.opts:q} --run {wildcards.run} --format {wildcards.format} "
        "--results results --config-digest {params.digest} --out {output} --force > {log} 2>&1"
