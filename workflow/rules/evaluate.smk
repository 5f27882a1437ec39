rule train_reference:
    input:
        tiles="results/split/tiles.parquet",
    output:
        model="results/evaluate/reference_classifier.pt",
    log:
        "logs/train_reference.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        opts=opts("classify"),
    conda:
        "../envs/torch.yaml"
    shell:
        "{HISTOSYNTH} -q train-reference --options {params.opts:q} --tiles {input.tiles} --out {output.model} > {log} 2>&1"


rule fetch_inception:
    output:
        config["evaluate"]["inception_weights"],
    log:
        "logs/fetch_inception.log",
    params:
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    conda:
        "../envs/torch.yaml"
    shell:
        "{HS_ENV}python -m histosynth.evaluate.fetch_weights {params.url:q} {output} > {log} 2>&1"


def evaluate_inputs(wildcards):
    inputs = {
        "tiles": "results/split/tiles.parquet",
        "synthetic": f"results/generate/{wildcards.run}/synthetic.parquet",
        "reference": "results/evaluate/reference_classifier.pt",
    }
    if "inception-v3" in config["evaluate"]["extractors"]:
        inputs["weights"] = config["evaluate"]["inception_weights"]
    return inputs


rule evaluate:
    input:
        unpack(evaluate_inputs),
    output:
        metrics="results/evaluate/{run}/metrics.json",
    log:
        "logs/evaluate/{run}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=GPU_ONE,
    params:
        opts=opts("evaluate"),
        partitions=lambda wc: " ".join(RUNS[wc.run]["train_partitions"]),
    conda:
        "../envs/torch.yaml"
    shell:
        "{HISTOSYNTH} -q evaluate --options {params.opts:q} --tiles {input.tiles} --synthetic {input.synthetic} "
        "--reference {input.reference} --real-partitions {params.partitions} --feature-cache results/evaluate/features "
        "--out {output.metrics} > {log} 2>&1"
