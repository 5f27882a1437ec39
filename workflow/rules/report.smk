rule report:
    input:
        sheet="results/acquire/slides.verified.tsv",
        tiles="results/split/tiles.parquet",
        stats=f"results/gan/{GAN}/stats.jsonl",
        metrics=f"results/evaluate/{GAN}/metrics.json",
        blend=f"results/evaluate/{GAN}/blend.png",
        study="results/classify/study.json",
        thumbs=all_qc_thumbs,
        expression=expression_outputs(),
        masks=mask_outputs(),
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
        "../envs/report.yaml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        hs=HISTOSYNTH,
        gan=GAN,
        run_name=config["run_name"],
        expression=" ".join(f"--expression-run {r}" for r in EXPR_RUNS),
        masks=f"--mask-run {MASK_RUN}" if MASK_RUN else "",
    shell:
        "{params.hs} -q report --sheet {input.sheet} --tiles {input.tiles} --gan-dir results/gan/{params.gan} "
        "--gan-run {params.gan} --metrics {input.metrics} --study {input.study} --qc-dir results/tiles/qc "
        "--out-json {output.json} --out-html {output.html} --run-name {params.run_name:q} {params.expression} {params.masks} > {log} 2>&1"
