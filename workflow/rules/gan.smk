# One rule family for every run, whatever its kind (histosynth.runs): train_gan trains all of them;
# generate / evaluate serve the StyleGAN2 runs, generate_layout / evaluate_layout the mask run.


rule train_gan:
    input:
        unpack(gan_inputs),
    output:
        network=protected("results/gan/{run}/network.pt"),
        stats="results/gan/{run}/stats.jsonl",
        metrics="results/gan/{run}/metrics.jsonl",
        options="results/gan/{run}/training_options.json",
        samples=directory("results/gan/{run}/samples"),
    log:
        "logs/train_gan/{run}.log",
    benchmark:
        "results/benchmarks/train_gan/{run}.tsv"
    priority: train_priority
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=16000,
        gpu=run_gpus,
    params:
        spec=run_spec,
        outdir=lambda wc, output: Path(output.network).parent,
        launcher=launcher,
        embeddings=lambda wc, input: (
            f"--embeddings {input.embeddings}" if "embeddings" in input.keys() else ""
        ),
        metrics=metrics_args,
    shell:
        "{params.launcher} -q train-gan --run-spec {params.spec:q} --tiles {input.tiles} --outdir {params.outdir} "
        "{params.embeddings}{params.metrics} --threads {threads} > {log} 2>&1"


rule select_snapshot:
    input:
        network="results/gan/{run}/network.pt",
    output:
        "results/gan/{run}/selected.pt",
    log:
        "logs/select_snapshot/{run}.log",
    conda:
        "../envs/torch.yaml"
    params:
        hs=HISTOSYNTH,
        choice=snapshot_choice,
        run_dir=lambda wc, input: Path(input.network).parent,
    shell:
        "{params.hs} -q select-snapshot --options {params.choice:q} --run-dir {params.run_dir} --out {output} "
        "> {log} 2>&1"


rule generate:
    input:
        network="results/gan/{run}/selected.pt",
        tiles="results/split/tiles.parquet",
    output:
        index="results/generate/{run}/synthetic.parquet",
        blend=report(
            "results/evaluate/{run}/blend.png",
            caption="../report/blend.rst",
            category="Generation",
            subcategory="{run}",
        ),
        gif="results/evaluate/{run}/blend.gif",
        latent=report(
            "results/evaluate/{run}/latent.png",
            caption="../report/latent.rst",
            category="Generation",
            subcategory="{run}",
        ),
        latent_gif="results/evaluate/{run}/latent.gif",
        mp4="results/evaluate/{run}/blend.mp4",
    log:
        "logs/generate/{run}.log",
    wildcard_constraints:
        run=_one_of(STYLE_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=run_gpu_one,
    params:
        hs=HISTOSYNTH,
        opts=opts("generate"),
        outdir="results/generate/{run}",
    shell:
        "{params.hs} -q generate --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--outdir {params.outdir} --out-index {output.index} --blend-png {output.blend} --blend-gif {output.gif} "
        "--latent-png {output.latent} --latent-gif {output.latent_gif} --blend-mp4 {output.mp4} > {log} 2>&1"
