"""Multi-attribute (AttributeGAN) and continuous-vector conditioning end to end at stage level:
training, generation (every combination; patient vectors or a CSV), FID per attribute value,
the classifier target, attribute interpolation grids and blend endpoints."""
import numpy as np
import pandas as pd
import pytest
from toydata import toy_index

from histosynth.config import validate
from histosynth.gan.checkpoint import load_generator
from histosynth.gan.training.loop import train
from histosynth.utils import UserError


def opts(**kw):
    o = dict(resolution=16, z_dim=16, w_dim=32, mapping_layers=2, channel_base=256, channel_max=16, batch=8, kimg=0.1,
             snap_kimg=0.1, tick_kimg=0.05, device="cpu", grid_per_class=2, tensorboard=False)
    return validate({"gan": o | kw})["gan"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("conditions")
    index, _, _ = toy_index(tmp, 16)
    rng = np.random.default_rng(0)
    index["site"] = np.where(rng.random(len(index)) < 0.5, "A", "B")  # a second, independent attribute
    index["score"] = np.where(index["label"] == "dark", 1.0, -1.0) + rng.normal(0, 0.1, len(index))
    return tmp, index


def test_attributes_run_generates_every_combination_and_is_evaluated_per_attribute(cohort):
    from histosynth.evaluate.run import evaluate_features
    from histosynth.generate.blend import attribute_grid, attribute_rows, blend_endpoints
    from histosynth.generate.sample import generate

    tmp, index = cohort
    net_path = train(index, tmp / "attrs", opts(conditioning="attributes", condition_columns=["label", "site"],
                                               contrastive_weight=1.0), progress=False)
    net = load_generator(net_path)
    assert net.spec.categories == {"label": ["dark", "light"], "site": ["A", "B"]} and net.spec.dim == 4
    fake = generate(net_path, tmp / "gen", 6, progress=False)
    assert sorted(fake["condition"].unique()) == ["dark,A", "dark,B", "light,A", "light,B"]
    assert (fake.groupby(["label", "site"]).size() == 6).all()  # every combination, its columns on the tiles
    rng = np.random.default_rng(0)
    m = evaluate_features(index, rng.normal(size=(len(index), 8)), fake, rng.normal(size=(len(fake), 8)),
                          validate({})["evaluate"] | {"allow_small": True, "kid_subset_size": 4, "kid_subsets": 2},
                          "domain", attributes=["label", "site"])
    assert set(m["per_attribute_fid"]) == {"label", "site"} and set(m["per_attribute_fid"]["site"]) == {"A", "B"}
    # interpolation: one row per attribute value change, seed fixed; endpoints are the pure combinations
    assert [r[0] for r in attribute_rows(net.spec)] == ["label: dark → light", "site: A → B"]
    imgs, names = attribute_grid(net.G, net.spec, 0, 3)
    assert imgs.shape == (6, 16, 16, 3) and len(names) == 2
    names, ca, cb, end = blend_endpoints(net.spec, vary="site")
    assert names == ["dark,A", "dark,B"] and end["site"] == "B"


def test_classify_target_names_the_attribute_the_study_predicts(cohort):
    from histosynth.classify.study import _labels, low_data_patients

    _, index = cohort
    y = _labels(index, ["A", "B"], "site")
    assert set(y) == {0, 1} and (y == (index["site"] == "B")).all()
    with pytest.raises(UserError, match="classify.target 'stage' is not a column of the synthetic tiles"):
        _labels(index, ["A", "B"], "stage", "synthetic tiles")
    pats = low_data_patients(index, ["A", "B"], 0.5, np.random.default_rng(0), "site")
    assert len(pats) >= 2


def test_vector_run_generates_from_patient_vectors_or_a_csv(cohort):
    from histosynth.generate.blend import blend_endpoints
    from histosynth.generate.sample import generate

    tmp, index = cohort
    net_path = train(index, tmp / "vec", opts(conditioning="vector", condition_columns=["score"]), progress=False)
    net = load_generator(net_path)
    table = net.spec.extra["table"]
    assert set(table) == set(index["patient_id"]) and all(len(v["mu"]) == 1 for v in table.values())
    dark = [v["mu"][0] for v in table.values() if v["label"] == "dark"]
    assert min(dark) > 0.5  # each patient's mean score, with its label
    fake = generate(net_path, tmp / "vgen", 8, progress=False)
    assert fake.groupby("label").size().to_dict() == {"dark": 8, "light": 8}
    assert {"source_patient", "score"} <= set(fake.columns)
    csv = tmp / "vectors.csv"
    pd.DataFrame({"name": ["low", "high"], "score": [-2.0, 2.0], "label": ["light", "dark"]}).to_csv(csv, index=False)
    fake = generate(net_path, tmp / "vcsv", 3, progress=False, vectors=csv)
    assert sorted(fake["condition"].unique()) == ["high", "low"] and set(fake["score"]) == {-2.0, 2.0}
    assert blend_endpoints(net.spec) is not None
    pd.DataFrame({"x": [1.0]}).to_csv(tmp / "bad.csv", index=False)
    with pytest.raises(UserError, match=r"columns \['score'\] missing"):
        generate(net_path, tmp / "vbad", 1, progress=False, vectors=tmp / "bad.csv")
    with pytest.raises(UserError, match="contrastive"):
        train(index, tmp / "vec2", opts(conditioning="vector", condition_columns=["score"], contrastive_weight=1.0),
              progress=False)
