"""End to end: the whole DAG on a tiny config, then the things users do with it."""
import json
import math

import numpy as np
import pytest
from e2e import TINY, run


@pytest.fixture(scope="module")
def workdir(e2e_workdir):
    return e2e_workdir


def test_summary_has_every_design_key_with_measured_values(workdir):
    from html import escape

    s = json.loads((workdir / "results/report/summary.json").read_text())
    assert s["slides"]["n"] == 8 and s["slides"]["tiles"] > 50
    assert isinstance(s["slides"]["zero_tile_slides"], list)
    g = s["gan"]["stylegan2-class"]
    assert g["kimg"] >= 0.3 and g["resolution"] == 32 and g["conditioning"] == "class"
    # snapshot metrics at each of every run's snapshots; the best by FID is the network used downstream
    for name, gr in s["gan"].items():
        series = gr["snapshot_metrics"]["series"]
        assert len(series) == 2 and all(r["fid"] > 0 and 0 <= r["precision"] <= 1 for r in series), name
        best = min(series, key=lambda r: (r["fid"], r["kimg"]))
        assert (gr["selection"]["choice"], gr["selection"]["kimg"]) == ("best", best["kimg"]), name
        assert gr["selection"]["value"] == best["fid"] and 0 < gr["snapshot_metrics"]["eval_share"], name
    m = s["metrics"]["stylegan2-class"]["domain"]
    for k in ("fid", "kid_mean", "kid_std", "precision", "recall", "n_real", "n_fake", "fid_real_vs_real"):
        assert isinstance(m[k], (int, float)) and math.isfinite(m[k]), k
    assert set(m["per_class_fid"]) == {"normal", "tumor"} and m["below_min_samples"] is True
    c = s["concordance"]["stylegan2-class"]
    assert 0 <= c["weak"] <= 1 and 0 <= c["strong"] <= 1
    assert set(s["classifier"]) == {"real", "real_noaug", "real_hed", "synthetic", "mixed_x1"}
    d = s["classifier_differences"]["mixed_x1 - real"]
    assert d["auc_ci95"][0] <= d["auc"] <= d["auc_ci95"][1] and 0 <= d["auc_p"] <= 1
    best = s["classifier_baselines"]["1"]["best_baseline"]
    assert f"mixed_x1 - {best}" in s["classifier_differences"]
    for v in s["classifier"].values():
        assert 0 <= v["auc"] <= 1 and v["auc_ci95"][0] <= v["auc"] <= v["auc_ci95"][1] and v["n_seeds"] == 2
        assert "accuracy" in v and "f1" in v
    assert s["classifier"]["real"]["n_train_synthetic"] == 0 and s["classifier"]["synthetic"]["n_train_real"] == 0
    html = (workdir / "results/report/summary.html").read_text()
    assert "data:image/png;base64" in html and "real-vs-real" in html and "BELOW min_samples" in html
    assert "Paired differences" in html and "Against the best augmentation-only arm" in html
    # each StyleGAN2 run's verdict in words, from its FID against the floor and its concordance
    assert set(s["verdict"]) == {"stylegan2-class", "stylegan2-expression"}
    for v in s["verdict"].values():
        assert v["verdict"] in ("close to real", "not converged", "not comparable")
        assert escape(v["text"]) in html
    # blending as Dolezal et al.: video, layer groups (32 px: coarse and middle), P(second class) along each
    b = s["blend"]["stylegan2-class"]
    assert set(b["groups"]) == {"all", "coarse", "middle"} and b["class"] in ("normal", "tumor")
    for g in b["groups"].values():
        assert len(g["p_mean"]) == TINY["generate"]["blend_analysis_steps"] and all(0 <= p <= 1 for p in g["p_mean"])
        assert g["crossing"] is None or 0 <= g["crossing"] <= 1
    assert set(s["blend"]) == {"stylegan2-class", "stylegan2-expression"} and "Blending analysed" in html
    assert (workdir / "results/evaluate/stylegan2-class/blend.mp4").read_bytes()[4:8] == b"ftyp"
    # the copy audit of every run: its verdict in summary.json and the report, the closest pairs embedded
    assert set(s["copies"]) == {"stylegan2-class", "stylegan2-expression", "spade-layout"}
    for r, c in s["copies"].items():
        assert c["verdict"] in ("copying", "no evidence of copying") and set(c["spaces"]) == {"pixels", "domain"}
        assert escape(c["text"]) in html and (workdir / f"results/evaluate/{r}/copies.png").exists()
    assert html.count("<h3>Copy audit</h3>") == 3


def test_regions_restrict_and_label_the_tiles(workdir):
    """TINY tiles inside QuPath regions (tests/e2e.py:write_regions): no tile of less than half
    its area in its region, none in the hole, the Ignore* square's tiles dropped undecoded, every
    label the region's class mapped through tiles.roi.classes, and the GAN conditioned on them."""
    import pandas as pd
    import torch
    from e2e import HOLE, IGNORE, REGION_X1

    tiles = pd.read_parquet(workdir / "results/split/tiles.parquet")
    stride = 256  # 128 µm at 0.5 µm/px
    assert (tiles["x"] + stride * 0.5 <= REGION_X1).all() and (tiles["roi_overlap"] >= 0.5).all()
    assert ((tiles["x"] == 1536) & tiles["kept"]).any()  # 164 of 256 px inside: kept
    assert not ((tiles["x"] == 512) & (tiles["y"] == 512)).any()  # 88% in the hole
    ex = tiles[tiles["reject_reason"] == "roi_excluded"]
    i0, i1 = IGNORE
    assert len(ex) and ex["page"].eq(-1).all() and ex["blur"].isna().all()
    assert ((ex["x"] < i1) & (ex["x"] + stride > i0) & (ex["y"] < i1) & (ex["y"] + stride > i0)).all()
    sheet = pd.read_csv(workdir / "results/acquire/slides.tsv", sep="\t")
    want = dict(zip(sheet["slide_id"], sheet["label"]))
    kept = tiles[tiles["kept"]]
    assert (kept["roi_class"] == kept["slide_id"].map(want)).all() and (kept["label"] == kept["roi_class"]).all()
    assert HOLE[0] > 512 and len(kept) > 100
    ck = torch.load(workdir / "results/gan/stylegan2-class/network.pt", weights_only=True, map_location="cpu")
    assert ck["conditioning"]["categories"]["label"] == ["normal", "tumor"]
    r = json.loads((workdir / "results/report/summary.json").read_text())["slides"]["regions"]
    assert r["slides_with_regions"] == 8 and r["slides_without"] == 0 and r["dropped"]["roi_excluded"] == len(ex)
    assert r["kept_per_class"] == kept["roi_class"].value_counts().to_dict()
    from PIL import Image

    thumb = np.asarray(Image.open(next((workdir / "results/tiles/qc").glob("*.png"))).convert("RGB")).reshape(-1, 3)
    assert ((thumb == (200, 0, 0)).all(1)).sum() > 100  # the regions drawn in their QuPath colour


def test_real_tiles_projected_with_counterfactuals(workdir):
    """The project rule on the class and expression runs: 4 real test tiles each, their
    reconstructions, class-mean images and counterfactuals in the npz (read without pickle), the
    table, the report."""
    import pandas as pd

    ev = workdir / "results/evaluate/stylegan2-class"
    p = json.loads((ev / "projection.json").read_text())
    assert p["n_tiles"] == 4 and p["partition"] == "test" and p["groups"] == ["all", "coarse", "middle"]
    assert set(p["counterfactual"]) == set(p["groups"])
    for v in p["counterfactual"].values():
        assert 0 <= v["p_target_start"] <= 1 and 0 <= v["p_target_end"] <= 1
    t = pd.read_parquet(ev / "projection.parquet")
    tiles = pd.read_parquet(workdir / "results/split/tiles.parquet").set_index(["slide_id", "x", "y"])
    assert (tiles.loc[list(zip(t.slide_id, t.x, t.y)), "partition"] == "test").all()
    assert sorted(t["condition"]) == ["normal", "normal", "tumor", "tumor"]
    assert (t["counterfactual"] != t["condition"]).all() and t["psnr"].between(5, 60).all()
    with np.load(ev / "projection.npz", allow_pickle=False) as z:
        assert z["ws"].shape[:2] == (4, 8) and z["real"].shape == (4, 32, 32, 3)
        assert z["counterfactual"].shape == (4, 3, 32, 32, 3) and z["reconstruction"].dtype == np.uint8
    s = json.loads((workdir / "results/report/summary.json").read_text())
    assert s["projection"]["stylegan2-class"]["reconstruction"] == p["reconstruction"]
    assert set(s["projection"]) == {"stylegan2-class", "stylegan2-expression"}  # towards another patient's profile
    e = pd.read_parquet(workdir / "results/evaluate/stylegan2-expression/projection.parquet")
    assert len(e) == 4 and all(a.split(" (")[1] != b.split(" (")[1] for a, b in zip(e["condition"], e["counterfactual"]))
    assert (workdir / "results/report/summary.html").read_text().count("Real tiles projected") == 2


def test_mask_run_end_to_end(workdir):
    """The layout path of the DAG: colour segmenter fitted on training tiles -> label maps per
    slide -> SPADE -> tiles from training and held-out maps -> mIoU and FID -> report."""
    import pandas as pd

    s = json.loads((workdir / "results/report/summary.json").read_text())
    run_ = "spade-layout"
    g = s["gan"][run_]
    assert g["conditioning"] == "mask" and g["method"] == "spade" and g["kimg"] >= 0.3
    lay = s["masks"][run_]["layout"]
    assert lay["classes"] == ["background", "stroma", "nuclei"] and lay["n_maps"] > 10
    assert lay["real"]["miou"] == pytest.approx(1.0)  # the maps are the segmenter's own output
    for row in ("generated", "chance"):
        assert 0 <= lay[row]["miou"] <= 1
    m = s["masks"][run_]["metrics_heldout"]["domain"]
    assert math.isfinite(m["fid"]) and math.isfinite(m["fid_real_vs_real"])
    assert math.isfinite(s["metrics"][run_]["domain"]["fid"])
    idx = pd.read_parquet(workdir / "results/masks/index.parquet")
    tiles = pd.read_parquet(workdir / "results/split/tiles.parquet")
    assert len(idx) == int(tiles["kept"].sum())  # every kept tile has a map
    syn = pd.read_parquet(workdir / f"results/generate/{run_}/synthetic.parquet")
    held = pd.read_parquet(workdir / f"results/generate/{run_}/heldout.parquet")
    assert set(syn["source_partition"]) == {"train"} and set(held["source_partition"]) == {"test"}
    assert len(syn) == min(150, int((idx["partition"] == "train").sum()))
    assert len(held) == min(64, int((idx["partition"] == "test").sum()))
    assert (workdir / f"results/evaluate/{run_}/triplets.png").stat().st_size > 1000
    html = (workdir / "results/report/summary.html").read_text()
    assert "Layout-conditioned run: spade-layout" in html and "Layout fidelity" in html


def test_expression_run_end_to_end(workdir):
    """The RNA-GAN path of the DAG: profiles -> beta-VAE -> expression-conditioned GAN ->
    tiles from training, held-out, new and sampled profiles -> numbers in the report."""
    import pandas as pd

    s = json.loads((workdir / "results/report/summary.json").read_text())
    run_ = "stylegan2-expression"
    assert s["gan"][run_]["conditioning"] == "expression" and s["gan"][run_]["kimg"] >= 0.2
    assert math.isfinite(s["metrics"][run_]["domain"]["fid"]) and 0 <= s["concordance"][run_]["weak"] <= 1
    e = s["expression"][run_]
    assert e["key"] == "patient_id" and e["n_profiles"] == 6 and e["n_genes"] == 200 and e["latent"] == 8
    assert set(e["vae_reconstruction"]) == {"train", "test"}
    ps = e["profile_specificity"]["domain"]
    assert ps["n_keys"] == 2 and ps["pairs"] == 2 and math.isfinite(ps["all_others"]["mean_gap"])
    assert ps["same_class"] is None  # one test patient per class: no same-class comparison exists
    opts = json.loads((workdir / f"results/gan/{run_}/training_options.json").read_text())
    assert opts["n_train_patients"] == 4 and opts["c_dim"] == 8
    syn = pd.read_parquet(workdir / f"results/generate/{run_}/synthetic.parquet")
    assert len(syn) == 400 and set(syn["label"]) == {"tumor", "normal"}
    test_pats = set(pd.read_csv(workdir / "results/split/split.tsv", sep="\t").query("partition == 'test'")["patient_id"])
    assert not set(syn["expression_key"]) & test_pats  # the classifier-facing tiles come from training profiles only
    held = pd.read_parquet(workdir / f"results/generate/{run_}/heldout.parquet")
    assert set(held["expression_key"]) == test_pats and len(held) == 80
    prof = pd.read_parquet(workdir / f"results/generate/{run_}/profiles.parquet")
    assert prof["condition"].str.startswith("profile-NEW").sum() == 4 * 4
    assert prof["condition"].str.startswith("vae-sample-").sum() == 2 * 4
    html = (workdir / "results/report/summary.html").read_text()
    assert "Expression-conditioned run" in html and "β-VAE reconstruction" in html


def test_outputs_use_one_store_format(workdir):
    import pandas as pd

    from histosynth.slides.store import TileStore

    syn = pd.read_parquet(workdir / "results/generate/stylegan2-class/synthetic.parquet")
    assert {"seed", "condition", "network", "store", "page", "label"} <= set(syn.columns)
    assert len(syn) == 400 and (syn["tile_px"] == 32).all()
    with TileStore(workdir / syn["store"].iloc[0]) as st:
        assert st[0].shape == (32, 32, 3)
    tiles = pd.read_parquet(workdir / "results/split/tiles.parquet")
    assert tiles.groupby("patient_id")["partition"].nunique().max() == 1
    opts = json.loads((workdir / "results/gan/stylegan2-class/training_options.json").read_text())
    assert opts["n_train_patients"] == 4  # 2 train patients per class; the test patients never reach the GAN


def test_dry_run_lists_the_dag_and_single_rule_rerun(workdir):
    r = run(["-n", "-R", "evaluate"], workdir)
    assert r.returncode == 0 and "evaluate" in r.stdout
    r = run(["--list-target-rules"], workdir)
    assert {"all", "downloads", "tiles", "splits", "networks", "generated", "evaluated", "study"} <= set(r.stdout.split())
    # the README's override syntax: nested values arrive as text and are read as the schema's types
    r = run(["-n", "networks", "--config", "gan={kimg: 0.6, batch: 8, compile: false}"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "train_gan" in r.stdout  # a longer run: training goes on from its checkpoint
    r = run(["-n", "--config", "gan={batch: eight}"], workdir)
    assert r.returncode != 0 and "'gan.batch': 'eight' is not an integer" in r.stdout + r.stderr
    # gan.pretrained: train_gan of the gan run (only) takes the network file as an input
    (workdir / "net.pkl").write_bytes(b"not read by a dry run")
    r = run(["-n", "networks", "--config", "gan={pretrained: net.pkl}"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "input: results/split/tiles.parquet, net.pkl" in r.stdout
    (workdir / "net.pkl").unlink()
    # an attributes run: its own interpolation grids, FID per attribute value, and the blend analysis
    r = run(["-n", "-p", "evaluated", "--config", "gan={conditioning: attributes, condition_columns: [label, sex]}"],
            workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "rule attribute_grids" in r.stdout and "--attributes label sex" in r.stdout
    assert "rule blend_analysis" in r.stdout
    r = run(["-R", "evaluate"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((workdir / "results/evaluate/stylegan2-class/metrics.json").read_text())["metrics"]["domain"]


def test_snakemake_report_builds(workdir):
    r = run(["--report", "report.html"], workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (workdir / "report.html").stat().st_size > 10000
