import numpy as np
import pytest

from conftest import opts_tiles
from histosynth.slides.reader import choose_level, open_slide, slide_mpp
from histosynth.slides.store import TileStore, read_index
from histosynth.slides.tiling import tile_slide
from histosynth.utils import UserError


def _run(path, tmp_path, **kw):
    o = opts_tiles(**{"tissue": "saturation", "min_tissue_fraction": 0.0, "grayspace_fraction": 1.0, "pen_fraction": 1.0,
                      **kw})
    out = tmp_path / "t"
    df = tile_slide(path, "S1", f"{out}.tiff", f"{out}.parquet", f"{out}.png", o, patient_id="P", label="x", progress=False)
    return df, TileStore(f"{out}.tiff")


@pytest.mark.parametrize("which", [0, 1])  # Aperio SVS and generic TIFF
def test_coordinates_and_content(block_slide, tmp_path, which):
    df, store = _run(block_slide[which], tmp_path, tile_px=64, tile_um=128)
    # 128 µm at 0.5 µm/px = 256 level-0 px per tile: an 8x8 grid, read at level 2 (2 µm/px), 64 px, no resampling
    assert len(df) == 64 and df["kept"].all() and set(df["level"]) == {2} and set(df["downsample"]) == {4.0}
    assert sorted(set(df["x"])) == list(range(0, 2048, 256))
    for _, r in df.iterrows():
        tile = store[r["page"]]
        assert tile.shape == (64, 64, 3)
        centre = tile[16:48, 16:48].reshape(-1, 3).astype(int).mean(0)
        assert abs(centre[0] - (40 + 20 * (r["x"] // 256))) <= 3 and abs(centre[1] - (40 + 20 * (r["y"] // 256))) <= 3
    assert (df["mpp"] == 2.0).all()


def test_um_scaling_picks_level_and_resamples(block_slide, tmp_path):
    # 96 µm in 64 px = 1.5 µm/px: level 1 (1 µm/px) is the coarsest at least as fine; 96 px read, resized to 64
    slide = open_slide(block_slide[0])
    ch = choose_level(slide, slide_mpp(slide, "b"), 96, 64)
    assert (ch.level, ch.read_px, ch.stride0) == (1, 96, 192)
    df, store = _run(block_slide[0], tmp_path, tile_px=64, tile_um=96)
    assert sorted(set(df["x"]))[:3] == [0, 192, 384] and len(df) == 10 * 10
    # a tile fully inside block (1, 1): x=y=384 spans 384..576 -> crosses into block 2 at 512; check the left part
    r = df[(df.x == 384) & (df.y == 384)].iloc[0]
    t = store[r["page"]].astype(int)
    assert abs(t[5:30, 5:30, 0].mean() - 60) <= 3 and abs(t[40:60, 50:60, 0].mean() - 80) <= 3


def test_missing_mpp_is_a_clear_error(tmp_path):
    # libvips records 1 px/mm (1000 µm/px) when it knows no resolution: treated as missing
    import pyvips

    img = pyvips.Image.black(1024, 1024, bands=3) + 128
    p = tmp_path / "nompp.tif"
    img.cast("uchar").tiffsave(str(p), tile=True, pyramid=True, compression="jpeg")
    with pytest.raises(UserError, match="mpp_override"):
        _run(p, tmp_path, tile_px=64, tile_um=128)
    df, _ = _run(p, tmp_path, tile_px=64, tile_um=128, mpp_override=0.5)
    assert len(df) == 16


def test_corrupt_slide_names_it(tmp_path):
    p = tmp_path / "broken.svs"
    p.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(UserError, match="S1"):
        _run(p, tmp_path, tile_px=64, tile_um=128)


def test_truncated_slide_fails_cleanly(block_slide, tmp_path):
    data = block_slide[0].read_bytes()
    p = tmp_path / "trunc.svs"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError):
        _run(p, tmp_path, tile_px=64, tile_um=128)
    assert not (tmp_path / "t.tiff").exists()  # nothing half-written left looking finished


def test_pen_and_blur_tiles_removed_exactly(artefact_slide, tmp_path):
    from histosynth.slides.synthetic import draw_tissue

    path, spec, clean = artefact_slide
    o = dict(tile_px=64, tile_um=128, blur=30, pen_fraction=0.01, tissue="otsu", min_tissue_fraction=0.5,
             grayspace_fraction=0.6)
    df, _ = _run(path, tmp_path, **o)
    # ground truth from the drawing: which tiles does the pen / blur touch?
    with_art, without = draw_tissue(spec).astype(int), draw_tissue(clean).astype(int)
    diff = np.abs(with_art - without).sum(-1) > 30
    truth = {}
    for _, r in df.iterrows():
        d = diff[r.y:r.y + 256, r.x:r.x + 256]
        truth[(r.x, r.y)] = d.mean()
    pen_rows = df[df.reject_reason == "pen"]
    blur_rows = df[df.reject_reason == "blur"]
    assert len(pen_rows) > 0 and len(blur_rows) > 0
    # every rejected tile carries the artefact; clean tiles are kept
    assert all(truth[(x, y)] > 0 for x, y in zip(pen_rows.x, pen_rows.y))
    assert all(truth[(x, y)] > 0 for x, y in zip(blur_rows.x, blur_rows.y))
    clean_rows = df[[truth[(x, y)] == 0 for x, y in zip(df.x, df.y)]]
    assert clean_rows["kept"].all()
    # the blurred square is 512..1024 px: tiles fully inside it are all rejected as blur
    inside = df[(df.x >= 512) & (df.x + 256 <= 1024) & (df.y >= 512) & (df.y + 256 <= 1024)]
    assert (inside.reject_reason == "blur").all()


def test_zero_tile_slide_is_reported_not_silent(tmp_path):

    from histosynth.slides.synthetic import write_slide

    blank = np.full((1024, 1024, 3), 245, np.uint8)
    p = tmp_path / "blank.svs"
    write_slide(blank, p, "svs", 0.5)
    o = opts_tiles(tile_px=64, tile_um=128)
    df = tile_slide(p, "BLANK", tmp_path / "b.tiff", tmp_path / "b.parquet", tmp_path / "b.png", o, progress=False)
    assert df["kept"].sum() == 0
    assert len(TileStore(tmp_path / "b.tiff")) == 0
    assert (tmp_path / "b.png").exists() and len(read_index(tmp_path / "b.parquet")) == len(df)
