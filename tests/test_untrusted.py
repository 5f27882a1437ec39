"""Files and servers histosynth does not control: nothing from them runs, no token leaves its
host, nothing hangs or grows without bound, and every bad input ends in one clear message."""
import hashlib
import os

import numpy as np
import pytest
from httpfaults import FaultServer

from histosynth.utils import UserError

DATA = os.urandom(200_000)
MD5 = hashlib.md5(DATA).hexdigest()
TOKEN = "SECRET-TOKEN-" + "t" * 40


# -- PanNuke folds: never unpickled ----------------------------------------------------------------

class _Payload:
    """An object whose unpickling runs a shell command (what a hostile types.npy carries)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pannuke_fold(d, types):
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    np.save(d / "images.npy", rng.uniform(0, 255, (2, 16, 16, 3)).astype(np.float32))
    np.save(d / "masks.npy", np.zeros((2, 16, 16, 6), np.float32))
    np.save(d / "types.npy", types, allow_pickle=True)
    return d


def test_pannuke_types_with_a_pickle_payload_do_not_run(tmp_path):
    from histosynth.masks.pannuke import import_pannuke

    marker = tmp_path / "PWNED"
    types = np.empty(2, object)
    types[0], types[1] = _Payload(marker), "Breast"
    fold = _pannuke_fold(tmp_path / "f1", types)
    with pytest.raises(UserError, match="never unpickles") as e:
        import_pannuke({"fold1": {"path": str(fold), "partition": "train"}}, tmp_path / "out", progress=False)
    assert "types.npy" in str(e.value) and "fold1" in str(e.value)
    assert not marker.exists()


def test_pannuke_string_types_import(tmp_path):
    from histosynth.masks.pannuke import import_pannuke

    fold = _pannuke_fold(tmp_path / "f1", np.array(["Breast", "Colon"]))
    index = import_pannuke({"fold1": {"path": str(fold), "partition": "train"}}, tmp_path / "out", progress=False)
    assert index["label"].tolist() == ["Breast", "Colon"]


@pytest.mark.parametrize("name", ["../up", "a/b", ".hidden", ""])
def test_pannuke_fold_names_that_are_paths_are_refused(tmp_path, name):
    from histosynth.masks.pannuke import import_pannuke

    fold = _pannuke_fold(tmp_path / "f1", np.array(["Breast", "Colon"]))
    with pytest.raises(UserError, match="masks.pannuke.folds: fold name"):
        import_pannuke({name: {"path": str(fold), "partition": "train"}}, tmp_path / "out", progress=False)
    assert not list(tmp_path.glob("**/pannuke-*"))


def test_pannuke_fold_names_are_bounded_by_the_schema():
    from histosynth.config import validate

    with pytest.raises(UserError, match="folds"):
        validate({"masks": {"pannuke": {"folds": {"a/b": {"path": "x", "partition": "train"}}}}})


# -- The GDC token stays with the API ---------------------------------------------------------------

def test_token_is_not_sent_to_the_host_a_redirect_names(tmp_path):
    from histosynth.acquire.download import fetch
    from histosynth.acquire.gdc import auth_headers

    with FaultServer({"s.svs": DATA}) as other, \
            FaultServer({}, redirects={"f1": f"{other.url.replace('127.0.0.1', 'localhost')}/data/s.svs"}) as api:
        o = {"api_url": api.url, "token_file": None, "token_env": "HS_TEST_TOKEN"}
        os.environ["HS_TEST_TOKEN"] = TOKEN
        try:
            headers = auth_headers(f"{api.url}/data/f1", o)
        finally:
            del os.environ["HS_TEST_TOKEN"]
        assert headers == {"X-Auth-Token": TOKEN}
        fetch(f"{api.url}/data/f1", tmp_path / "s.svs", md5=MD5, headers=headers, progress=False,
              sleep=lambda s: None)
        api_seen, other_seen = [r[3] for r in api.requests], [r[3] for r in other.requests]
    assert (tmp_path / "s.svs").read_bytes() == DATA
    assert api_seen == [TOKEN]  # the API itself got it
    assert other_seen == [None]  # the host it redirected to did not


def test_token_follows_a_redirect_within_the_api_and_range_survives(tmp_path):
    from histosynth.acquire.download import fetch

    (tmp_path / "s.svs.partial").write_bytes(DATA[:1000])
    with FaultServer({"s.svs": DATA}, redirects={"f1": "/data/s.svs"}, token=TOKEN, controlled=["s.svs"]) as api:
        fetch(f"{api.url}/data/f1", tmp_path / "s.svs", md5=MD5, headers={"X-Auth-Token": TOKEN}, progress=False,
              sleep=lambda s: None)
        seen = api.requests
    assert [r[3] for r in seen] == [TOKEN, TOKEN]
    assert [r[2] for r in seen] == ["bytes=1000-", "bytes=1000-"]
    assert (tmp_path / "s.svs").read_bytes() == DATA


def test_redirect_loops_and_odd_schemes_end_in_a_message(tmp_path):
    from histosynth.acquire.download import DownloadError, fetch

    with FaultServer({}, redirects={"a": "/data/b", "b": "/data/a", "f": "file:///etc/passwd"}) as srv:
        with pytest.raises(DownloadError, match="redirects"):
            fetch(f"{srv.url}/data/a", tmp_path / "a.svs", progress=False, sleep=lambda s: None)
        with pytest.raises(DownloadError, match="not an http"):
            fetch(f"{srv.url}/data/f", tmp_path / "f.svs", progress=False, sleep=lambda s: None)
    assert not list(tmp_path.iterdir())


def test_origin_compares_scheme_host_and_port():
    from histosynth.acquire.http import origin

    assert origin("https://api.gdc.cancer.gov/data/x") == origin("https://API.gdc.cancer.gov:443/files")
    assert origin("https://api.gdc.cancer.gov/") != origin("http://api.gdc.cancer.gov/")
    assert origin("https://api.gdc.cancer.gov/") != origin("https://api.gdc.cancer.gov:8443/")
    assert origin("https://api.gdc.cancer.gov/") != origin("https://api.gdc.cancer.gov.evil.org/")


# -- StyleGAN2 pickles: every size bounded before anything is built ---------------------------------

def _crafted(tmp_path, name, edit):
    """A stylegan2-ada snapshot of the reference network, edited by `edit(G)` before pickling."""
    import copy

    from test_stylegan2_import import reference_networks, write_snapshot

    G, D = reference_networks()
    G = copy.deepcopy(G)
    edit(G)
    path = tmp_path / name
    write_snapshot(path, G, None)
    return path


@pytest.mark.timeout(60)
def test_a_pickle_naming_a_huge_block_is_refused_at_once(tmp_path):
    from histosynth.gan.imports import import_stylegan2

    def rename(G):
        G.synthesis._modules["b1000000000000"] = G.synthesis._modules.pop("b8")

    with pytest.raises(UserError, match="b1000000000000"):
        import_stylegan2(_crafted(tmp_path, "block.pkl", rename))


@pytest.mark.parametrize("attr,value,where", [("w_dim", 4096, "w_dim = 4096"), ("z_dim", 0, "z_dim = 0"),
                                              ("img_resolution", 1 << 20, "img_resolution"),
                                              ("img_resolution", 24, "power of two"),
                                              ("c_dim", "two", "not an integer")])
def test_pickle_sizes_out_of_bounds_are_refused_before_building(tmp_path, attr, value, where):
    import tracemalloc

    from histosynth.gan.imports import import_stylegan2

    path = _crafted(tmp_path, "dims.pkl", lambda G: setattr(G, attr, value))
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match=where):
            import_stylegan2(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing network-sized was allocated


def test_pickle_channel_counts_are_bounded(tmp_path):
    import torch

    from histosynth.gan.imports import import_stylegan2

    def widen(G):  # 2000 output channels (a small tensor: 1 x 1 kernels of one input channel)
        conv = G.synthesis.b8.conv1
        conv._parameters["weight"] = torch.nn.Parameter(torch.zeros(2000, 1, 1, 1), requires_grad=False)

    with pytest.raises(UserError, match="channels; at most 1024"):
        import_stylegan2(_crafted(tmp_path, "wide.pkl", widen))


def test_a_persistent_object_built_without_init_gets_the_same_refusal(tmp_path):
    """NEWOBJ of the persistent class (no __init__, no checks) and BUILD over a built record."""
    from histosynth.gan.imports import import_stylegan2

    glob = b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"
    key = b"X\x05\x00\x00\x00G_ema"
    newobj = b"\x80\x02}(" + key + glob + b")\x81u."
    meta = b"}(X\x04\x00\x00\x00typeX\x05\x00\x00\x00classX\x05\x00\x00\x00state}u"
    build = b"\x80\x02}(" + key + glob + b"(" + meta + b"tR}(X\x05\x00\x00\x00stateK\x05ubu."
    for name, data in (("newobj.pkl", newobj), ("build.pkl", build)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UserError, match=name) as e:
            import_stylegan2(tmp_path / name)
        assert "not a readable stylegan2-ada network pickle" in str(e.value) or "rewrites" in str(e.value)


# -- A resumed run is the run asked for -------------------------------------------------------------

def test_a_checkpoint_of_other_settings_or_tiles_is_not_resumed(tmp_path):
    import json

    import torch
    from test_gan import tiny_opts
    from toydata import toy_index

    from histosynth.gan.checkpoint import load
    from histosynth.gan.training.loop import train
    from histosynth.utils import md5_of

    index, _, _ = toy_index(tmp_path, 16)
    run = tmp_path / "run"
    train(index, run, tiny_opts(kimg=0.2), progress=False)
    before = md5_of(run / "checkpoint.pt"), md5_of(run / "network.pt")
    with pytest.raises(UserError, match=r"gan\.lr_g 0\.003 -> 0\.01.*rm .*checkpoint\.pt"):
        train(index, run, tiny_opts(kimg=0.4, lr_g=0.01), progress=False)
    with pytest.raises(UserError, match=r"gan\.channel_max 32 -> 16; gan\.seed 0 -> 1"):
        train(index, run, tiny_opts(kimg=0.4, seed=1, channel_max=16), progress=False)
    with pytest.raises(UserError, match=r"the training tiles \(32 tiles then, 30 now"):
        train(index.drop(index.index[:2]), run, tiny_opts(kimg=0.4), progress=False)
    relabelled = index.assign(label=index["label"].map({"dark": "light", "light": "dark"}))
    with pytest.raises(UserError, match="training tiles"):
        train(relabelled, run, tiny_opts(kimg=0.4), progress=False)
    with pytest.raises(UserError, match="is at 0.208 kimg, beyond gan.kimg 0.1"):
        train(index, run, tiny_opts(kimg=0.1), progress=False)
    assert (md5_of(run / "checkpoint.pt"), md5_of(run / "network.pt")) == before  # nothing was touched

    # length, reporting and snapshot intervals may change: the run goes on from its checkpoint
    train(index, run, tiny_opts(kimg=0.4, tick_kimg=0.05, snap_kimg=0.1), progress=False)
    ck = load(run / "network.pt")
    assert ck["cur_nimg"] == 400 and ck["run_identity"]["n_tiles"] == 32
    assert json.loads((run / "training_options.json").read_text())["resumed_from_kimg"] == 0.208
    train(index, run, tiny_opts(kimg=0.4), progress=False)  # a finished run asked again: nothing to do

    # a checkpoint written before a gan key existed resumes when the key is at its default, not otherwise
    older = {k: v for k, v in ck["run_identity"]["options"].items() if k not in ("beta1", "beta2")}
    torch.save(dict(ck, run_identity=dict(ck["run_identity"], options=older)), run / "checkpoint.pt")
    with pytest.raises(UserError, match=r"gan\.beta1 '\(unset\)' -> 0\.5"):
        train(index, run, tiny_opts(kimg=0.5, beta1=0.5), progress=False)
    train(index, run, tiny_opts(kimg=0.5), progress=False)
    assert load(run / "network.pt")["cur_nimg"] >= 500

    # a checkpoint that does not say what it belongs to is not resumed blindly
    del ck["run_identity"]
    torch.save(ck, run / "checkpoint.pt")
    with pytest.raises(UserError, match="does not record which options"):
        train(index, run, tiny_opts(kimg=0.6), progress=False)


# -- Names that would share a file ------------------------------------------------------------------

@pytest.mark.parametrize("names,clash", [(["LUAD 1", "LUAD_1"], "'LUAD 1' and 'LUAD_1'"),
                                         (["luad", "LUAD"], "'luad' and 'LUAD'"), (["A", "A"], "'A' and 'A'"),
                                         (["//", "x"], "no letter or digit")])
def test_generated_sets_whose_names_share_a_file_are_refused(tmp_path, names, clash):
    from histosynth.generate.sample import generate_sets

    sets = [{"name": n, "c": [[1.0]], "seeds": [0, 1]} for n in names]
    with pytest.raises(UserError, match=clash):
        generate_sets(None, sets, tmp_path / "gen", tmp_path / "network.pt")
    assert not list((tmp_path / "gen").iterdir())  # refused before anything was written


def test_vector_csv_with_clashing_names_is_refused(tmp_path):
    import pandas as pd

    from histosynth.gan.conditioning import ConditioningSpec
    from histosynth.generate.sample import check_set_names, vector_sets

    csv = tmp_path / "v.csv"
    pd.DataFrame({"name": ["LUAD 1", "LUAD_1"], "a": [0.1, 0.9]}).to_csv(csv, index=False)
    sets = vector_sets(ConditioningSpec("vector", ["a"]), csv, 2, 0)
    with pytest.raises(UserError, match="same file"):
        check_set_names([s["name"] for s in sets])


def test_gdc_ids_and_duplicate_suffixes_are_file_safe(tmp_path):
    from histosynth.acquire.gdc import hits_to_sheet
    from histosynth.acquire.manifest import write_sample_sheet
    from histosynth.config import validate

    o = validate({"acquire": {"gdc": {"api_url": "http://127.0.0.1:1", "max_slides_per_class": None}}})["acquire"]["gdc"]

    def hit(fid, name):
        return {"file_id": fid, "file_name": name, "md5sum": "0" * 32, "file_size": 1,
                "cases": [{"submitter_id": "TCGA-05-0001", "project": {"project_id": "TCGA-LUAD"}}]}

    hits = [hit("../../../../etc/x", "TCGA-05-0001-01Z-00-DX1.a.svs"), hit("abcdefgh-1", "TCGA-05-0001-01Z-00-DX1.b.svs")]
    df = hits_to_sheet(hits, o)
    sheet = write_sample_sheet(df, tmp_path / "slides", tmp_path / "slides.tsv")
    for sid, path, src in zip(sheet["slide_id"], sheet["path"], sheet["source"]):
        assert "/" not in sid and ".." not in sid
        assert (tmp_path / "slides").resolve() in (tmp_path / path).resolve().parents
        assert "/data/" in src and "/etc/" not in src  # the file id is one path segment
    assert len(set(sheet["slide_id"])) == 2


def test_gtex_sample_ids_that_are_paths_are_refused_at_the_sample_sheet(tmp_path):
    import pandas as pd

    from histosynth.acquire import gtex
    from histosynth.acquire.manifest import write_sample_sheet
    from histosynth.config import validate

    o = validate({"acquire": {"gtex": {"tissues": ["Lung"], "max_slides_per_class": None}}})["acquire"]["gtex"]
    ann = pd.DataFrame({"SAMPID": ["GTEX-1117F-0126-SM-1", "GTEX-..-..%2F..%2Fetc-SM-2", "GTEX-A/../..-B-SM-3"],
                        "SMTSD": ["Lung"] * 3})
    df = gtex.candidates(ann, o)
    with pytest.raises(UserError, match="slide id.*cannot be used") as e:
        write_sample_sheet(df, tmp_path / "slides", tmp_path / "slides.tsv")
    assert "GTEX-A/../.." in str(e.value)
    assert not (tmp_path / "slides.tsv").exists()
    ok = df[df["slide_id"] == "GTEX-1117F-0126"]
    assert write_sample_sheet(ok, tmp_path / "slides", tmp_path / "slides.tsv")["slide_id"].tolist() == ["GTEX-1117F-0126"]


def test_a_sample_sheet_with_clashing_or_unsafe_ids_is_refused_when_read(tmp_path):
    from histosynth.acquire.manifest import read_sample_sheet

    for ids, msg in ((["S1", "s1"], "clash"), (["../x", "S2"], "cannot be used"), (["S1 ", "S2"], "cannot be used")):
        p = tmp_path / "sheet.tsv"
        p.write_text("slide_id\tpatient_id\tlabel\tpath\n" + "".join(f"{i}\tP\tL\tx\n" for i in ids))
        with pytest.raises(UserError, match=msg):
            read_sample_sheet(p)


# -- GeoJSON from QuPath (or anyone): one message naming the file and feature -----------------------

def _labels():
    from histosynth.masks.labels import LabelSet

    return LabelSet.from_config([{"name": "background", "color": "#000000"}, {"name": "tumor", "color": "#ff0000"}])


def _feature(coords, gtype="Polygon", **props):
    return {"type": "Feature", "id": "obj-7", "geometry": {"type": gtype, "coordinates": coords},
            "properties": {"classification": {"name": "tumor"}, **props}}


@pytest.mark.parametrize("doc,msg", [
    ('{"type": "FeatureCollection", "features": [FEATURE]}'.replace(
        "FEATURE", '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 1], [1, 1]]]}, '
                   '"properties": {"classification": {"name": "tumor"}}}'), "NaN is not a number GeoJSON allows"),
    ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1e999, 1], [1, 1]]]}, '
     '"properties": {"classification": {"name": "tumor"}}}]', "not finite"),
    ([_feature(None)], r"feature 0 \(obj-7\): polygon coordinates must be a list"),
    ([_feature([[[0, 0], ["10", 1], [1, 1]]])], r"feature 0 \(obj-7\): coordinates must be numbers \(found '10'\)"),
    ([_feature([[[0, 0], [1], [1, 1]]])], "a ring must be a list of"),
    ([_feature([[0, 0]], "MultiPolygon")], "polygon coordinates must be a list of rings|a ring must be"),
    ([_feature(5, "MultiPolygon")], "MultiPolygon coordinates must be a list"),
    ([{"type": "Feature", "geometry": "x", "properties": {"classification": {"name": "tumor"}}}], "'geometry' must be"),
    ([{"type": "Feature", "properties": {"classification": {"name": ["tumor"]}}}], "is not a class name"),
    ([3], "feature 0: a Feature must be a JSON object"),
    ({"type": "FeatureCollection", "features": {"a": 1}}, "'features' is a dict"),
    ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ("{not json", "is not GeoJSON"),
])
def test_bad_geojson_is_one_message_naming_file_and_feature(tmp_path, doc, msg):
    import json

    from histosynth.masks.geojson import read_annotations

    p = tmp_path / "S1.geojson"
    p.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    with pytest.raises(UserError, match=msg) as e:
        read_annotations(p, _labels())
    assert str(p) in str(e.value)


def test_good_geojson_with_hole_and_multipolygon_reads():
    import json
    import tempfile
    from pathlib import Path

    from histosynth.masks.geojson import rasterise, read_annotations

    ring = [[0, 0], [8, 0], [8, 8], [0, 8], [0, 0]]
    hole = [[2, 2], [6, 2], [6, 6], [2, 6], [2, 2]]
    doc = {"type": "FeatureCollection", "features": [_feature([ring, hole]),
                                                    _feature([[[[10, 10], [12, 10], [12, 12], [10, 10]]]], "MultiPolygon")]}
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "S1.geojson"
        p.write_text(json.dumps(doc))
        shapes = read_annotations(p, _labels())
    assert len(shapes) == 2 and shapes[0].area == 64 - 16
    m = rasterise(shapes, 0, 0, 1.0, 8)
    assert m[0, 0] == 1 and m[4, 4] == 0 and m.sum() == 64 - 16


# -- Durability: fsync before the rename, the folder after it ---------------------------------------

def test_atomic_path_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    import os

    from histosynth.utils import atomic_path

    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", target))
        return real_fsync(fd)

    def replace(a, b):
        events.append(("replace", str(b)))
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    out = tmp_path / "sub" / "result.json"
    with atomic_path(out) as tmp:
        tmp.write_text("{}")
    kinds = [(k, os.path.basename(t)) for k, t in events]
    i = kinds.index(("replace", "result.json"))
    assert any(k == "fsync" and n.startswith(".result.json.") for k, n in kinds[:i])  # the data, before its name
    assert ("fsync", "sub") in kinds[i + 1:]  # the name, after the rename
    assert out.read_text() == "{}"


def test_download_fsyncs_before_renaming_into_place(tmp_path, monkeypatch):
    import os

    from histosynth.acquire.download import fetch

    events = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    src = tmp_path / "src.svs"
    src.write_bytes(DATA)
    fetch(str(src), tmp_path / "slides" / "s.svs", md5=MD5, progress=False)
    assert [os.path.basename(e) for e in events] == ["s.svs.partial", "slides"]
