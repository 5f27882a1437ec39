rule train_reference:
    input:
        tiles="results/split/tiles.parquet",
    output:
        model="results/evaluate/reference_classifier.pt",
    log:
        "logs/train_reference.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
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
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    shell:
        "{params.hs_env}python -m histosynth.evaluate.fetch_weights {params.url:q} {output} > {log} 2>&1"


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/evaluate/{run}/metrics.json",
    log:
        "logs/evaluate/{run}.log",
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("evaluate"),
        partitions=lambda wc: " ".join(RUNS[wc.run]["train_partitions"]),
    shell:
        "{params.hs} -q evaluate --options {params.opts:q} --tiles {input.tiles} --synthetic {input.synthetic} "
        "--reference {input.reference} --real-partitions {params.partitions} --feature-cache results/evaluate/features "
        "--out {output.metrics} > {log} 2>&1"
