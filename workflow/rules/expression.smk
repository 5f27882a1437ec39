# Expression conditioning (RNA-GAN): profiles -> beta-VAE -> embeddings for the GAN run(s)
# with conditioning: expression; tiles from held-out, new and sampled profiles.


rule fetch_expression:
    output:
        EXPRESSION_MATRIX if EXPRESSION_URL else "resources/expression/.no-url",
    log:
        "logs/fetch_expression.log",
    conda:
        "../envs/acquire.yaml"
    params:
        hs_env=HS_ENV,
        url=EXPRESSION_URL,
    shell:
        "{params.hs_env}python -m histosynth.expression.fetch {params.url:q} {output} > {log} 2>&1"


rule expression_prepare:
    input:
        sheet="results/acquire/slides.tsv",
        split="results/split/split.tsv",
        matrix=EXPRESSION_MATRIX or [],
    output:
        profiles="results/expression/profiles.parquet",
        transform="results/expression/transform.json",
    log:
        "logs/expression_prepare.log",
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
    params:
        hs=HISTOSYNTH,
        opts=opts("expression"),
    shell:
        "{params.hs} -q expression-prepare --options {params.opts:q} --matrix {input.matrix} --sheet {input.sheet} --split {input.split} "
        "--out-profiles {output.profiles} --out-transform {output.transform} > {log} 2>&1"


rule train_vae:
    input:
        profiles="results/expression/profiles.parquet",
        transform="results/expression/transform.json",
    output:
        vae="results/expression/vae.pt",
        embeddings="results/expression/embeddings.parquet",
        report="results/expression/vae_report.json",
        plot=report(
            "results/expression/vae.png",
            caption="../report/vae.rst",
            category="Expression",
        ),
    log:
        "logs/train_vae.log",
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
    params:
        hs=HISTOSYNTH,
        opts=opts("expression"),
    shell:
        "{params.hs} -q train-vae --options {params.opts:q} --profiles {input.profiles} --transform {input.transform} "
        "--out {output.vae} --out-embeddings {output.embeddings} --out-report {output.report} --out-plot {output.plot} > {log} 2>&1"


rule generate_heldout:
    input:
        network="results/gan/{run}/selected.pt",
        tiles="results/split/tiles.parquet",
        embeddings="results/expression/embeddings.parquet",
    output:
        index="results/generate/{run}/heldout.parquet",
    log:
        "logs/generate_heldout/{run}.log",
    wildcard_constraints:
        run=_one_of(EXPR_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=run_gpu_one,
    params:
        hs=HISTOSYNTH,
        opts=opts("expression"),
        n=config["expression"]["heldout_per_profile"],
    shell:
        "{params.hs} -q generate-profiles --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--embeddings {input.embeddings} --partitions test --per-profile {params.n} --vae-samples 0 --outdir results/generate/{wildcards.run}/heldout "
        "--out-index {output.index} > {log} 2>&1"


rule generate_profiles:
    input:
        network="results/gan/{run}/selected.pt",
        tiles="results/split/tiles.parquet",
        vae="results/expression/vae.pt",
        profiles=config["expression"]["new_profiles"] or [],
    output:
        index="results/generate/{run}/profiles.parquet",
        sampled="results/generate/{run}/vae_sampled_profiles.csv",
        grid=report(
            "results/evaluate/{run}/profiles.png",
            caption="../report/profiles.rst",
            category="Expression",
        ),
    log:
        "logs/generate_profiles/{run}.log",
    wildcard_constraints:
        run=_one_of(EXPR_RUNS),
    conda:
        "../envs/torch.yaml"
    threads: TORCH_THREADS
    resources:
        mem_mb=8000,
        gpu=run_gpu_one,
    params:
        hs=HISTOSYNTH,
        opts=opts("expression"),
        profiles=lambda wc, input: (
            f"--profiles {input.profiles}" if input.profiles else ""
        ),
    shell:
        "{params.hs} -q generate-profiles --options {params.opts:q} --network {input.network} --tiles {input.tiles} "
        "--vae {input.vae} {params.profiles} --out-sampled {output.sampled} "
        "--outdir results/generate/{wildcards.run}/profiles --out-index {output.index} --grid {output.grid} > {log} 2>&1"


rule evaluate_profiles:
    input:
        tiles="results/split/tiles.parquet",
        heldout="results/generate/{run}/heldout.parquet",
        reference="results/evaluate/reference_classifier.pt",
        transform="results/expression/transform.json",
        features="results/evaluate/features",
    output:
        json="results/evaluate/{run}/profiles.json",
        grid=report(
            "results/evaluate/{run}/heldout.png",
            caption="../report/heldout.rst",
            category="Expression",
        ),
    log:
        "logs/evaluate_profiles/{run}.log",
    wildcard_constraints:
        run=_one_of(EXPR_RUNS),
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
        "{params.hs} -q evaluate-profiles --options {params.opts:q} --tiles {input.tiles} --heldout {input.heldout} "
        "--reference {input.reference} --transform {input.transform} --features {input.features} "
        "--out {output.json} --grid {output.grid} > {log} 2>&1"
