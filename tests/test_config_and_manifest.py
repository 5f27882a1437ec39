import pytest

from histosynth.acquire.manifest import read_manifest
from histosynth.config import validate
from histosynth.utils import UserError


def test_defaults_fill_nested_sections():
    cfg = validate({})
    assert cfg["tiles"]["tile_px"] == 256 and cfg["gan"]["augment"] == "ada" and cfg["classify"]["seeds"] == [0, 1, 2]
    assert cfg["evaluate"]["min_samples"] == 2048


def test_bad_value_names_the_key():
    with pytest.raises(UserError, match="gan.augment"):
        validate({"gan": {"augment": "magic"}})
    with pytest.raises(UserError, match="tiles"):
        validate({"tiles": {"tile_pixels": 3}})


def test_manifest_errors_name_file_and_column(tmp_path):
    m = tmp_path / "m.tsv"
    m.write_text("slide_id\tlabel\tpath\nA\tx\ta.svs\n")
    with pytest.raises(UserError, match="patient_id"):
        read_manifest(m)
    m.write_text("slide_id\tpatient_id\tlabel\tpath\tmd5\nA/..\tp\tx\ta.svs\t\n")
    with pytest.raises(UserError, match="slide_id"):
        read_manifest(m)
    m.write_text("slide_id\tpatient_id\tlabel\tpath\tmd5\nA\tp\tx\ta.svs\tnothex\n")
    with pytest.raises(UserError, match="md5"):
        read_manifest(m)


def test_manifest_relative_paths_resolve_against_manifest(tmp_path):
    m = tmp_path / "sub" / "m.tsv"
    m.parent.mkdir()
    m.write_text("slide_id\tpatient_id\tlabel\tpath\nA\tp\tx\tslides/a.svs\nB\tq\ty\thttps://h/b.svs\n")
    df = read_manifest(m)
    assert df["source"].iloc[0] == str((tmp_path / "sub" / "slides" / "a.svs").resolve())
    assert df["source"].iloc[1] == "https://h/b.svs"


def test_config_readme_is_generated_from_schema():
    from pathlib import Path

    from histosynth.config import schema_markdown

    doc = (Path(__file__).resolve().parents[1] / "config" / "README.md").read_text()
    assert doc.strip() == schema_markdown().strip(), "regenerate: histosynth config-doc > config/README.md"


def test_config_overrides_from_snakemake_are_read_as_the_schemas_types():
    """`snakemake --config 'gan={kimg: 20}'` passes nested values as text; they validate as
    the schema's types, and what cannot be read is one clear error naming the key."""
    import pytest

    from histosynth.config import validate
    from histosynth.utils import UserError

    c = validate({"gan": {"kimg": "20", "batch": "16", "compile": "false", "ada_p": "null", "lr_g": "1e-3",
                          "train_partitions": ["train", "val"]},
                  "expression": {"gan": {"kimg": "3"}}, "classify": {"seeds": ["0", "1"]}})
    assert c["gan"]["kimg"] == 20 and c["gan"]["batch"] == 16 and c["gan"]["compile"] is False
    assert c["gan"]["ada_p"] is None and c["gan"]["lr_g"] == 0.001 and c["classify"]["seeds"] == [0, 1]
    assert c["expression"]["gan"] == {"kimg": 3.0} and c["gan"]["precision"] == "bf16"
    with pytest.raises(UserError, match=r"'gan.batch': '3.5' is not an integer"):
        validate({"gan": {"batch": "3.5"}})
    with pytest.raises(UserError, match=r"nested form.*--config 'gan=\{kimg: 20\}'"):
        validate({"gan.kimg": 20})
