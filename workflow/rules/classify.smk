rule classify:
    input:
        tiles="results/split/tiles.parquet",
        synthetic=f"results/generate/{GAN}/synthetic.parquet",
        network=f"results/gan/{GAN}/selected.pt",
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
    benchmark:
        "results/benchmarks/classify.tsv"
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
