"""Property-based tests (hypothesis) of every parser that reads a file or a request from someone
else: manifest and sample sheet, QuPath GeoJSON, expression matrices (GCT, CSV, STAR), PanNuke
folds, stylegan2-ada pickles and the drawing server's JSON. Whatever the input, the outcome is a
result or a UserError (a 4xx for the server): never another exception, a hang or a dropped
connection. Each test is bounded in examples and time (pytest-timeout)."""
import json
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from histosynth.utils import UserError

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

# cells that are near what the parsers expect, and cells that are not
CELL = st.one_of(st.sampled_from(["S1", "S-2", "P1", "tumor", "normal", "x.svs", "/tmp/none.svs", "http://[::1",
                                  "file:///dev/null", "d41d8cd98f00b204e9800998ecf8427e", "12", "-3", "NaN", "",
                                  "../x", "a\\tb", "Ω", "1e999", '"quoted"']),
                 st.text(max_size=12))
HEADER = st.lists(st.sampled_from(["slide_id", "patient_id", "label", "path", "url", "md5", "size", "mpp", "site",
                                   "slide_id", ""]) | st.text(max_size=6), min_size=0, max_size=8)


def _table(header, rows, sep="\t"):
    return "\n".join(sep.join(r) for r in [header, *rows]) + "\n"


@pytest.mark.timeout(120)
@FUZZ
@given(header=HEADER, rows=st.lists(st.lists(CELL, max_size=8), max_size=6), raw=st.binary(max_size=64),
       use_raw=st.booleans())
def test_manifest_and_sample_sheet_give_a_table_or_a_user_error(tmp_path_factory, header, rows, raw, use_raw):
    from histosynth.acquire.manifest import read_manifest, read_sample_sheet

    p = tmp_path_factory.mktemp("m") / "manifest.tsv"
    if use_raw:
        p.write_bytes(raw)
    else:
        p.write_text(_table(header, rows))
    for reader in (read_manifest, read_sample_sheet):
        try:
            out = reader(p)
        except UserError as exc:
            assert str(p) in str(exc)
        else:
            assert {"slide_id", "patient_id", "label"} <= set(out.columns)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
NUMBER = st.one_of(st.floats(-1e6, 1e6), st.integers(-10, 10**6))
POINT = st.one_of(st.lists(NUMBER, min_size=2, max_size=3),  # mostly well-formed points, some not
                  st.lists(st.one_of(NUMBER, st.just(float("nan")), st.text(max_size=3), st.none(), st.booleans()),
                           max_size=3))
RING = st.lists(POINT, min_size=0, max_size=6)
POLYGON = st.lists(RING, min_size=1, max_size=3)
FEATURE = st.fixed_dictionaries({
    "type": st.just("Feature"),
    "geometry": st.one_of(
        st.fixed_dictionaries({"type": st.just("Polygon"), "coordinates": POLYGON | JSON}),
        st.fixed_dictionaries({"type": st.just("MultiPolygon"), "coordinates": st.lists(POLYGON, max_size=2) | JSON}),
        st.fixed_dictionaries({"type": st.sampled_from(["Point", "LineString"]), "coordinates": JSON}), JSON),
    "properties": st.one_of(
        st.fixed_dictionaries({"classification": st.fixed_dictionaries({"name": st.just("tumor")})}),
        st.fixed_dictionaries({"classification": st.just("tumor") | JSON}), JSON)})


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=150)
@given(doc=st.one_of(st.lists(FEATURE, max_size=4), st.fixed_dictionaries({"type": st.just("FeatureCollection"),
                                                                            "features": st.lists(FEATURE, max_size=4) | JSON}),
                     JSON))
def test_geojson_gives_shapes_or_a_user_error(tmp_path_factory, doc):
    from histosynth.masks.geojson import rasterise, read_annotations
    from histosynth.masks.labels import LabelSet

    labels = LabelSet.from_config([{"name": "background", "color": "#000000"}, {"name": "tumor", "color": "#ff0000"}])
    p = tmp_path_factory.mktemp("g") / "S1.geojson"
    p.write_text(json.dumps(doc))
    try:
        shapes = read_annotations(p, labels)
    except UserError as exc:
        assert str(p) in str(exc)
        return
    rasterise(shapes, 0.0, 0.0, 1.0, 8)  # what it read can be drawn


@pytest.mark.timeout(120)
@FUZZ
@given(fmt=st.sampled_from(["gct", "csv", "star"]), lines=st.lists(st.lists(CELL, max_size=5), max_size=6),
       head=st.sampled_from(["#1.2\n2 2\nName\tDescription\tS1\tS2\n", "#1.2\n", "", "sample,G1,G2\n",
                             "gene_id\tgene_name\ttpm_unstranded\n"]),
       sep=st.sampled_from(["\t", ","]))
def test_expression_matrices_give_finite_values_or_a_user_error(tmp_path_factory, fmt, lines, head, sep):
    from histosynth.expression.io import read_matrix

    d = tmp_path_factory.mktemp("e")
    body = head + "".join(sep.join(r) + "\n" for r in lines)
    if fmt == "star":  # a manifest naming one counts file with the fuzzed body
        (d / "counts.tsv").write_text(body)
        p = d / "star.tsv"
        p.write_text("sample_id\tpath\nS1\tcounts.tsv\nS2\tmissing.tsv\n")
    else:
        p = d / f"m.{fmt}"
        p.write_text(body)
    try:
        values, genes = read_matrix(p, fmt)
    except UserError as exc:
        assert "m." in str(exc) or "star.tsv" in str(exc) or "counts.tsv" in str(exc) or "missing.tsv" in str(exc)
        return
    assert np.isfinite(values.to_numpy(np.float32)).all()


ARRAY = st.builds(lambda shape, dtype, fill: np.full(shape, fill).astype(dtype),
                  st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple),
                  st.sampled_from(["float32", "uint8", "int64", "bool", "U5", "complex64"]),
                  st.sampled_from([0, 1, 255]))


@pytest.mark.timeout(180)
@settings(FUZZ, max_examples=40)
@given(images=ARRAY, masks=ARRAY, types=ARRAY | st.just(np.array(["Breast", "Colon"])),
       object_types=st.booleans())
def test_pannuke_folds_import_or_give_a_user_error(tmp_path_factory, images, masks, types, object_types):
    from histosynth.masks.pannuke import import_pannuke

    d = tmp_path_factory.mktemp("p")
    fold = d / "fold"
    fold.mkdir()
    np.save(fold / "images.npy", images)
    np.save(fold / "masks.npy", masks)
    np.save(fold / "types.npy", types.astype(object) if object_types else types, allow_pickle=True)
    try:
        index = import_pannuke({"f1": {"path": str(fold), "partition": "train"}}, d / "out", progress=False)
    except UserError as exc:
        assert "f1" in str(exc)
        return
    assert len(index) == len(images)


ATTRS = ["img_resolution", "z_dim", "w_dim", "c_dim", "num_layers", "img_channels", "architecture", "use_noise",
         "conv_clamp", "group_size", "num_channels", "cmap_dim", "resolution", "in_channels", "out_channels"]
VALUE = st.one_of(st.integers(-5, 5), st.sampled_from([0, 3, 24, 4096, 2**31, 10**15, -2**40]), st.text(max_size=6),
                  st.none(), st.booleans(), st.floats(allow_nan=True))
EDIT = st.one_of(
    st.tuples(st.just("attr"), st.floats(0, 1), st.sampled_from(ATTRS), VALUE),
    st.tuples(st.just("rename"), st.floats(0, 1), st.sampled_from(["b1000000000000", "b3", "b0", "bx", "b", "input",
                                                                    "b16", "b8", "zz", "torgb"]), st.none()),
    st.tuples(st.just("drop"), st.floats(0, 1), st.none(), st.none()))


def _edited_snapshot(path, edits):
    """The reference snapshot with modules' hyper-parameters set to fuzzed values, children
    renamed or dropped: what a crafted or corrupt pickle's records look like once unpickled."""
    import copy

    from test_stylegan2_import import reference_networks, write_snapshot

    G, D = (copy.deepcopy(n) for n in reference_networks())
    nets = [G, D]
    for op, where, name, value in edits:
        mods = [m for n in nets for m in n.modules()]
        m = mods[int(where * (len(mods) - 1))]
        if op == "attr":
            object.__setattr__(m, name, value)
        elif m._modules:
            key = sorted(m._modules)[int(where * 997) % len(m._modules)]
            child = m._modules.pop(key)
            if op == "rename":
                m._modules[name] = child
    write_snapshot(path, G, D)


@pytest.mark.timeout(300)
@settings(FUZZ, max_examples=80)
@given(edits=st.lists(EDIT, min_size=1, max_size=3), cut=st.floats(0, 1), noise=st.binary(max_size=256),
       mode=st.sampled_from(["records", "records", "cut", "noise"]))
def test_stylegan2_pickles_import_or_give_a_user_error(tmp_path_factory, edits, cut, noise, mode):
    """Fuzzed records (sizes, names, types), truncations and noise: a network or a refusal
    naming the file, in bounded time and memory. The reader may never run code: any global
    beyond its list is refused by name."""
    import resource

    from histosynth.gan.imports import import_stylegan2

    p = tmp_path_factory.mktemp("k") / "net.pkl"
    if mode == "records":
        _edited_snapshot(p, edits)
    else:
        _edited_snapshot(p, [])
        data = p.read_bytes()
        p.write_bytes(data[:int(cut * len(data))] if mode == "cut" else b"\x80\x04" + noise)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        ck = import_stylegan2(p)
    except UserError as exc:
        assert str(p) in str(exc)
    else:
        assert ck["G_ema"] and ck["options"]["resolution"] >= 8
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB: no network-sized blow-up


@pytest.fixture(scope="module")
def class_server(tmp_path_factory):
    from test_draw import write_class_network

    from histosynth.draw.server import make_server

    path = write_class_network(tmp_path_factory.mktemp("fuzzsrv") / "stylegan2-class" / "network.pt")
    srv = make_server([path], port=0, max_concurrent=4, timeout=5)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


REQUEST = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "network": st.one_of(st.integers(-3, 3), st.text(max_size=3), st.floats(), JSON),
    "condition": st.one_of(st.sampled_from(["normal", "tumor"]), JSON),
    "blend_to": st.one_of(st.sampled_from(["normal", "tumor"]), JSON),
    "t": st.one_of(st.floats(), st.integers(), JSON), "psi": st.one_of(st.floats(), st.integers(), JSON),
    "seed": st.one_of(st.integers(-2**70, 2**70), st.floats(), JSON),
    "map": st.one_of(st.just("data:image/png;base64,iVBORw0KGgo="), st.text(max_size=20), JSON)}))


@pytest.mark.timeout(180)
@FUZZ
@given(req=REQUEST, route=st.sampled_from(["/api/class", "/api/generate"]), raw=st.binary(max_size=40),
       use_raw=st.booleans())
def test_drawing_server_answers_every_request_with_a_status(class_server, req, route, raw, use_raw):
    import urllib.error
    import urllib.request

    body = raw if use_raw else json.dumps(req, allow_nan=True).encode()
    r = urllib.request.Request(class_server + route, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(r, timeout=30) as resp:
            code, payload = resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        code, payload = e.code, json.loads(e.read())
    assert code in (200, 400, 503), (code, payload)
    assert ("tile" in payload) if code == 200 else ("error" in payload)
