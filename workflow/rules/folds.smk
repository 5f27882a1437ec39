# classify.folds >= 2: k-fold cross-validation of the augmentation study. The folds rule deals
# the patients into folds; per fold, the gan run trains on the other folds' patients, generates,
# and the study's arms are tested on the fold (results/folds/<i>/); rule classify gathers them.


rule folds:
    input:
        split="results/split/split.tsv",
        tiles="results/split/tiles.parquet",
    output:
        folds="results/folds/folds.tsv",
        tiles=expand("results/folds/{fold}/tiles.parquet", fold=range(FOLDS)),
    log:
        "logs/folds.log",
    conda:
        "../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        hs=HISTOSYNTH,
        opts=opts("split"),
        k=FOLDS,
    shell:
        "{params.hs} -q folds --options {params.opts:q} --folds {params.k} --split {input.split} "
        "--tiles {input.tiles} --out-folds {output.folds} --outdir results/folds > {log} 2>&1"


use rule train_reference as train_reference_fold with:
    input:
        tiles="results/folds/{fold}/tiles.parquet",
    output:
        model="results/folds/{fold}/reference_classifier.pt",
    log:
        "logs/folds/{fold}/train_reference.log",


use rule train_gan as train_gan_fold with:
    input:
        unpack(fold_gan_inputs),
    output:
        network=protected("results/folds/{fold}/gan/{run}/network.pt"),
        stats="results/folds/{fold}/gan/{run}/stats.jsonl",
        metrics="results/folds/{fold}/gan/{run}/metrics.jsonl",
        options="results/folds/{fold}/gan/{run}/training_options.json",
        samples=directory("results/folds/{fold}/gan/{run}/samples"),
    log:
        "logs/folds/{fold}/train_gan/{run}.log",
    benchmark:
        "results/benchmarks/folds/{fold}/train_gan/{run}.tsv"


use rule select_snapshot as select_snapshot_fold with:
    input:
        network="results/folds/{fold}/gan/{run}/network.pt",
    output:
        "results/folds/{fold}/gan/{run}/selected.pt",
    log:
        "logs/folds/{fold}/select_snapshot/{run}.log",


rule generate_fold:
    input:
        network="results/folds/{fold}/gan/{run}/selected.pt",
        tiles="results/folds/{fold}/tiles.parquet",
    output:
        index="results/folds/{fold}/generate/{run}/synthetic.parquet",
    log:
        "logs/folds/{fold}/generate/{run}.log",
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=run_gpu_one,
    params:
        hs=HISTOSYNTH,
        opts=opts("generate"),
        outdir=lambda wc, output: Path(output.index).parent,
    shell:
        "{params.hs} -q generate --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--outdir {params.outdir} --out-index {output.index} > {log} 2>&1"


rule classify_fold:
    input:
        tiles="results/folds/{fold}/tiles.parquet",
        synthetic=f"results/folds/{{fold}}/generate/{GAN}/synthetic.parquet",
        network=f"results/folds/{{fold}}/gan/{GAN}/selected.pt",
    output:
        study="results/folds/{fold}/classify/study.json",
        predictions="results/folds/{fold}/classify/predictions.parquet",
        plot="results/folds/{fold}/classify/study.png",
    log:
        "logs/folds/{fold}/classify.log",
    benchmark:
        "results/benchmarks/folds/{fold}/classify.tsv"
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=12000,
        gpu=GPU_ONE,
    params:
        hs=HISTOSYNTH,
        opts=opts("classify"),
        outdir=lambda wc, output: Path(output.study).parent,
    shell:
        "{params.hs} -q classify --options {params.opts:q} --tiles {input.tiles} --synthetic {input.synthetic} "
        "--network {input.network} --outdir {params.outdir} > {log} 2>&1"


# the cross-validated study: every fold's arms (classify_fold), gathered
rule classify:
    input:
        predictions=expand(
            "results/folds/{fold}/classify/predictions.parquet", fold=range(FOLDS)
        ),
        studies=expand("results/folds/{fold}/classify/study.json", fold=range(FOLDS)),
    output:
        study="results/classify/study.json",
        predictions="results/classify/predictions.parquet",
        plot=report(
            "results/classify/study.png",
            caption="../report/study.rst",
            category="Augmentation study",
        ),
    log:
        "logs/classify.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
    params:
        hs=HISTOSYNTH,
        opts=opts("classify"),
        outdir=lambda wc, output: Path(output.study).parent,
    shell:
        "{params.hs} -q classify-folds --options {params.opts:q} --predictions {input.predictions} "
        "--studies {input.studies} --outdir {params.outdir} > {log} 2>&1"
