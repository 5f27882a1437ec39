"""Acquire from GDC and GTEx through loopback servers that speak their protocols."""
import hashlib
import json
import logging

import pandas as pd
import pytest
from httpfaults import GDCServer, GTExServer

from histosynth.acquire import gdc
from histosynth.acquire.query import (
    build_sample_sheet,
    gdc_manifest_path,
    write_verified_sheet,
)
from histosynth.cli import main
from histosynth.config import validate
from histosynth.utils import UserError

NOSLEEP = lambda s: None  # noqa: E731


def acquire_opts(tmp_path, **kw):
    return validate({"acquire": dict({"slide_dir": str(tmp_path / "slides")}, **kw)})["acquire"]


def gdc_opts(tmp_path, url, **gdc_kw):
    return acquire_opts(tmp_path, source="gdc", gdc=dict({"api_url": url, "projects": ["TCGA-LUAD", "TCGA-LUSC"]}, **gdc_kw))


@pytest.mark.parametrize("method", ["post", "get"])
def test_gdc_query_pages_filters_and_labels(tmp_path, gdc_cohort, method):
    records, files = gdc_cohort
    with GDCServer(records, files) as srv:
        o = gdc_opts(tmp_path, srv.url, page_size=2, query_method=method)
        sheet = build_sample_sheet(o, tmp_path / "slides.tsv", sleep=NOSLEEP)
        queries = srv.queries
    assert [q["from"] for q in queries] == [0, 2, 4, 6]  # 8 matching files, pages of 2, stop at total
    assert all(q["method"] == method.upper() for q in queries)
    flt = json.dumps(queries[0]["filters"])
    assert '"Slide Image"' in flt and '"Diagnostic Slide"' in flt and "TCGA-LUAD" in flt
    good = [r for r in records if r["experimental_strategy"] == "Diagnostic Slide" and r["data_format"] == "SVS"
            and r["cases"][0]["project"]["project_id"] != "TCGA-BRCA"]
    assert len(sheet) == len(good) == 8
    by_id = {r["file_id"]: r for r in good}
    for _, row in sheet.iterrows():
        rec = by_id[row["file_id"]]
        assert row["label"] == rec["cases"][0]["project"]["project_id"]
        assert row["patient_id"] == rec["cases"][0]["submitter_id"]
        assert row["md5"] == rec["md5sum"] and int(row["size"]) == rec["file_size"]
        assert row["source"] == f"{srv.url}/data/{rec['file_id']}"
        assert row["slide_id"] == rec["file_name"].split(".")[0] and row["path"].endswith(row["slide_id"] + ".svs")
    man = pd.read_csv(gdc_manifest_path(tmp_path / "slides.tsv"), sep="\t", dtype=str)
    assert list(man.columns) == ["id", "filename", "md5", "size", "state"]  # what gdc-client -m reads
    assert set(man["id"]) == set(by_id)


def test_gdc_cap_is_seeded_and_independent_of_server_order(tmp_path, gdc_cohort):
    records, files = gdc_cohort
    picks = []
    for recs in (records, records[::-1]):
        with GDCServer(recs, files) as srv:
            o = gdc_opts(tmp_path, srv.url, max_slides_per_class=2, seed=3)
            sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        assert sheet["label"].value_counts().to_dict() == {"TCGA-LUAD": 2, "TCGA-LUSC": 2}
        picks.append(sorted(sheet["file_id"]))
    assert picks[0] == picks[1]


def test_gdc_label_field_sample_types_and_extra_fields(tmp_path, gdc_cohort):
    records, files = gdc_cohort
    with GDCServer(records, files) as srv:
        o = gdc_opts(tmp_path, srv.url, label_field="cases.samples.sample_type", sample_types=["Primary Tumor"],
                     extra_fields=["cases.project.project_id"], max_slides_per_class=None)
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        assert "Primary Tumor" in json.dumps(srv.queries[0]["filters"])
    assert set(sheet["label"]) == {"Primary Tumor"} and set(sheet["project_id"]) == {"TCGA-LUAD", "TCGA-LUSC"}


def test_gdc_query_survives_500_and_429(tmp_path, gdc_cohort, monkeypatch):
    records, files = gdc_cohort
    waits = []
    with GDCServer(records, files) as srv:
        orig = srv.serve_query
        plan = [500, 429]

        def flaky(h, u):
            if plan:
                return srv.reply(h, plan.pop(0), headers={"Retry-After": "2"})
            return orig(h, u)

        srv.serve_query = flaky
        sheet = build_sample_sheet(gdc_opts(tmp_path, srv.url), tmp_path / "s.tsv", sleep=waits.append)
    assert len(sheet) == 8 and waits == [2.0, 2.0]


def test_gdc_wrong_api_url_and_no_hits_are_clear(tmp_path, gdc_cohort):
    records, files = gdc_cohort
    with GDCServer(records, files) as srv:
        with pytest.raises(UserError, match="no usable slides.*TCGA-XXXX"):
            build_sample_sheet(gdc_opts(tmp_path, srv.url, projects=["TCGA-XXXX"]), tmp_path / "s.tsv", sleep=NOSLEEP)
        with pytest.raises(UserError, match="HTTP 404"):
            build_sample_sheet(gdc_opts(tmp_path, srv.url + "/nothing-here"), tmp_path / "s.tsv", sleep=NOSLEEP)
    assert not (tmp_path / "s.tsv").exists()


def _download(sheet_path, o, slide_id, record=None, caplog=None):
    args = ["-q", "download", "--options", json.dumps(o), "--sheet", str(sheet_path), "--slide-id", slide_id]
    return main(args + (["--record", str(record)] if record else []))


@pytest.mark.parametrize("faults", [["drop"], ["corrupt"], ["500", "429"], ["drop", "norange"], ["shortlen"], ["html"]])
def test_gdc_download_survives_faults_byte_exact(tmp_path, gdc_cohort, faults, monkeypatch):
    monkeypatch.setattr("time.sleep", NOSLEEP)
    records, files = gdc_cohort
    fid = records[0]["file_id"]
    with GDCServer(records, files, faults={fid: faults}, content_md5=True) as srv:
        o = gdc_opts(tmp_path, srv.url)
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        row = sheet[sheet["file_id"] == fid].iloc[0]
        assert _download(tmp_path / "s.tsv", o, row["slide_id"], tmp_path / "rec.json") == 0
    out = tmp_path / "slides" / f"{row['slide_id']}.svs"
    assert out.read_bytes() == files[fid]
    assert json.loads((tmp_path / "rec.json").read_text())["md5"] == records[0]["md5sum"]
    assert sorted(p.name for p in (tmp_path / "slides").iterdir()) == [out.name]  # no .partial left


def test_gdc_path_traversal_name_cannot_escape(tmp_path, gdc_cohort, monkeypatch):
    records, files = gdc_cohort
    fid = records[1]["file_id"]
    with GDCServer(records, files, evil_names=[fid]) as srv:
        o = gdc_opts(tmp_path, srv.url)
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        sid = sheet.loc[sheet["file_id"] == fid, "slide_id"].iloc[0]
        assert _download(tmp_path / "s.tsv", o, sid) == 0
    assert (tmp_path / "slides" / f"{sid}.svs").read_bytes() == files[fid]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gdc_manifest.txt", "s.tsv", "slides"]
    assert [p.name for p in (tmp_path / "slides").iterdir()] == [f"{sid}.svs"]


def test_persistent_bad_file_fails_its_job_and_names_the_slide(tmp_path, gdc_cohort, monkeypatch, caplog):
    monkeypatch.setattr("time.sleep", NOSLEEP)
    records, files = gdc_cohort
    fid = records[0]["file_id"]
    with GDCServer(records, files, faults={fid: ["html"] * 10}) as srv:
        o = gdc_opts(tmp_path, srv.url)
        o["gdc"]["token_env"] = None
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        sid = sheet.loc[sheet["file_id"] == fid, "slide_id"].iloc[0]
        with caplog.at_level(logging.ERROR):
            assert _download(tmp_path / "s.tsv", o, sid) == 2
    assert sid in caplog.text and records[0]["md5sum"] in caplog.text
    assert not (tmp_path / "slides" / f"{sid}.svs").exists()


def test_token_is_sent_to_the_api_only_and_never_written(tmp_path, gdc_cohort, monkeypatch, caplog):
    monkeypatch.setattr("time.sleep", NOSLEEP)
    records, files = gdc_cohort
    fid = records[2]["file_id"]
    token = "SECRET-TOKEN-" + "x" * 40
    with GDCServer(records, files, token=token, controlled=[fid]) as srv:
        o = gdc_opts(tmp_path, srv.url)
        monkeypatch.delenv("GDC_TOKEN", raising=False)
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        sid = sheet.loc[sheet["file_id"] == fid, "slide_id"].iloc[0]
        with caplog.at_level(logging.DEBUG):
            assert _download(tmp_path / "s.tsv", o, sid) == 2  # no token: a clear 403 message
        assert "access denied (HTTP 403)" in caplog.text and "token" in caplog.text
        (tmp_path / "token.txt").write_text(token + "\n")
        o["gdc"]["token_file"] = str(tmp_path / "token.txt")
        with caplog.at_level(logging.DEBUG):
            assert _download(tmp_path / "s.tsv", o, sid, tmp_path / "rec.json") == 0
        monkeypatch.setenv("GDC_TOKEN", token)  # the environment variable works as well
        o["gdc"]["token_file"] = None
        (tmp_path / "slides" / f"{sid}.svs").unlink()
        assert _download(tmp_path / "s.tsv", o, sid) == 0
        sent = [r[3] for r in srv.requests if "/data/" in r[1]]
    assert sent[0] is None and sent[-1] == token and sent[-2] == token
    assert (tmp_path / "slides" / f"{sid}.svs").read_bytes() == files[fid]
    assert token not in caplog.text
    for p in tmp_path.rglob("*"):
        if p.is_file() and p.name != "token.txt":
            assert token.encode() not in p.read_bytes(), p
    assert gdc.auth_headers("https://elsewhere.example/data/x", o["gdc"]) == {}
    assert gdc.auth_headers(f"{srv.url}/data/x", o["gdc"]) == {"X-Auth-Token": token}


def test_missing_token_file_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="token_file .* does not exist"):
        gdc.read_token({"token_file": str(tmp_path / "nope.txt"), "token_env": None})


# -- GTEx ------------------------------------------------------------------------------------------
def gtex_annotations(ids_tissues):
    rows = ["SAMPID\tSMTS\tSMTSD\tSMATSSCR"]
    for sampid, tissue in ids_tissues:
        rows.append(f"{sampid}\t{tissue.split(' - ')[0]}\t{tissue}\t1")
    return "\n".join(rows) + "\n"


@pytest.fixture()
def gtex_setup(gdc_cohort):
    _, files = gdc_cohort
    datas = list(files.values())
    ids = [("GTEX-1117F-0126-SM-5GZZ7", "Lung"), ("GTEX-1117F-0126-SM-XXXX1", "Lung"),  # two aliquots, one slide
           ("GTEX-1122O-0326-SM-5GICA", "Lung"), ("GTEX-12WSD-0526-SM-1", "Lung"),
           ("GTEX-1117F-3226-SM-5N9CT", "Brain - Cortex"), ("GTEX-1128S-0126-SM-5Q5DQ", "Brain - Cortex"),
           ("GTEX-13FTZ-0011-R10a-SM-1", "Brain - Cortex"), ("GTEX-1A8G7-1226-SM-7", "Heart - Left Ventricle")]
    images = {"GTEX-1117F-0126": datas[0], "GTEX-1122O-0326": datas[1], "GTEX-1117F-3226": datas[3],
              "GTEX-1128S-0126": datas[4], "GTEX-13FTZ-0011": datas[5], "GTEX-1A8G7-1226": datas[2]}
    # GTEX-12WSD-0526 has no image on the server
    return gtex_annotations(ids), images


def test_gtex_selects_tissues_probes_sizes_and_replaces_missing_images(tmp_path, gtex_setup):
    ann, images = gtex_setup
    with GTExServer(images, ann) as srv:
        o = acquire_opts(tmp_path, source="gtex", gtex={"image_url": srv.url + "/images", "annotations": srv.url + "/annotations.txt",
                                                      "tissues": ["Lung", "Brain - Cortex"], "extra_fields": ["SMTS"]})
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        heads = [r for r in srv.requests if r[0] == "HEAD"]
    assert set(sheet["slide_id"]) == {"GTEX-1117F-0126", "GTEX-1122O-0326", "GTEX-1117F-3226", "GTEX-1128S-0126",
                                      "GTEX-13FTZ-0011"}
    assert len(heads) == 6  # every candidate probed once (the missing one answered 404)
    row = sheet.set_index("slide_id").loc["GTEX-1117F-3226"]
    assert row["label"] == "Brain - Cortex" and row["patient_id"] == "GTEX-1117F" and row["SMTS"] == "Brain"
    assert int(row["size"]) == len(images["GTEX-1117F-3226"]) and row["md5"] == ""
    # patient GTEX-1117F has a lung and a brain slide: one donor, two classes (the split keeps donors whole)
    assert sheet.groupby("patient_id")["label"].nunique()["GTEX-1117F"] == 2


def test_gtex_cap_and_bad_tissue(tmp_path, gtex_setup):
    ann, images = gtex_setup
    with GTExServer(images, ann) as srv:
        base = {"image_url": srv.url + "/images", "annotations": srv.url + "/annotations.txt"}
        o = acquire_opts(tmp_path, source="gtex", gtex=dict(base, tissues=["Lung", "Brain - Cortex"], max_slides_per_class=1))
        sheet = build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        assert sheet["label"].value_counts().to_dict() == {"Lung": 1, "Brain - Cortex": 1}
        assert build_sample_sheet(o, tmp_path / "s2.tsv", sleep=NOSLEEP)["slide_id"].tolist() == sheet["slide_id"].tolist()
        o = acquire_opts(tmp_path, source="gtex", gtex=dict(base, tissues=["Brain - Cortx"]))
        with pytest.raises(UserError, match="did you mean.*Brain - Cortex"):
            build_sample_sheet(o, tmp_path / "s3.tsv", sleep=NOSLEEP)


@pytest.mark.parametrize("faults", [["drop"], ["shortlen"], ["500"], ["html"]])
def test_gtex_download_checks_size_and_openslide_and_records_md5(tmp_path, gtex_setup, faults, monkeypatch):
    monkeypatch.setattr("time.sleep", NOSLEEP)
    ann, images = gtex_setup
    sid = "GTEX-1128S-0126"
    with GTExServer(images, ann, faults={sid: faults}) as srv:
        o = acquire_opts(tmp_path, source="gtex", gtex={"image_url": srv.url + "/images",
                                                      "annotations": srv.url + "/annotations.txt"})
        build_sample_sheet(o, tmp_path / "s.tsv", sleep=NOSLEEP)
        rec = tmp_path / "verified" / f"{sid}.svs.json"
        assert _download(tmp_path / "s.tsv", o, sid, rec) == 0
    assert (tmp_path / "slides" / f"{sid}.svs").read_bytes() == images[sid]
    r = json.loads(rec.read_text())
    assert r["md5"] == hashlib.md5(images[sid]).hexdigest() and r["md5_checked_against"].startswith("none published")
    # the verified sheet carries our MD5 for this slide (others: records written by hand here)
    sheet = pd.read_csv(tmp_path / "s.tsv", sep="\t", dtype=str, keep_default_na=False)
    recs = [rec]
    for _, row in sheet[sheet["slide_id"] != sid].iterrows():
        p = tmp_path / "verified" / f"{row['slide_id']}.json"
        p.write_text(json.dumps({"slide_id": row["slide_id"], "md5": "a" * 32, "size": row["size"],
                                 "md5_checked_against": "none published: recorded ours"}))
        recs.append(p)
    v = write_verified_sheet(tmp_path / "s.tsv", recs, tmp_path / "v.tsv").set_index("slide_id")
    assert v.loc[sid, "md5"] == r["md5"] and v.loc[sid, "size"] == str(len(images[sid]))


def test_verified_sheet_refuses_a_record_that_contradicts_the_published_md5(tmp_path):
    sheet = pd.DataFrame({"slide_id": ["a"], "patient_id": ["p"], "label": ["x"], "path": ["a.svs"], "md5": ["b" * 32],
                          "size": ["10"]})
    sheet.to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    (tmp_path / "a.json").write_text(json.dumps({"slide_id": "a", "md5": "c" * 32, "size": 10, "md5_checked_against": "published"}))
    with pytest.raises(UserError, match="disagree.*md5"):
        write_verified_sheet(tmp_path / "s.tsv", [tmp_path / "a.json"], tmp_path / "v.tsv")
    assert not (tmp_path / "v.tsv").exists()
