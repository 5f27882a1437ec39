"""The workflow on other sources than the demo, each in its own directory (not the suite-wide
end-to-end run, so these run beside it on the other worker): the TCGA config against a loopback
GDC server, the GTEx config against a loopback GTEx server, and a bad config."""
import yaml
from e2e import REPO, TINY, run


def test_bad_config_names_the_key(tmp_path):
    (tmp_path / "config").mkdir()
    bad = dict(TINY, tiles={"tile_px": "big"})
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(bad))
    r = run(["-n"], tmp_path)
    assert r.returncode != 0 and "tile_px" in (r.stdout + r.stderr)


def test_gdc_source_runs_the_dag_against_a_gdc_speaking_server(tmp_path, gdc_cohort):
    """The README's TCGA command, pointed at a loopback GDC: query (checkpoint), one download job
    per slide (one of them faulty), verification, labels, tiling and the patient split."""
    import pandas as pd
    from httpfaults import GDCServer

    records, files = gdc_cohort
    faulty = records[3]["file_id"]
    with GDCServer(records, files, faults={faulty: ["drop", "corrupt"]}, content_md5=True) as srv:
        r = run(["results/split/tiles.parquet", "results/acquire/slides.verified.tsv",
                 "--configfile", str(REPO / "config" / "tcga-luad-lusc.yaml"),
                 "--config", f"acquire={{gdc: {{api_url: '{srv.url}'}}}}"], tmp_path)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
        downloads = [q for q in srv.requests if q[1].startswith("/data/")]
    sheet = pd.read_csv(tmp_path / "results/acquire/slides.verified.tsv", sep="\t", dtype=str)
    assert len(sheet) == 8 and set(sheet["label"]) == {"TCGA-LUAD", "TCGA-LUSC"}
    assert (sheet["md5_checked_against"] == "published").all()
    for _, row in sheet.iterrows():
        assert (tmp_path / row["path"]).read_bytes() == files[row["file_id"]]
    assert len([q for q in downloads if q[1].endswith(faulty)]) == 3  # dropped, resumed-but-corrupt, clean
    assert (tmp_path / "results/acquire/gdc_manifest.txt").exists()
    tiles = pd.read_parquet(tmp_path / "results/split/tiles.parquet")
    assert set(tiles["label"]) == {"TCGA-LUAD", "TCGA-LUSC"} and tiles["kept"].sum() > 20  # 4x4 tiles of 256 µm per 1 mm slide
    assert tiles.groupby("patient_id")["partition"].nunique().max() == 1
    # the config's split.preserve_site: every tissue source site (the barcode's TSS) in one partition
    assert tiles["site"].nunique() == 6 and tiles.groupby("site")["partition"].nunique().max() == 1
    for label in ("TCGA-LUAD", "TCGA-LUSC"):
        assert set(tiles.loc[tiles["label"] == label, "partition"]) == {"train", "val", "test"}


def test_gtex_lung_brain_donors_with_both_tissues_stay_whole(tmp_path, gdc_cohort):
    """config/gtex-lung-brain.yaml against a loopback GTEx server: donors with a lung and a brain
    slide (two labels) go through the query, downloads, tiling and the split; every donor sits in
    one partition and no test donor's tile is in the GAN's or the classifier's training tiles."""
    import pandas as pd
    from httpfaults import GTExServer
    from test_acquire import gtex_annotations

    _, files = gdc_cohort
    datas = list(files.values())
    donors = {"GTEX-AAAA1": ["Lung"], "GTEX-AAAA2": ["Lung"], "GTEX-BBBB1": ["Brain - Cortex"],
              "GTEX-BBBB2": ["Brain - Cortex"], "GTEX-CCCC1": ["Lung", "Brain - Cortex"],
              "GTEX-CCCC2": ["Lung", "Brain - Cortex"]}
    ids, images = [], {}
    for d, tissues in donors.items():
        for k, t in enumerate(tissues):
            slide = f"{d}-{k + 1:02d}26"
            ids.append((f"{slide}-SM-{k}", t))
            images[slide] = datas[len(images) % len(datas)]
    with GTExServer(images, gtex_annotations(ids)) as srv:
        r = run(["results/split/tiles.parquet", "--configfile", str(REPO / "config" / "gtex-lung-brain.yaml"),
                 "--config", f"acquire={{gtex: {{image_url: '{srv.url}/images', annotations: '{srv.url}/annotations.txt'}}}}",
                 "split={test_fraction: 0.34, val_fraction: 0.0}", "tiles={tile_px: 64, tile_um: 256}",
                 "gan={resolution: 64}", "expression={enabled: false}"], tmp_path)
        assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-5000:])
    split = pd.read_csv(tmp_path / "results/split/split.tsv", sep="\t")
    assert len(split) == 6 and split["patient_id"].is_unique
    assert set(split.loc[split["patient_id"].str.startswith("GTEX-CCCC"), "label"]) == {"Brain - Cortex|Lung"}
    tiles = pd.read_parquet(tmp_path / "results/split/tiles.parquet")
    assert tiles.groupby("patient_id")["partition"].nunique().max() == 1
    assert set(tiles.loc[tiles["patient_id"] == "GTEX-CCCC1", "label"]) == {"Lung", "Brain - Cortex"}
    for label in ("Lung", "Brain - Cortex"):
        assert {"train", "test"} <= set(tiles.loc[tiles["label"] == label, "partition"])
    from histosynth.gan.training.kinds import training_tiles

    test_donors = set(split.loc[split["partition"] == "test", "patient_id"])
    gan_tiles = training_tiles(tiles, {"train_partitions": ["train", "val"]})
    assert test_donors and not test_donors & set(gan_tiles["patient_id"])
