"""The report stage's commands: training curves per run and the summary (``histosynth
plot-training | report``)."""
from __future__ import annotations

import json
from pathlib import Path


def plot_training(stats, out, metrics=None, network=None):
    from histosynth.report.plots import training_plot

    selection = None
    if network:
        from histosynth.gan.checkpoint import read_metadata

        selection = read_metadata(network).get("selection")
    training_plot(stats, out, metrics, selection)


def report(sheet, tiles, gan_dir, gan_run, run_name, metrics, study, qc_dir, out_json, out_html, expression_run=None,
           expression_dir=None, mask_run=None):
    """summary.json and summary.html from the run folders: results/gan/<run>, results/evaluate/<run>
    (beside --metrics), results/classify (beside --study) and the QC thumbnails."""
    from histosynth.acquire.manifest import read_sample_sheet
    from histosynth.report.build import (
        add_expression_run,
        add_mask_run,
        build_summary,
        copies_summary,
        expression_html,
        mask_html,
        notes_for,
        write_html,
        write_summary_json,
    )
    from histosynth.slides.store import read_index
    from histosynth.utils import UserError

    sheet = read_sample_sheet(sheet)
    gan_dir, eval_dir = Path(gan_dir), Path(metrics).parent
    metrics_json = json.loads(Path(metrics).read_text())
    summary = build_summary(sheet, read_index(tiles), gan_run, gan_dir, metrics_json, json.loads(Path(study).read_text()))
    summary["blend"] = {r: json.loads((eval_dir.parent / r / "blend_probability.json").read_text())
                        for r in [gan_run, *(expression_run or [])]
                        if (eval_dir.parent / r / "blend_probability.json").exists()}
    runs = [gan_run, *(expression_run or []), *([mask_run] if mask_run else [])]
    summary["projection"] = {r: json.loads((eval_dir.parent / r / "projection.json").read_text()) for r in runs
                             if (eval_dir.parent / r / "projection.json").exists()}
    full = {r: json.loads((eval_dir.parent / r / "copies.json").read_text()) for r in runs
            if (eval_dir.parent / r / "copies.json").exists()}
    summary["copies"] = {r: copies_summary(c) for r, c in full.items()}
    summary["copies_full"] = full  # for the HTML only; summary.json keeps copies_summary's view
    extra = []
    if expression_run and not expression_dir:
        raise UserError("--expression-run needs --expression-dir (results/expression)")
    for run in expression_run or []:
        add_expression_run(summary, run, gan_dir.parent / run, eval_dir.parent / run, expression_dir)
        extra.append(expression_html(summary, run, eval_dir.parent / run, expression_dir))
    if mask_run:
        add_mask_run(summary, mask_run, gan_dir.parent / mask_run, eval_dir.parent / mask_run)
        extra.append(mask_html(summary, mask_run, gan_dir.parent / mask_run, eval_dir.parent / mask_run))
    write_summary_json({k: v for k, v in summary.items() if k != "copies_full"}, out_json)
    thumbs = {sid: Path(qc_dir) / f"{sid}.png" for sid in sheet["slide_id"]}
    write_html(summary, out_html, gan_run=gan_run, gan_dir=gan_dir, eval_dir=eval_dir, classify_dir=Path(study).parent,
               qc_thumbs=thumbs, notes=notes_for(run_name, metrics_json), extra_sections=extra)
