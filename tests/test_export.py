"""`histosynth export`: a run's generated tiles as a dataset, read back with each format's own
library (torchvision's ImageFolder and pandas, webdataset, h5py) and compared pixel for pixel and
label for label with the tile store; the dataset card; what is left out and what is refused."""
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from histosynth.cli import main
from histosynth.slides.store import load_tiles, read_index

RUN = "stylegan2-class"


@pytest.fixture(scope="module")
def expected(e2e_workdir):
    """The run's generated tiles keyed by (label, seed), without those the copy audit flagged."""
    syn = read_index(e2e_workdir / f"results/generate/{RUN}/synthetic.parquet")
    flags = read_index(e2e_workdir / f"results/evaluate/{RUN}/copies.parquet")
    flags = flags[flags["below_p1"] & (flags["extractor"] == "pixels")]  # the voting space (domain reports)
    bad = set(zip(flags["store"], flags["page"]))
    keep = syn[[k not in bad for k in zip(syn["store"], syn["page"])]].reset_index(drop=True)
    tiles = load_tiles(keep.assign(store=[str(e2e_workdir / s) for s in keep["store"]]))
    return {(r.label, int(r.seed)): t for r, t in zip(keep.itertuples(), tiles)}, len(syn) - len(keep)


def _export(workdir, monkeypatch, fmt, out, run=RUN, results="results", *extra):
    monkeypatch.chdir(workdir)  # the index names its stores relative to the workflow's folder
    return main(["-q", "export", "--config", "config/config.yaml", "--run", run, "--format", fmt, "--out", str(out),
                 "--results", str(results), *extra])


def _card(out, expected, fmt):
    card = json.loads((out / "dataset.json").read_text())
    tiles, dropped = expected
    assert card["dataset"]["format"] == fmt and card["dataset"]["n_tiles"] == len(tiles)
    assert card["dataset"]["dropped_by_copy_audit"] == dropped
    assert card["copy_audit"]["verdict"] in ("no evidence of copying", "copying")
    assert len(card["generator"]["network_md5"]) == 32 and len(card["generator"]["config_digest"]) == 64
    assert card["training_cohort"]["patients"] == 4 and card["evaluation"]["metrics"]["domain"]["fid_real_vs_real"] > 0
    md = (out / "DATASET.md").read_text()
    assert "## Copy audit" in md and "## Limits of use" in md and card["generator"]["network_md5"] in md
    sel = card["generator"]["selection"]  # the e2e config selects the best snapshot by FID
    assert sel["choice"] == "best" and sel["metric"] == "fid" and f"{sel['value']:.3f}" in md
    assert card["generator"]["network"].endswith("selected.pt") and "the best snapshot" in md
    return card


def test_imagefolder_round_trip(e2e_workdir, expected, tmp_path, monkeypatch):
    from torchvision.datasets import ImageFolder

    out = tmp_path / "if"
    assert _export(e2e_workdir, monkeypatch, "imagefolder", out) == 0
    _card(out, expected, "imagefolder")
    meta = pd.read_csv(out / "metadata.csv")
    ds = ImageFolder(str(out))
    assert len(ds) == len(meta) == len(expected[0]) and ds.classes == ["normal", "tumor"]
    by_file = meta.set_index("file_name")
    for path, cls in ds.samples:
        rel = str(path.relative_to(out)) if hasattr(path, "relative_to") else path[len(str(out)) + 1:]
        row = by_file.loc[rel]
        assert ds.classes[cls] == row["label"]
        np.testing.assert_array_equal(np.asarray(ds.loader(path)), expected[0][(row["label"], int(row["seed"]))])


def test_webdataset_round_trip(e2e_workdir, expected, tmp_path, monkeypatch):
    import webdataset as wds

    out = tmp_path / "wds"
    assert _export(e2e_workdir, monkeypatch, "webdataset", out) == 0
    card = _card(out, expected, "webdataset")
    shards = sorted(str(p) for p in out.glob("*.tar"))
    assert shards and [p.split("/")[-1] for p in shards] == [f for f in card["dataset"]["files"] if f.endswith(".tar")]
    n = 0
    for s in wds.WebDataset(shards, shardshuffle=False).decode("rgb8"):
        meta = s["json"] if isinstance(s["json"], dict) else json.loads(s["json"])
        assert ["normal", "tumor"][int(s["cls"])] == meta["label"]
        np.testing.assert_array_equal(s["png"], expected[0][(meta["label"], meta["seed"])])
        n += 1
    assert n == len(expected[0])


def test_hdf5_round_trip(e2e_workdir, expected, tmp_path, monkeypatch):
    import h5py

    out = tmp_path / "h5"
    assert _export(e2e_workdir, monkeypatch, "hdf5", out) == 0
    card = _card(out, expected, "hdf5")
    with h5py.File(out / f"histosynth-{RUN}.h5", "r") as f:
        classes = [c.decode() for c in f["classes"][:]]
        labels, seeds = f["labels"][:], f["metadata/seed"][:]
        assert f["images"].shape[0] == len(expected[0]) and json.loads(f.attrs["card"])["name"] == card["name"]
        for i in range(len(labels)):
            label = classes[labels[i]]
            assert f["metadata/label"][i].decode() == label
            np.testing.assert_array_equal(f["images"][i], expected[0][(label, int(seeds[i]))])


def test_no_patient_identifier_leaves_with_the_dataset(e2e_workdir, tmp_path, monkeypatch):
    """An expression run's tiles are generated from patients' profiles: the dataset says which tiles
    share a profile (pseudonyms), never whose it is; neither slides nor patients are named."""
    out = tmp_path / "expr"
    assert _export(e2e_workdir, monkeypatch, "imagefolder", out, "stylegan2-expression") == 0
    meta = pd.read_csv(out / "metadata.csv")
    assert meta["profile"].str.match(r"^profile-\d{4}$").all() and meta["profile"].nunique() > 1
    patients = set(read_index(e2e_workdir / "results/split/tiles.parquet")["patient_id"])
    text = (out / "metadata.csv").read_text() + (out / "dataset.json").read_text() + (out / "DATASET.md").read_text()
    assert not [p for p in patients if p in text]


def test_copying_is_refused_and_nothing_half_written_is_left(e2e_workdir, tmp_path, monkeypatch, caplog):
    res = tmp_path / "results"
    res.mkdir()
    for d in ("gan", "generate", "split", "masks"):
        (res / d).symlink_to(e2e_workdir / "results" / d)
    shutil.copytree(e2e_workdir / "results/evaluate", res / "evaluate")
    c = json.loads((res / f"evaluate/{RUN}/copies.json").read_text())
    c["verdict"].update(verdict="copying", text="Copying: planted for the test.")
    (res / f"evaluate/{RUN}/copies.json").write_text(json.dumps(c))
    out = tmp_path / "out"
    assert _export(e2e_workdir, monkeypatch, "imagefolder", out, RUN, res) == 2
    assert "found copying" in caplog.text and "allow_copying" in caplog.text and not out.exists()
    assert not list(tmp_path.glob(".out.*"))
    # an existing, non-empty folder is not overwritten without --force
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _export(e2e_workdir, monkeypatch, "hdf5", out) == 2 and (out / "mine.txt").read_text() == "keep"
    # a store that cannot be read: the export fails and leaves no folder behind
    shutil.copy(e2e_workdir / f"results/evaluate/{RUN}/copies.json", res / f"evaluate/{RUN}/copies.json")
    syn = read_index(e2e_workdir / f"results/generate/{RUN}/synthetic.parquet")
    (res / "generate").unlink()
    (res / "generate" / RUN).mkdir(parents=True)
    syn.assign(store=str(tmp_path / "missing.tiff")).to_parquet(res / "generate" / RUN / "synthetic.parquet")
    with pytest.raises(FileNotFoundError):
        _export(e2e_workdir, monkeypatch, "webdataset", tmp_path / "out2", RUN, res,
                "--config-digest", "0" * 64)
    assert not (tmp_path / "out2").exists() and not list(tmp_path.glob(".out2.*"))


def test_an_imported_networks_unknown_cohort_is_said_not_counted_as_zero(e2e_workdir):
    from histosynth.commands.export import _cohort

    tiles = read_index(e2e_workdir / "results/split/tiles.parquet")
    known = _cohort(tiles, ["P000", "P100"], 32)
    assert known["patients"] == 2 and known["tiles"] > 0 and known["partitions"] == ["train"]
    unknown = _cohort(tiles, None, 32)
    assert unknown["patients"] is None and unknown["split_patients"] == known["split_patients"]
