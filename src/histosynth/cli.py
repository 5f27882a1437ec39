"""``histosynth <stage>``: every workflow rule is one of these commands, runnable by hand.

Stage options come from ``--config FILE`` (a config YAML; its section for the stage is used,
with the schema's defaults) or ``--options JSON`` (the section itself, as the workflow passes it;
``--masks-options`` for the masks section). ``train-gan`` takes a run: ``--run-spec JSON`` (what
the workflow passes), ``--config FILE [--run NAME]`` or ``--options JSON`` (a gan section)."""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import sys

from histosynth.utils import UserError, setup_logging

log = logging.getLogger("histosynth")

INT, FLOAT = {"type": int}, {"type": float}
# command: (stage function, help, config sections it reads, arguments). An argument "--x" is a
# required string, "--x?" an optional one, "--x+" one or more; a (name, keywords) pair is passed
# to argparse as it is. The function receives each argument by its name, the first section as
# `opts`, the masks section as `masks`, the run as `run`, and `progress` (not --quiet).
COMMANDS = {
    "demo-slides": ("histosynth.commands.acquire:demo_slides", "draw the demo cohort of synthetic H&E slides and its "
                    "manifest", ["demo"], ["--outdir?", "--manifest?"]),
    "acquire-query": ("histosynth.commands.acquire:acquire_query", "list the cohort's slides into the sample sheet",
                      ["acquire"], ["--manifest?", "--slide-dir?", "--out"]),
    "download": ("histosynth.commands.acquire:download", "fetch and verify one slide of the sample sheet", ["acquire"],
                 ["--sheet", "--slide-id", "--out?", ("--record", {"help": "write the file's verified MD5 and size here (JSON)"})]),
    "acquire-record": ("histosynth.commands.acquire:acquire_record", "the sample sheet with every downloaded file's "
                       "verified MD5 and size", [], ["--sheet", "--records+", "--out"]),
    "tile": ("histosynth.commands.slides:tile", "tile one slide with tissue detection and QC", ["tiles"],
             ["--sheet", "--slide-id", "--store", "--index", "--thumb", ("--slide", {"help": "slide file (default: the "
              "sheet's path)"}), ("--roi", {"help": "the slide's QuPath GeoJSON regions (default: found in "
              "tiles.roi.dir)"}), ("--threads", {**INT, "default": 1})]),
    "split": ("histosynth.commands.split:split", "split patients into train/val/test and index all tiles", ["split"],
              ["--sheet", "--indexes+", "--out-split", "--out-tiles"]),
    "folds": ("histosynth.commands.split:folds", "deal the split's patients into k cross-validation folds "
              "(classify.folds) and write each fold's tiles (its patients as the test partition)", ["split"],
              ["--split", "--tiles", "--out-folds", "--outdir", ("--folds", {**INT, "required": True})]),
    "train-gan": ("histosynth.commands.gan:train_gan", "train (or resume) a GAN run of any kind", ["run"],
                  ["--tiles", "--outdir", ("--run-spec", {"help": "the run as JSON (name, kind, gan, masks)"}),
                   ("--run", {"help": "with --config: the run's name (default gan.name)"}),
                   ("--embeddings", {"help": "beta-VAE embeddings per patient/slide (expression runs)"}),
                   ("--reference", {"help": "gan.metrics in the domain space: the reference classifier"}),
                   ("--metrics-weights", {"help": "gan.metrics in inception-v3/uni/phikon: its weights file"}),
                   ("--threads", {**INT, "default": 1})]),
    "select-snapshot": ("histosynth.commands.gan:select_snapshot", "the network downstream stages use: the last, "
                        "best or a given snapshot of a run (generate.snapshot)", ["generate"],
                        ["--run-dir", "--out"]),
    "expression-prepare": ("histosynth.commands.expression:expression_prepare", "expression matrix -> standardised "
                           "profiles of the cohort (fitted on training patients)", ["expression"],
                           ["--sheet", "--split", "--out-profiles", "--out-transform",
                            ("--matrix", {"help": "local matrix file (default: expression.matrix)"})]),
    "train-vae": ("histosynth.commands.expression:train_vae", "train the beta-VAE on profiles; embeddings and held-out "
                  "reconstruction error", ["expression"],
                  ["--profiles", "--transform", "--out", "--out-embeddings", "--out-report", "--out-plot?"]),
    "generate-profiles": ("histosynth.commands.generate:generate_profiles", "tiles from expression profiles: held-out "
                          "patients, a CSV of new profiles, VAE samples", ["expression"],
                          ["--network", "--tiles", "--outdir", "--out-index", "--embeddings?", "--vae?", "--profiles?",
                           ("--partitions", {"nargs": "+", "default": ["test"]}), "--out-sampled?", "--grid?",
                           ("--vae-samples", {**INT, "help": "default: expression.vae_samples"}),
                           ("--per-profile", {**INT, "help": "default: expression.per_profile"}),
                           ("--seed0", {**INT, "default": 0})]),
    "evaluate-profiles": ("histosynth.commands.expression:evaluate_profiles", "held-out profiles: FID to the patient's "
                          "own tiles vs other patients'", ["evaluate"],
                          ["--tiles", "--heldout", "--reference", "--transform", "--out", "--features?", "--grid?"]),
    "project": ("histosynth.commands.generate:project", "real tiles into a conditional StyleGAN2 run: the w that "
                "reproduces each, PSNR/SSIM, counterfactuals under another condition", ["generate"],
                ["--network", "--tiles", "--reference", "--out-json", "--out-table", "--out-npz", "--out-png",
                 ("--embeddings", {"help": "beta-VAE embeddings (expression runs)"})]),
    "generate": ("histosynth.commands.generate:generate", "bulk-generate labelled synthetic tiles (+ class blending)",
                 ["generate"], ["--network", "--tiles", "--outdir", "--out-index", "--blend-png?", "--blend-gif?",
                                "--latent-png?", "--latent-gif?", "--blend-mp4?"]),
    "blend-analysis": ("histosynth.commands.generate:blend_analysis", "layer-wise class blends and the reference "
                       "classifier's probability along them", ["generate"],
                       ["--network", "--reference", "--out-json", "--out-png", "--out-layers"]),
    "attribute-grids": ("histosynth.commands.generate:attribute_grids", "per-attribute interpolation grids of an "
                        "attributes run (one attribute varies, seed fixed)", ["generate"], ["--network", "--out"]),
    "generate-images": ("histosynth.commands.generate:generate_images", "one PNG per seed, as NVIDIA's generate.py "
                        "(z = RandomState(seed).randn(1, z_dim))", [],
                        ["--network", ("--seeds", {"required": True, "help": "e.g. 0-7, 1,3,5 or 0-3,10"}), "--outdir",
                         ("--class", {"dest": "class_name", "help": "class (or attribute combination) by name"}),
                         ("--class-index", {**INT, "help": "index of the one-hot class vector"}),
                         ("--trunc", {**FLOAT, "default": 1.0, "help": "truncation psi, towards the mean w"}),
                         ("--noise-mode", {"choices": ["const", "seeded", "random", "none"], "default": "const"})]),
    "import-stylegan2": ("histosynth.commands.gan:import_stylegan2", "a stylegan2-ada-pytorch or slideflow StyleGAN2 "
                        "pickle as a histosynth network.pt (read without running anything from the file)", [],
                        ["--pkl", "--out", ("--class-names", {"help": "comma-separated names of the label indices "
                                                                      "0, 1, ... (default class0, class1, ...)"}),
                         ("--name", {"default": "imported", "help": "run name recorded in the network"})]),
    "fit-segmenter": ("histosynth.commands.masks:fit_segmenter", "fit the colour-deconvolution segmenter (auto label "
                      "maps) on training tiles", ["masks"], ["--tiles", "--out"]),
    "label-maps": ("histosynth.commands.masks:label_maps", "label maps of one slide's tiles (auto segmenter or QuPath "
                   "GeoJSON)", ["masks"], ["--tiles", "--slide-id", "--store", "--index", "--segmenter?", "--annotations?"]),
    "mask-index": ("histosynth.commands.masks:mask_index", "combine the slides' label-map indexes", [],
                   ["--indexes+", "--out"]),
    "import-pannuke": ("histosynth.commands.masks:import_pannuke", "PanNuke folds -> tile stores, label-map stores and "
                       "the mask index", ["masks"], ["--out"]),
    "train-segnet": ("histosynth.commands.evaluate:train_segnet", "train the U-Net segmenter on real training tiles and "
                     "maps (layout fidelity)", ["masks"], ["--index", "--out"]),
    "generate-layout": ("histosynth.commands.generate:generate_layout", "tiles from training label maps (bulk) and "
                        "held-out maps, and triplets", ["masks"],
                        ["--network", "--index", "--outdir", "--out-index", "--out-heldout", "--triplets"]),
    "features": ("histosynth.commands.evaluate:features", "features of every kept real tile, per extractor, into the "
                 "feature cache", ["evaluate"], ["--indexes+", "--reference", "--out"]),
    "evaluate-layout": ("histosynth.commands.evaluate:evaluate_layout", "layout fidelity (mIoU) and FID of a mask run",
                        ["evaluate", "masks"], ["--index", "--synthetic", "--heldout", "--segmenter", "--reference",
                                                "--out", "--run", ("--real-partitions", {"nargs": "+", "default": ["train"]}),
                                                "--features?"]),
    "draw": ("histosynth.draw.server:draw_command", "serve the drawing page (paint a label map, get a synthetic tile) "
             "and the class page (class, seed, psi, blend slider)", [],
             [("--network", {"nargs": "+", "required": True, "help": "network.pt file(s) to choose from: mask runs "
                                                                      "(drawing page), class or attributes runs (class page)"}),
              ("--host", {"default": "127.0.0.1"}), ("--port", {**INT, "default": 8765}),
              ("--open", {"action": "store_true", "help": "open the page in the default browser"}),
              ("--max-map-px", {**INT, "default": 4096, "help": "largest map side accepted (px)"}),
              ("--max-concurrent", {**INT, "help": "generations at once (default: 1 per GPU, else the CPU count)"}),
              ("--timeout", {**FLOAT, "default": 30.0, "help": "seconds a client may take to send its request"}),
              ("--allow-host", {"action": "append", "help": "another name clients use for this server (its Host "
                                                            "header); loopback names and --host are always allowed"})]),
    "audit-copies": ("histosynth.commands.evaluate:audit_copies", "copy audit: are generated (or any) tiles closer to "
                     "the GAN's training tiles than held-out patients' tiles are?", ["evaluate"],
                     ["--tiles", "--synthetic", "--reference", "--out", ("--run", {"default": "", "help": "run name "
                                                                                    "recorded in the result"}),
                      ("--pairs", {"help": "PNG of the closest generated/training pairs"}),
                      ("--flags", {"help": "parquet: every audited tile's nearest training tile and flags"}),
                      ("--train-partitions", {"nargs": "+", "default": ["train"], "help": "the partitions the GAN "
                                                                                          "trained on"}),
                      ("--heldout-partitions", {"nargs": "+", "default": ["test"], "help": "partitions of patients "
                                                                                           "it never saw (the null)"}),
                      ("--features", {"help": "the feature cache folder (features rule); read only"})]),
    "train-reference": ("histosynth.commands.classify:train_reference", "train the reference classifier on real "
                        "training tiles", ["classify"], ["--tiles", "--out"]),
    "evaluate": ("histosynth.commands.evaluate:evaluate", "FID, KID, precision/recall, floor, concordance", ["evaluate"],
                 ["--tiles", "--synthetic", "--reference", "--out", ("--real-partitions", {"nargs": "+", "default": ["train"]}),
                  ("--features", {"help": "the feature cache folder (features rule); read only"}),
                  ("--attributes", {"nargs": "*", "default": [], "help": "condition columns to report FID per value of "
                                                                         "(an attributes run's)"})]),
    "export": ("histosynth.commands.export:export", "a run's generated tiles as a dataset (PNG class folders, "
               "WebDataset shards or HDF5) with its card (DATASET.md, dataset.json)", ["export"],
               ["--run", ("--format", {"required": True, "choices": ["imagefolder", "webdataset", "hdf5"]}), "--out",
                ("--results", {"default": "results", "help": "the workflow's results folder (default: results)"}),
                ("--config-digest", {"help": "SHA-256 of the resolved configuration (default: of --config's)"}),
                ("--force", {"action": "store_true", "help": "replace --out if it holds anything"})]),
    "classify": ("histosynth.commands.classify:classify", "the augmentation study: real / synthetic / mixed arms",
                 ["classify"], ["--tiles", "--synthetic", "--network", "--outdir"]),
    "classify-folds": ("histosynth.commands.classify:classify_folds", "the cross-validated augmentation study "
                       "(classify.folds) from each fold's predictions and study.json", ["classify"],
                       ["--predictions+", "--studies+", "--outdir"]),
    "plot-training": ("histosynth.commands.report:plot_training", "a run's losses by kimg (stats.jsonl -> PNG), "
                      "with its snapshot metrics (metrics.jsonl) and the selected snapshot", [],
                      ["--stats", "--out", "--metrics?", "--network?"]),
    "report": ("histosynth.commands.report:report", "summary.json and summary.html", [],
               ["--sheet", "--tiles", "--gan-dir", "--gan-run", "--run-name", "--metrics", "--study", "--qc-dir",
                "--out-json", "--out-html", "--expression-dir?", "--mask-run?",
                ("--expression-run", {"action": "append", "help": "an expression-conditioned run to add (repeatable)"})]),
    "selfcheck": ("histosynth.selfcheck:selfcheck_command", "train every run kind, generate, evaluate and classify on "
                  "this machine's GPU (or a smaller CPU version): PASS/FAIL and speed per item", [],
                  [("--device", {"choices": ["auto", "cuda", "cpu"], "default": "auto"}),
                   ("--outdir", {"help": "keep the runs here (default: a temporary folder)"}),
                   ("--steps", {**INT, "help": "training steps per GAN run (default: 200 on GPU, 12 on CPU)"}),
                   ("--resolution", {**INT, "help": "tile size (default: 128 on GPU, 32 on CPU)"}),
                   ("--no-compile", {"action": "store_true", "help": "train without torch.compile"}),
                   ("--json", {"help": "also write the results here"})]),
    "config-doc": ("histosynth.config:print_schema_markdown", "print the configuration reference (config/README.md) "
                   "from the schema", [], []),
}


def _section(a, name):
    """A validated config section from --config FILE or --options / --masks-options JSON."""
    from histosynth.config import load_config, validate

    if a.config:
        section = load_config(a.config)[name]
    else:
        raw = a.masks_options if name == "masks" and "masks_options" in a else a.options
        section = validate({name: json.loads(raw) if raw else {}}, f"--options for {name}")[name]
    if name == "masks":
        from histosynth.masks.run import resolve_labels

        section = resolve_labels(section)
    return section


def _run(a):
    from histosynth.config import load_config, validate
    from histosynth.runs import RunSpec, resolve_runs

    if a.run_spec:
        return RunSpec.from_json(a.run_spec)
    if a.config:
        cfg = load_config(a.config)
        runs = resolve_runs(cfg)
        name = a.run or cfg["gan"]["name"]
        if name not in runs:
            raise UserError(f"{a.config} has no run {name!r}; its runs: {', '.join(runs)}")
        return runs[name]
    return RunSpec.of_gan(validate({"gan": json.loads(a.options or "{}")}, "--options for gan")["gan"])


def _parser():
    ap = argparse.ArgumentParser(prog="histosynth", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, (target, help_, sections, args) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(target=target, sections=sections)
        if sections:
            p.add_argument("--config", help="config YAML to take this stage's options from")
            p.add_argument("--options", help="this stage's options as JSON (what the workflow passes)")
        if "masks" in sections[1:]:
            p.add_argument("--masks-options", help="the masks section as JSON")
        for arg in args:
            if isinstance(arg, tuple):
                p.add_argument(arg[0], **arg[1])
            elif arg[-1] in "?+":
                p.add_argument(arg[:-1], **({"nargs": "+", "required": True} if arg[-1] == "+" else {}))
            else:
                p.add_argument(arg, required=True)
    return ap


def _dispatch(a):
    module, name = a.target.split(":")
    fn = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(fn).parameters
    kw = {k: v for k, v in vars(a).items() if k in accepted}
    for i, section in enumerate(a.sections):
        if section == "run":
            kw["run"] = _run(a)
        elif section == "masks":
            kw["masks"] = _section(a, "masks")
        elif i == 0:
            kw["opts"] = _section(a, section)
    if "progress" in accepted:
        kw["progress"] = not a.quiet
    fn(**kw)


def main(argv=None):
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        _dispatch(args)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
