import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))


def opts_tiles(**kw):
    from histosynth.config import validate

    return validate({"tiles": kw})["tiles"]


@pytest.fixture(scope="session")
def block_slide(tmp_path_factory):
    """A 2048x2048 Aperio SVS at 0.5 µm/px whose 256-px blocks each have a unique flat colour
    (R = 40 + 20 * block column, G = 40 + 20 * block row), so a tile's content names its position."""
    from histosynth.slides.synthetic import write_slide

    d = tmp_path_factory.mktemp("block")
    img = np.zeros((2048, 2048, 3), np.uint8)
    for by in range(8):
        for bx in range(8):
            img[by * 256:(by + 1) * 256, bx * 256:(bx + 1) * 256] = (40 + 20 * bx, 40 + 20 * by, 200)
    svs = d / "block.svs"
    write_slide(img, svs, "svs", 0.5)
    tif = d / "block.tif"
    write_slide(img, tif, "tiff", 0.5)
    return svs, tif


@pytest.fixture(scope="session")
def artefact_slide(tmp_path_factory):
    """A small tumor-class demo slide with a pen mark and a blurred region."""
    from histosynth.slides.synthetic import SlideSpec, draw_tissue, write_slide

    d = tmp_path_factory.mktemp("art")
    spec = SlideSpec("ART-1", "P1", "tumor", "svs", size_px=2048, mpp=0.5, pen_mark=True, blur_region=True, seed=3)
    path = d / "art.svs"
    write_slide(draw_tissue(spec), path, "svs", 0.5)
    clean = SlideSpec("ART-1", "P1", "tumor", "svs", size_px=2048, mpp=0.5, seed=3)
    return path, spec, clean
