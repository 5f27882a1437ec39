"""The copy audit (histosynth.evaluate.copies, `histosynth audit-copies`): its statistics against
direct computations on small arrays, and its known answers on real tile stores: training tiles
presented as generated (as they are, mirrored, rotated, JPEG re-encoded) are flagged, held-out
patients' tiles are not."""
import io
import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from histosynth.evaluate import copies as C


def _brute_nearest(q, r):
    d = np.sqrt(((q[:, None, :] - r[None, :, :]) ** 2).sum(-1))
    return d.min(1), d.argmin(1)


def test_nearest_finds_exact_copies_among_features_with_a_large_common_part():
    rng = np.random.default_rng(0)
    train = 500.0 + rng.normal(0, 1e-3, (300, 64))  # large common part, tiny spread: rounding-prone
    q = np.concatenate([train[::7], 500.0 + rng.normal(0, 1e-3, (40, 64))])
    d, i = C.nearest(q, train, chunk=16)
    bd, bi = _brute_nearest(q, train)
    np.testing.assert_array_equal(i, bi)
    np.testing.assert_allclose(d, bd, rtol=1e-9, atol=1e-12)
    assert (d[: len(train[::7])] == 0).all()


def test_views_are_the_dihedral_group_and_the_nearest_view_is_found():
    rng = np.random.default_rng(1)
    tiles = rng.integers(0, 255, (5, 6, 6, 3), dtype=np.uint8)
    v = C.views(tiles, 8)
    assert len(v) == 8 and len({a.tobytes() for a in v}) == 8
    assert np.array_equal(v[1], tiles[:, :, ::-1]) and np.array_equal(v[2], np.rot90(tiles, 1, axes=(1, 2)))
    flat = [x.reshape(len(x), -1).astype(float) for x in v]
    train = flat[5]  # the training set holds the tiles in view 5
    d, i, view = C.nearest_over_views(flat, train)
    assert (d == 0).all() and (i == np.arange(5)).all() and (view == 5).all()


def test_mann_whitney_z_equals_the_pairwise_count():
    rng = np.random.default_rng(2)
    g = np.round(rng.normal(0, 1, 37), 1)  # rounded: ties
    h = np.round(rng.normal(0.3, 1, 23), 1)
    u = sum((a > b) + 0.5 * (a == b) for a in g for b in h)
    m, n = len(g), len(h)
    assert C.mann_whitney_z(g, h) == pytest.approx((u - m * n / 2) / np.sqrt(m * n * (m + n + 1) / 12), rel=1e-12)


def test_c_t_equals_a_direct_computation():
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(3)
    train = rng.normal(0, 1, (200, 5))
    held = rng.normal(0, 1, (120, 5))
    gen = np.concatenate([train[:30] + rng.normal(0, 0.01, (30, 5)), rng.normal(0, 1, (60, 5))])
    res = C.data_copying_ct(train, held, gen, cells=4, min_cell=5, dims=None, seed=0)
    km = KMeans(n_clusters=4, n_init=4, random_state=0).fit(train)  # the cells (Meehan: k-means on T)
    ct, ch, cg = km.labels_, km.predict(held), km.predict(gen)
    num = den = 0.0
    for c in range(4):
        t, h, g = train[ct == c], held[ch == c], gen[cg == c]
        if len(g) < 5 or not len(h):
            continue
        dg, dh = _brute_nearest(g, t)[0], _brute_nearest(h, t)[0]
        u = sum((a > b) + 0.5 * (a == b) for a in dg for b in dh)
        z = (u - len(g) * len(h) / 2) / np.sqrt(len(g) * len(h) * (len(g) + len(h) + 1) / 12)
        num, den = num + z * len(h) / len(held), den + len(h) / len(held)
    assert res["c_t"] == pytest.approx(num / den, rel=1e-9)
    assert res["c_t"] < 0  # 30 near-copies pull it below zero


def test_authenticity_equals_a_direct_computation():
    rng = np.random.default_rng(4)
    train = rng.normal(0, 1, (80, 3))
    gen = np.concatenate([train[:10] + 1e-4, rng.normal(0, 1, (30, 3))])
    d, i = C.nearest(gen, train)
    share, flags = C.authenticity(train, d, i)
    full = np.sqrt(((train[:, None] - train[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    own = full.min(1)
    bd, bi = _brute_nearest(gen, train)
    expect = bd > own[bi]
    np.testing.assert_array_equal(flags, expect)
    assert share == pytest.approx(expect.mean()) and not flags[:10].any()


def test_nn_test_binomial_and_verdict_on_known_answers():
    rng = np.random.default_rng(5)
    train = rng.normal(0, 1, (400, 8))
    held = rng.normal(0, 1, (300, 8))
    fresh = rng.normal(0, 1, (300, 8))
    t = C.nn_test(C.nearest(fresh, train)[0], C.nearest(held, train)[0])
    k = t["p1"]["count"]
    assert t["p1"]["p_value"] == pytest.approx(binomtest(k, 300, 0.01, alternative="greater").pvalue, rel=1e-9)
    copies = np.concatenate([train[:150] + rng.normal(0, 1e-3, (150, 8)), fresh[:150]])
    res_copy, tiles = C.audit_features(train, [copies], [held], opts={"cells": 5, "min_cell": 10})
    res_fresh, _ = C.audit_features(train, [fresh], [held], opts={"cells": 5, "min_cell": 10})
    assert tiles["below_p1"][:150].all() and tiles["below_p1"][150:].mean() < 0.05
    assert C.verdict({"x": res_copy})["verdict"] == "copying"
    assert C.verdict({"domain": res_copy})["verdict"] == "no evidence of copying"  # reported, not voting
    v = C.verdict({"x": res_fresh})
    assert v["verdict"] == "no evidence of copying" and v["thresholds"]["tests"] == 1
    assert res_copy["authenticity"]["generated"] < res_fresh["authenticity"]["generated"]


def test_off_class_tiles_are_not_taken_for_copies_and_class_copies_still_are():
    """A class of spread-out tiles (b: dense, high-contrast, far from one another in pixels) and a
    class of tiles close together (a: smooth, of another colour). Generated 'b' tiles that look
    like class a, as an under-fitted generator ignoring its condition makes them, lie nearer to a
    training tile (an a tile) than held-out b tiles do to theirs: measured against all training
    tiles, the class test takes them for copies. Measured against the class's own training tiles
    they are far; copies of b training tiles are flagged either way."""
    rng = np.random.default_rng(7)

    def tiles(n, label):
        return rng.normal(0, 0.2, (n, 16)) if label == "a" else rng.normal(10, 3.0, (n, 16))

    train = np.concatenate([tiles(200, "a"), tiles(200, "b")])
    tl = np.array(["a"] * 200 + ["b"] * 200)
    held = np.concatenate([tiles(100, "a"), tiles(100, "b")])
    hl = np.array(["a"] * 100 + ["b"] * 100)
    off = tiles(100, "a")  # presented as class b
    gl = np.array(["b"] * 100)
    opts = {"cells": 4, "min_cell": 10}
    before, before_tiles = C.audit_features(train, [off], [held], gl, hl, opts)
    assert before["per_class"]["b"]["p1"]["share"] > 0.5 and before["per_class"]["b"]["training"] == "all classes"
    assert C.verdict({"x": before})["verdict"] == "copying"  # the false alarm the class's training tiles avoid
    res, res_tiles = C.audit_features(train, [off], [held], gl, hl, opts, train_labels=tl)
    assert res["per_class"]["b"]["training"] == "class" and res["per_class"]["b"]["p1"]["share"] < 0.05
    # the searches per class give the same nearest training tiles over all classes as one search
    for k in ("distance", "nearest", "view"):
        np.testing.assert_array_equal(res_tiles[k], before_tiles[k])
    assert res["nearest_neighbour"] == before["nearest_neighbour"]
    copies = train[tl == "b"][:100] + rng.normal(0, 1e-3, (100, 16))
    res_copy, _ = C.audit_features(train, [copies], [held], gl, hl, opts, train_labels=tl)
    assert res_copy["per_class"]["b"]["p1"]["share"] == 1.0
    v = C.verdict({"x": res_copy})
    assert v["verdict"] == "copying" and any("training tile of the class" in r for r in v["reasons"])


@pytest.fixture(scope="module")
def audit_cohort(e2e_workdir, tmp_path_factory):
    """The end-to-end run's kept tiles with the patients re-partitioned: one patient per class as
    the GAN's training set, one per class as the held-out null (test), one per class presented as
    generated (val); and the training tiles as stores of copies, mirrored, rotated, JPEG-encoded."""
    from PIL import Image

    from histosynth.slides.store import TileStoreWriter, load_tiles, write_index

    d = tmp_path_factory.mktemp("audit")
    t = pd.read_parquet(e2e_workdir / "results/split/tiles.parquet")
    t = t[t["kept"]].assign(store=lambda x: [str(e2e_workdir / s) for s in x["store"]])  # paths from anywhere
    part = {"P000": "train", "P100": "train", "P001": "test", "P101": "test", "P002": "val", "P102": "val"}
    t = t.assign(partition=t["patient_id"].map(part))
    write_index(t, d / "tiles.parquet")
    train = t[t["partition"] == "train"]
    tiles = load_tiles(train)

    def jpeg(x):
        b = io.BytesIO()
        Image.fromarray(x).save(b, format="JPEG", quality=90)
        return np.asarray(Image.open(b).convert("RGB"))

    for name, f in {"copies": lambda x: x, "mirrored": lambda x: x[:, ::-1], "rotated": lambda x: np.rot90(x, 3),
                    "jpeg": jpeg}.items():
        with TileStoreWriter(d / f"{name}.tiff") as w:
            pages = [w.append(np.ascontiguousarray(f(x))) for x in tiles]
        write_index(train.assign(store=str(d / f"{name}.tiff"), page=pages), d / f"{name}.parquet")
    write_index(t[t["partition"] == "val"], d / "heldout.parquet")
    return d


def _audit(d, workdir, name, *extra):
    from histosynth.cli import main

    rc = main(["-q", "audit-copies", "--config", str(workdir / "config/config.yaml"), "--tiles", str(d / "tiles.parquet"),
               "--synthetic", str(d / f"{name}.parquet"), "--reference",
               str(workdir / "results/evaluate/reference_classifier.pt"), "--out", str(d / f"{name}.json"),
               "--flags", str(d / f"{name}.flags.parquet"), "--pairs", str(d / f"{name}.png"), *extra])
    assert rc == 0
    return json.loads((d / f"{name}.json").read_text()), pd.read_parquet(d / f"{name}.flags.parquet")


@pytest.mark.parametrize("name", ["copies", "mirrored", "rotated", "jpeg"])
def test_training_tiles_presented_as_generated_are_flagged(audit_cohort, e2e_workdir, name):
    res, flags = _audit(audit_cohort, e2e_workdir, name)
    assert res["verdict"]["verdict"] == "copying" and set(flags["extractor"]) == {"pixels", "domain"}
    share = flags.groupby("extractor")["below_p1"].mean()
    assert share["pixels"] >= 0.95, share
    if name != "jpeg":  # an exact copy in some view: distance 0 in every space
        assert share["domain"] >= 0.95 and (flags["distance"] == 0).all()
        # each copy found its own training tile
        src = pd.read_parquet(audit_cohort / f"{name}.parquet").reset_index(drop=True)
        orig = pd.read_parquet(audit_cohort / "tiles.parquet").loc[lambda t: t["partition"] == "train"]
        orig = orig.reset_index(drop=True)
        for ex, g in flags.groupby("extractor"):
            g = g.set_index("page").loc[src["page"]]
            same = (g["nearest_store"].to_numpy() == orig["store"].astype(str).to_numpy()) & (
                g["nearest_page"].to_numpy() == orig["page"].to_numpy())
            assert same.mean() >= 0.95, ex
    assert res["extractors"]["pixels"]["nearest_neighbour"]["p1"]["p_value"] < 1e-6
    assert (audit_cohort / f"{name}.png").stat().st_size > 1000


def test_heldout_patients_tiles_presented_as_generated_are_not_flagged(audit_cohort, e2e_workdir):
    res, flags = _audit(audit_cohort, e2e_workdir, "heldout")
    assert res["verdict"]["verdict"] == "no evidence of copying", res["verdict"]["text"]
    assert flags.groupby("extractor")["below_p1"].mean().max() <= 0.05
    assert res["n"]["heldout_patients"] == 2 and res["n"]["training_patients"] == 2
    for ex in ("pixels", "domain"):
        assert res["extractors"][ex]["data_copying"]["c_t"] > -3


def test_audit_refuses_a_null_of_one_patient_or_overlapping_partitions(audit_cohort, e2e_workdir, caplog):
    from histosynth.cli import main

    t = pd.read_parquet(audit_cohort / "tiles.parquet")
    t.loc[t["patient_id"] == "P101", "partition"] = "train"
    t.to_parquet(audit_cohort / "one.parquet")
    base = ["-q", "audit-copies", "--config",
            str(e2e_workdir / "config/config.yaml"), "--synthetic", str(audit_cohort / "copies.parquet"),
            "--reference", str(e2e_workdir / "results/evaluate/reference_classifier.pt"),
            "--out", str(audit_cohort / "x.json")]
    assert main(base + ["--tiles", str(audit_cohort / "one.parquet")]) == 2
    assert "1 patient(s)" in caplog.text and "min_null_patients" in caplog.text
    assert main(base + ["--tiles", str(audit_cohort / "tiles.parquet"), "--heldout-partitions", "train"]) == 2
    assert "never saw" in caplog.text
    assert not (audit_cohort / "x.json").exists()
