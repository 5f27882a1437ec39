rule train_gan:
    input:
        tiles="results/split/tiles.parquet",
    output:
        network=protected(f"results/gan/{GAN}/network.pt"),
        stats=f"results/gan/{GAN}/stats.jsonl",
    log:
        f"logs/train_gan/{GAN}.log",
    benchmark:
        f"results/benchmarks/train_gan/{GAN}.tsv"
    threads: 2
    resources:
        mem_mb=16000,
        gpu=config["gan"]["gpus"],
    params:
        opts=opts("gan"),
        outdir=f"results/gan/{GAN}",
        launcher=(
            f"{HS_ENV}torchrun --standalone --nproc-per-node {config['gan']['gpus']} -m histosynth.cli"
            if config["gan"]["gpus"] > 1
            else HISTOSYNTH
        ),
    conda:
        "../envs/torch.yaml"
    shell:
        "{params.launcher} -q train-gan --options {params.opts:q} --tiles {input.tiles} --outdir {params.outdir} "
        "--threads {threads} > {log} 2>&1"


rule generate:
    input:
        network=f"results/gan/{GAN}/network.pt",
        tiles="results/split/tiles.parquet",
    output:
        index=f"results/generate/{GAN}/synthetic.parquet",
        blend=f"results/evaluate/{GAN}/blend.png",
        gif=f"results/evaluate/{GAN}/blend.gif",
    log:
        f"logs/generate/{GAN}.log",
    threads: 2
    resources:
        mem_mb=8000,
        gpu=min(1, config["gan"]["gpus"]),
    params:
        opts=opts("generate"),
        outdir=f"results/generate/{GAN}",
    conda:
        "../envs/torch.yaml"
    shell:
        "{HISTOSYNTH} -q generate --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--outdir {params.outdir} --out-index {output.index} --blend-png {output.blend} --blend-gif {output.gif} > {log} 2>&1"
