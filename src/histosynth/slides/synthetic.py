"""Procedurally drawn H&E-like whole-slide images in real formats (Aperio SVS, generic TIFF).

The demo and the tests need slides that OpenSlide reads as it reads scanner output, whose
classes differ in morphology (so a classifier and a GAN can learn them), and with the
artefacts QC must remove. Colours are made physically: hematoxylin and eosin optical
densities mixed by the Beer-Lambert law with the standard H&E stain vectors, so stain
normalisation behaves on them as on real slides.

Classes:
  * ``tumor``:  dense, large, irregular, hyperchromatic nuclei in scant stroma.
  * ``normal``: gland-like rings of small nuclei around white lumina in loose eosin stroma.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from histosynth.utils import fsync_dir, fsync_path

# Ruifrok & Johnston stain vectors (rows: hematoxylin, eosin), unit length.
H_VEC = np.array([0.650, 0.704, 0.286], np.float32)
E_VEC = np.array([0.072, 0.990, 0.105], np.float32)
CLASSES = ("tumor", "normal")


@dataclass(frozen=True)
class SlideSpec:
    slide_id: str
    patient_id: str
    label: str
    fmt: str = "svs"  # "svs" or "tiff"
    size_px: int = 4096
    mpp: float = 0.5
    pen_mark: bool = False
    blur_region: bool = False
    fold: bool = False
    seed: int = 0
    cellularity: float = 1.0  # nuclear density factor (the demo ties it to an expression program)


def _smooth_noise(rng, shape, sigma):
    n = rng.standard_normal(shape).astype(np.float32)
    n = ndimage.gaussian_filter(n, sigma)
    return n / (n.std() + 1e-8)


def _upsample(a, shape):
    zoom = (shape[0] / a.shape[0], shape[1] / a.shape[1])
    return ndimage.zoom(a, zoom, order=1)[: shape[0], : shape[1]]


def _discs(shape, centers, radius):
    """Boolean map of discs of `radius` px around integer `centers` (N, 2), stamped at once."""
    out = np.zeros(shape, bool)
    if len(centers) == 0:
        return out
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    inside = (yy**2 + xx**2) <= radius**2
    dy, dx = yy[inside], xx[inside]
    ys = np.clip(centers[:, :1] + dy[None], 0, shape[0] - 1)
    xs = np.clip(centers[:, 1:2] + dx[None], 0, shape[1] - 1)
    out[ys.ravel(), xs.ravel()] = True
    return out


def _ellipses(rng, shape, n, r_lo, r_hi, mask):
    """Nuclei: discs of a few radius bins, elongated by a random anisotropic stretch of the field."""
    cand = rng.integers(0, [shape[0], shape[1]], size=(n, 2))
    cand = cand[mask[cand[:, 0], cand[:, 1]]]
    out = np.zeros(shape, bool)
    radii = np.linspace(r_lo, r_hi, 3)
    for i, r in enumerate(radii):
        sel = cand[i :: len(radii)]
        out |= _discs(shape, sel, r)
    return out


def draw_tissue(spec: SlideSpec) -> np.ndarray:
    """RGB uint8 image (size_px x size_px) of H&E-like tissue for `spec`."""
    rng = np.random.default_rng(spec.seed)
    s = spec.size_px
    shape = (s, s)
    scale = 0.5 / spec.mpp  # pixels per 0.5 µm: morphology is drawn in microns

    # Tissue region: a smooth blob with a few holes, drawn at low resolution.
    low = 128
    yy, xx = np.mgrid[0:low, 0:low] / low
    cy, cx = rng.uniform(0.4, 0.6, 2)
    blob = 1.0 - ((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(0.10, 0.16)
    blob = blob + 0.35 * _smooth_noise(rng, (low, low), 6)
    holes = _smooth_noise(rng, (low, low), 3) > 2.2
    tissue_low = (blob > 0) & ~holes
    tissue = _upsample(tissue_low.astype(np.float32), shape) > 0.5

    h = np.zeros(shape, np.float32)
    e = np.zeros(shape, np.float32)
    fib = _smooth_noise(rng, (s // 4, s // 4), 1.5)
    fib = _upsample(fib, shape)
    if spec.label == "tumor":
        e += 0.35 + 0.08 * fib
        density = spec.cellularity / (260 * scale**2)
        nuc = _ellipses(rng, shape, int(s * s * density), 4.5 * scale, 7.5 * scale, tissue)
        h += np.where(nuc, 1.45, 0.06)
        e = np.where(nuc, 0.12, e)
    else:
        e += 0.55 + 0.15 * fib
        # glands: rings of small nuclei around lumina
        n_glands = int(spec.cellularity * s * s / (130 * scale) ** 2)
        centers = rng.integers(0, s, size=(n_glands, 2))
        centers = centers[tissue[centers[:, 0], centers[:, 1]]]
        lumen = np.zeros(shape, bool)
        ring_nuclei = []
        for cy_, cx_ in centers:
            r = rng.uniform(18, 32) * scale
            ang = np.linspace(0, 2 * np.pi, int(2 * np.pi * r / (9 * scale)), endpoint=False)
            ring = np.stack([cy_ + (r + 4 * scale) * np.sin(ang), cx_ + (r + 4 * scale) * np.cos(ang)], 1)
            ring_nuclei.append(np.clip(ring.round().astype(int), 0, s - 1))
            ry, rx = np.ogrid[-cy_ : s - cy_, -cx_ : s - cx_]
            y0, y1 = max(0, int(cy_ - r) - 1), min(s, int(cy_ + r) + 2)
            x0, x1 = max(0, int(cx_ - r) - 1), min(s, int(cx_ + r) + 2)
            sub = (ry[y0:y1] ** 2 + rx[:, x0:x1] ** 2) <= r * r
            lumen[y0:y1, x0:x1] |= sub
        ring_nuclei = np.concatenate(ring_nuclei) if ring_nuclei else np.zeros((0, 2), int)
        sparse = rng.integers(0, s, size=(int(spec.cellularity * s * s / (55 * scale) ** 2), 2))
        sparse = sparse[tissue[sparse[:, 0], sparse[:, 1]]]
        nuc = _discs(shape, ring_nuclei, 3.2 * scale) | _discs(shape, sparse, 2.6 * scale)
        h += np.where(nuc, 1.25, 0.04)
        e = np.where(nuc, 0.10, e)
        e = np.where(lumen & ~nuc, 0.0, e)
        h = np.where(lumen & ~nuc, 0.0, h)

    h += 0.03 * _upsample(_smooth_noise(rng, (s // 8, s // 8), 2), shape)
    h = np.clip(h, 0, None) * tissue
    e = np.clip(e, 0, None) * tissue
    if spec.fold:
        # a fold: a band of doubled tissue, darker
        band = np.abs(np.arange(s)[None, :] - np.arange(s)[:, None] * 0.3 - s * 0.45) < s * 0.04
        h = np.where(band & tissue, h * 2.2 + 0.2, h)
        e = np.where(band & tissue, e * 2.0 + 0.2, e)
    od = h[..., None] * H_VEC + e[..., None] * E_VEC
    rgb = 255.0 * np.exp(-od)
    # faint background variation and sensor noise
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * 2.0
    rgb = np.where(tissue[..., None], rgb, np.clip(rgb, 236, 250))
    if spec.blur_region:
        y0, x0 = int(s * 0.25), int(s * 0.25)
        sl = (slice(y0, y0 + s // 4), slice(x0, x0 + s // 4))
        for c in range(3):
            rgb[sl + (c,)] = ndimage.gaussian_filter(rgb[sl + (c,)], 12 * scale)
    if spec.pen_mark:
        t = np.linspace(0, 1, 2000)
        path = np.stack([s * (0.7 + 0.08 * np.sin(6 * t)), s * (0.15 + 0.7 * t)], 1).astype(int)
        pen = _discs(shape, np.clip(path, 0, s - 1), 40 * scale)
        ink = np.array([40.0, 150.0, 70.0])  # green marker
        rgb = np.where(pen[..., None], 0.25 * rgb + 0.75 * ink, rgb)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def write_slide(rgb: np.ndarray, path: Path, fmt: str, mpp: float, app_mag: int = 20) -> None:
    """Write `rgb` as a tiled JPEG pyramid: Aperio SVS (`fmt='svs'`) or generic TIFF with
    resolution tags (`fmt='tiff'`). Written to a temporary name, then renamed."""
    import pyvips

    path = Path(path)
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(rgb).data, rgb.shape[1], rgb.shape[0], 3, "uchar")
    px_per_mm = 1000.0 / mpp
    tmp = path.with_name(path.name + ".partial")
    kw = dict(tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90,
              xres=px_per_mm, yres=px_per_mm, resunit="cm")
    if fmt == "svs":
        h, w = rgb.shape[:2]
        desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] (256x256) JPEG/RGB Q=90"
                f"|AppMag = {app_mag}|MPP = {mpp:.4f}|ScannerType = histosynth-demo")
        img = img.copy()
        img.set_type(pyvips.GValue.gstr_type, "image-description", desc)
    elif fmt != "tiff":
        raise ValueError(f"unknown slide format {fmt!r}: use 'svs' or 'tiff'")
    img.tiffsave(str(tmp), **kw)
    fsync_path(tmp)
    os.replace(tmp, path)
    fsync_dir(Path(path).parent)


def demo_cohort(n_patients_per_class: int = 4, size_px: int = 4096, mpp: float = 0.5, seed: int = 0):
    """Slide specs of the demo cohort: per class `n_patients_per_class` patients, every third
    patient with two slides; artefacts on some slides; one generic TIFF per class."""
    specs = []
    k = 0
    for ci, label in enumerate(CLASSES):
        for p in range(n_patients_per_class):
            pid = f"P{ci}{p:02d}"
            cell = patient_cellularity(pid, seed)
            n_slides = 2 if p % 3 == 2 else 1
            for si in range(n_slides):
                k += 1
                specs.append(SlideSpec(
                    slide_id=f"{pid}-S{si + 1}", patient_id=pid, label=label,
                    fmt="tiff" if (p == 1 and si == 0) else "svs", size_px=size_px, mpp=mpp,
                    pen_mark=(k % 4 == 1), blur_region=(k % 4 == 2), fold=(k % 5 == 3),
                    seed=seed * 1000 + k, cellularity=cell))
    return specs


def patient_cellularity(patient_id: str, seed: int = 0) -> float:
    """A patient's nuclear density factor, log-uniform in [0.6, 1.6], fixed by its id."""
    h = int(hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()[:8], 16) / 16**8
    return float(np.exp(np.log(0.6) + h * (np.log(1.6) - np.log(0.6))))


DEMO_GENES = 300


def demo_expression(patients: dict, seed: int = 0, n_genes: int = DEMO_GENES):
    """log2(TPM + 1) profiles (patients x genes) of the demo: 30 genes up in tumour, 30 up in
    normal, 30 'proliferation' genes that follow log2 of the patient's cellularity (the nuclear
    density drawn in its slides), the rest background; gene-wise base levels and noise.
    `patients`: id -> (label, cellularity). Returns (log values DataFrame, genes DataFrame)."""
    import pandas as pd

    g = np.random.default_rng(10_000 + seed)
    base = g.uniform(1, 8, n_genes)
    kind = np.array(["tumour_up"] * 30 + ["normal_up"] * 30 + ["proliferation"] * 30 + ["background"] * (n_genes - 90))
    ids = [f"ENSGDEMO{i:05d}" for i in range(n_genes)]
    names = [f"{ {'tumour_up': 'TUP', 'normal_up': 'NUP', 'proliferation': 'PRO', 'background': 'BG'}[k]}{i}"
             for i, k in enumerate(kind)]
    rows = {}
    for pid, (label, cell) in patients.items():
        r = np.random.default_rng(int(hashlib.sha256(f"{seed}:{pid}:rna".encode()).hexdigest()[:8], 16))
        x = base + r.normal(0, 0.35, n_genes)
        x += np.where(kind == ("tumour_up" if label == "tumor" else "normal_up"), 2.5, 0.0)
        x += np.where(kind == "proliferation", 3.0 * np.log2(cell), 0.0)
        rows[pid] = np.clip(x, 0, None)
    values = pd.DataFrame(rows, index=ids).T
    return values, pd.DataFrame({"gene_id": ids, "gene_name": names, "program": kind})


def write_gct(values, genes, path):
    """GCT 1.2 (GTEx's format; gzipped when the name ends in .gz): genes x samples."""
    import gzip

    from histosynth.utils import atomic_path

    opener = gzip.open if str(path).endswith(".gz") else open
    with atomic_path(path) as tmp:
        with opener(tmp, "wt") as fh:
            fh.write("#1.2\n")
            fh.write(f"{values.shape[1]}\t{values.shape[0]}\n")
            fh.write("Name\tDescription\t" + "\t".join(values.index) + "\n")
            for j, (gid, name) in enumerate(zip(genes["gene_id"], genes["gene_name"])):
                fh.write(f"{gid}\t{name}\t" + "\t".join(f"{v:.4g}" for v in values.iloc[:, j]) + "\n")


def write_demo_expression(specs, outdir, seed=0, n_new_per_class=2):
    """The demo's expression data: a GTEx-style TPM GCT with one RNA-seq sample per patient
    (ids `<patient>-0001-SM-<n>`), and a CSV of profiles of new patients (not in the cohort)
    for generation from new profiles."""
    outdir = Path(outdir)
    patients = {s.patient_id: (s.label, s.cellularity) for s in specs}
    logv, genes = demo_expression(patients, seed)
    tpm = (2.0 ** logv - 1).clip(lower=0)
    tpm.index = [f"{pid}-0001-SM-{i:05d}" for i, pid in enumerate(tpm.index)]
    write_gct(tpm, genes, outdir / "expression_tpm.gct.gz")
    new = {f"NEW{ci}{j}": (label, patient_cellularity(f"NEW{ci}{j}", seed))
           for ci, label in enumerate(CLASSES) for j in range(n_new_per_class)}
    logn, _ = demo_expression(new, seed)
    tpm_new = (2.0 ** logn - 1).clip(lower=0)
    tpm_new.index.name = "sample_id"
    from histosynth.utils import atomic_path

    with atomic_path(outdir / "new_profiles.csv") as tmp:
        tpm_new.round(4).to_csv(tmp)
    with atomic_path(outdir / "new_profiles_truth.tsv") as tmp:
        pd_rows = [f"{k}\t{v[0]}\t{v[1]:.3f}" for k, v in new.items()]
        Path(tmp).write_text("sample_id\tlabel\tcellularity\n" + "\n".join(pd_rows) + "\n")


def write_demo_cohort(outdir, manifest_path, n_patients_per_class=4, size_px=4096, mpp=0.5, seed=0,
                      progress=True):
    """Draw the demo cohort into `outdir` and write a manifest TSV (path relative to the
    manifest, md5, size, label, patient_id, slide_id). Returns the manifest as a DataFrame."""
    import pandas as pd
    from tqdm import tqdm

    from histosynth.utils import atomic_path, md5_of

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    manifest_path = Path(manifest_path)
    rows = []
    specs = demo_cohort(n_patients_per_class, size_px, mpp, seed)
    for spec in tqdm(specs, desc="drawing demo slides", unit="slide", disable=not progress):
        ext = "svs" if spec.fmt == "svs" else "tif"
        path = outdir / f"{spec.slide_id}.{ext}"
        write_slide(draw_tissue(spec), path, spec.fmt, spec.mpp)
        rows.append(dict(slide_id=spec.slide_id, patient_id=spec.patient_id, label=spec.label,
                         path=os.path.relpath(path.resolve(), manifest_path.parent.resolve()),
                         md5=md5_of(path), size=path.stat().st_size, cellularity=round(spec.cellularity, 3),
                         artefacts=",".join(a for a, on in (("pen", spec.pen_mark), ("blur", spec.blur_region),
                                                            ("fold", spec.fold)) if on) or "none"))
    write_demo_expression(specs, manifest_path.parent, seed)
    df = pd.DataFrame(rows)
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(manifest_path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)
    return df
