"""Hostile and mistaken input, table-driven: each case gives one clear error that names the
file, key or slide and says what to change, and leaves nothing half-written."""
import pytest

from histosynth.acquire.query import build_sample_sheet
from histosynth.config import validate
from histosynth.utils import UserError

HEADER = "slide_id\tpatient_id\tlabel\tpath\n"
GOOD_ROWS = ["S1\tP1\ttumor\ta.svs", "S2\tP2\tnormal\tb.svs", "S3\tP3\ttumor\tc.svs", "S4\tP4\tnormal\td.svs"]

MANIFESTS = {
    "missing column": ("slide_id\tlabel\tpath\nS1\ttumor\ta.svs\n", r"missing column\(s\) \['patient_id'\].*Required"),
    "duplicate slide_id": (HEADER + "S1\tP1\ttumor\ta.svs\nS1\tP2\tnormal\tb.svs\n", r"duplicate slide_id\(s\) \['S1'\]"),
    "slide_id with /": (HEADER + "a/b\tP1\ttumor\ta.svs\nS2\tP2\tnormal\tb.svs\n",
                        r"slide_id \['a/b'\] cannot be used.*Rename them in the slide_id column"),
    "slide_id with ..": (HEADER + "..\tP1\ttumor\ta.svs\nS2\tP2\tnormal\tb.svs\n", r"slide_id \['\.\.'\] cannot be used"),
    "slide_id with a space": (HEADER + "S 1\tP1\ttumor\ta.svs\nS2\tP2\tnormal\tb.svs\n", r"\['S 1'\] cannot be used"),
    "non-ASCII slide_id": (HEADER + "Schnitt-ä\tP1\ttumor\ta.svs\nS2\tP2\tnormal\tb.svs\n",
                           r"\['Schnitt-ä'\] cannot be used.*no '/', '\.\.', spaces or accents"),
    "one class only": (HEADER + "S1\tP1\ttumor\ta.svs\nS2\tP2\ttumor\tb.svs\n",
                       r"every slide has the label 'tumor'.*at least two classes"),
    "header only": (HEADER, r"lists no slides"),
    "empty file": ("", r"is empty; write a header line"),
    "CSV instead of TSV": ("slide_id,patient_id,label,path\nS1,P1,tumor,a.svs\n",
                           r"looks comma-separated .*save it as TSV"),
}


@pytest.mark.parametrize("case", sorted(MANIFESTS))
def test_bad_manifest_one_clear_error_and_no_sheet(tmp_path, case):
    text, expected = MANIFESTS[case]
    m = tmp_path / "my-slides.tsv"
    m.write_text(text, encoding="utf-8")
    out = tmp_path / "results" / "slides.tsv"
    opts = validate({"acquire": {"source": "manifest", "manifest": str(m)}})["acquire"]
    with pytest.raises(UserError, match=expected) as e:
        build_sample_sheet(opts, out)
    assert str(m) in str(e.value)  # the file is named
    assert not out.exists() and not list(tmp_path.rglob("*.tmp*"))  # nothing half-written


def test_crlf_manifest_reads_as_lf(tmp_path):
    opts = validate({"acquire": {"source": "manifest"}})["acquire"]
    sheets = []
    for eol in ("\n", "\r\n"):
        m = tmp_path / f"m{len(eol)}.tsv"
        m.write_bytes((HEADER + "\n".join(GOOD_ROWS) + "\n").replace("\n", eol).encode())
        sheets.append(build_sample_sheet(dict(opts, manifest=str(m)), tmp_path / f"s{len(eol)}.tsv"))
    a, b = sheets
    assert a.drop(columns=["source"]).equals(b.drop(columns=["source"]))
    assert not any("\r" in str(v) for v in b.to_numpy().ravel())


def test_class_with_a_single_patient_names_the_class_and_the_keys():
    import pandas as pd

    from histosynth.split.patients import split_patients

    sheet = pd.DataFrame({"slide_id": ["S1", "S2", "S3", "S4"], "patient_id": ["P1", "P2", "P3", "P3"],
                          "label": ["tumor", "tumor", "normal", "normal"]})
    with pytest.raises(UserError, match=r"class 'normal' has 1 patient\(s\) \(P3\).*split.test_fraction"):
        split_patients(sheet, 0.34, 0.0, 0)


CONFIGS = {
    "negative tile_px": ({"tiles": {"tile_px": -64}}, r"'tiles.tile_px': -64 is less than the minimum of 8"),
    "absurd tile_px": ({"tiles": {"tile_px": 100000}}, r"'tiles.tile_px': 100000 is greater than the maximum of 4096"),
    "negative tile_um": ({"tiles": {"tile_um": -128}}, r"'tiles.tile_um': -128 is less than or equal to the minimum"),
    "absurd tile_um": ({"tiles": {"tile_um": 1e9}}, r"'tiles.tile_um': 1000000000.0 is greater than the maximum"),
    "resolution not a power of two": ({"gan": {"resolution": 100}}, r"'gan.resolution': 100 is not one of \[8, 16"),
    "empty classify.seeds": ({"classify": {"seeds": []}}, r"'classify.seeds': \[\] should be non-empty"),
    "generate.per_class 0": ({"generate": {"per_class": 0}}, r"'generate.per_class': 0 is less than the minimum of 1"),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_bad_config_value_names_the_key(case):
    cfg, expected = CONFIGS[case]
    with pytest.raises(UserError, match=expected):
        validate(cfg, "config/my.yaml")
