rule plot_training:
    input:
        stats="results/gan/{run}/stats.jsonl",
        metrics="results/gan/{run}/metrics.jsonl",
        network="results/gan/{run}/selected.pt",
    output:
        "results/evaluate/{run}/training.png",
    log:
        "logs/plot_training/{run}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=1000,
    params:
        hs=HISTOSYNTH,
    shell:
        "{params.hs} -q plot-training --stats {input.stats} --metrics {input.metrics} --network {input.network} "
        "--out {output} > {log} 2>&1"


rule report:
    input:
        unpack(report_inputs),
        thumbs=all_qc_thumbs,
    output:
        json="results/report/summary.json",
        html=report(
            "results/report/summary.html",
            caption="../report/summary.rst",
            category="Summary",
        ),
    log:
        "logs/report.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        hs=HISTOSYNTH,
        gan=GAN,
        run_name=config["run_name"],
        expression=" ".join(f"--expression-run {r}" for r in EXPR_RUNS)
        + (" --expression-dir results/expression" if EXPR_RUNS else ""),
        masks=f"--mask-run {MASK_RUN}" if MASK_RUN else "",
        qc_dir="results/tiles/qc",
    shell:
        "{params.hs} -q report --sheet {input.sheet} --tiles {input.tiles} --gan-dir results/gan/{params.gan} "
        "--gan-run {params.gan} --metrics {input.metrics} --study {input.study} --qc-dir {params.qc_dir} "
        "--out-json {output.json} --out-html {output.html} --run-name {params.run_name:q} {params.expression} {params.masks} > {log} 2>&1"
