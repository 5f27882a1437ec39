"""benchmarks/demo_quality.py, the per-seed fidelity table of the demo's GAN runs: its figures,
table and picture, read from the suite's end-to-end run (the same rules the benchmark runs)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))


def test_demo_quality_figures_table_and_picture(e2e_workdir, tmp_path):
    from demo_quality import layout_figures, markdown_table, picture, style_figures, targets

    cfg = yaml.safe_load((e2e_workdir / "config" / "config.yaml").read_text())
    want, style, mask = targets(cfg)
    assert style == ["stylegan2-class", "stylegan2-expression"] and mask == "spade-layout"
    assert want[-1] == "results/evaluate/spade-layout/layout.json"
    res = {}
    for r in style:
        f = res[r] = style_figures(json.loads((e2e_workdir / f"results/evaluate/{r}/metrics.json").read_text()))
        assert f["ratio"] == f["fid"] / f["floor"] and set(f["per_class"]) == {"normal", "tumor"}
        assert all(c["floor"] > 0 and c["ratio"] == c["fid"] / c["floor"] for c in f["per_class"].values())
        assert f["verdict"] in ("close to real", "not converged") and isinstance(f["colour_within_range"], bool)
    lay = res[mask] = layout_figures(json.loads((e2e_workdir / "results/evaluate/spade-layout/layout.json").read_text()))
    assert 0 <= lay["chance"] <= 1 and 0 <= lay["miou"] <= 1 and lay["n_maps"] > 0
    lines = markdown_table({0: res, 1: res}, style, mask)
    assert len(lines) == 2 + 2 * 3 and lines[2].startswith("| stylegan2-class | 0 |") and "mIoU" in lines[4]
    picture(e2e_workdir, "stylegan2-class", tmp_path / "p.png", per_class=4)
    img = np.asarray(Image.open(tmp_path / "p.png"))
    px = int(cfg["tiles"]["tile_px"])
    assert img.shape == (2 * 2 * px * 2, 4 * px * 2, 3)  # real over generated, per class, shown at 2x


def test_overrides_merge_as_snakemake_merges_config():
    from demo_quality import merge

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    out = merge(cfg, ["gan={kimg: 200, gpus: 1}", "classify={seeds: [0]}"])
    assert out["gan"]["kimg"] == 200 and out["gan"]["gpus"] == 1 and out["gan"]["batch"] == cfg["gan"]["batch"]
    assert out["classify"]["seeds"] == [0] and out["classify"]["steps"] == cfg["classify"]["steps"]
    assert cfg["gan"]["kimg"] == 12  # the file's config is left as it was
    with pytest.raises(SystemExit, match="expected KEY=VALUE"):
        merge(cfg, ["gan.kimg"])
