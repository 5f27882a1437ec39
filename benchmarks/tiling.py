"""Tile extraction speed and memory: histosynth's tiler against a naive loop, same slide, same run.

Generates a large Aperio SVS (default 40,960 x 40,960 px at 0.25 µm/px, JPEG Q90, 256 px
tiles, a pyramid, about half of it tissue), then runs, each in its own process so that peak
memory is its own:

* **ours**: ``histosynth.slides.tiling.tile_slide`` with QC on (tissue mask, whitespace,
  grayspace, blur and pen scores, store writing), with the rule's thread count;
* **naive**: for the same tissue positions, ``openslide.read_region`` + Pillow Lanczos resize
  + per-tile checks in plain numpy + a PNG per tile (the loop most tiling scripts are), one thread;
* **ours, small slide**: the same on a slide a sixteenth the area, to show that peak memory
  does not grow with the slide.

Prints tiles/s of both, their ratio, and peak RSS. Nothing is timed in the test suite.

``--regions`` instead measures what annotated regions (``tiles.roi``) cost: ours on the same
slide without and with a QuPath GeoJSON export holding one region of ``--vertices`` vertices
(a wavy outline just outside the tissue ellipse, so both runs read the same tiles) with a hole
on the glass, and 50 small Ignore* squares on the glass; each run in its own process, the
order alternated over ``--repeats`` pairs, median time of each.

  python benchmarks/tiling.py                      # 40,960 px slide, 2 threads
  python benchmarks/tiling.py --size 20480 --threads 4 --keep /tmp/bench
  python benchmarks/tiling.py --regions --vertices 20000
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

MPP = 0.25


def make_slide(path: Path, size: int) -> None:
    """A JPEG-compressed pyramidal SVS of `size` px, drawn H&E inside an ellipse (~half the area)."""
    import pyvips

    from histosynth.slides.synthetic import SlideSpec, draw_tissue

    rgb = draw_tissue(SlideSpec("BENCH", "P", "tumor", "svs", size_px=4096, mpp=MPP, seed=1))[1536:2560, 1536:2560]
    patch = pyvips.Image.new_from_memory(np.ascontiguousarray(rgb).data, 1024, 1024, 3, "uchar")  # all tissue
    patch = patch.join(patch.fliphor(), "horizontal")
    patch = patch.join(patch.flipver(), "vertical")  # mirrored: no seams
    n = -(-size // 2048)
    tissue = patch.replicate(n, n).crop(0, 0, size, size)
    yy, xx = np.mgrid[0:256, 0:256] / 255.0
    ellipse = ((((xx - 0.5) / 0.4) ** 2 + ((yy - 0.5) / 0.4) ** 2) <= 1).astype(np.uint8) * 255
    mask = pyvips.Image.new_from_memory(np.ascontiguousarray(ellipse).data, 256, 256, 1, "uchar")
    mask = mask.resize(size / 256, kernel="nearest")
    glass = (tissue * 0 + [242, 240, 245]).cast("uchar")
    img = (mask > 128).ifthenelse(tissue, glass).copy()
    img.set_type(pyvips.GValue.gstr_type, "image-description",
                 f"Aperio Image Library v12.0.15 \r\n{size}x{size} [0,0 {size}x{size}] (256x256) JPEG/RGB Q=90"
                 f"|AppMag = 40|MPP = {MPP:.4f}|ScannerType = histosynth-benchmark")
    tmp = path.with_name(path.name + ".partial")
    img.tiffsave(str(tmp), tile=True, tile_width=256, tile_height=256, pyramid=True, compression="jpeg", Q=90,
                 xres=1000 / MPP, yres=1000 / MPP, resunit="cm", bigtiff=True)
    os.replace(tmp, path)


def naive_scores(tile: np.ndarray, wt: float = 230, gt: float = 0.05) -> dict:
    """Per-tile checks as plain numpy (float HSV, scipy Laplacian): what a tiling script does."""
    from scipy import ndimage

    x = tile.astype(np.float32) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    d = mx - mn
    s = np.where(mx > 0, d / np.maximum(mx, 1e-8), 0.0)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    dd = np.maximum(d, 1e-8)
    h = np.where(mx == r, ((g - b) / dd) % 6, np.where(mx == g, (b - r) / dd + 2, (r - g) / dd + 4)) / 6.0
    gray = tile.astype(np.float32).mean(-1)
    return {"whitespace": float((gray > wt).mean()), "grayspace": float((s < gt).mean()),
            "blur": float(ndimage.laplace(gray).var()),
            "pen": float(((h > 70 / 360) & (h < 220 / 360) & (s > 0.3) & (mx < 0.95)).mean())}


def opts(tile_px, tile_um):
    from histosynth.config import validate

    return validate({"tiles": {"tile_px": tile_px, "tile_um": tile_um}})["tiles"]


def write_regions(path: Path, size: int, vertices: int) -> None:
    """A QuPath 0.5 export: a wavy ring of `vertices` points around the tissue ellipse (radius
    0.41-0.43 of the slide against the tissue's 0.40), a hole and 50 Ignore* squares on the glass."""
    a = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    r = size * (0.42 + 0.01 * np.sin(37 * a))
    outer = np.stack([size / 2 + r * np.cos(a), size / 2 + r * np.sin(a)], 1)
    hole_a = np.linspace(0, 2 * np.pi, 64, endpoint=False)[::-1]
    hole = np.stack([size * 0.06 + size * 0.02 * np.cos(hole_a), size * 0.06 + size * 0.02 * np.sin(hole_a)], 1)

    def closed(p):
        return np.vstack([p, p[:1]]).round(2).tolist()

    feats = [{"type": "Feature", "id": "bench-0", "geometry": {"type": "Polygon", "coordinates": [closed(outer)]},
              "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]
    for k in range(50):  # along the top edge: glass
        x0, y0 = size * (0.02 + 0.019 * k), size * 0.005
        sq = [[x0, y0], [x0 + 200, y0], [x0 + 200, y0 + 200], [x0, y0 + 200], [x0, y0]]
        feats.append({"type": "Feature", "id": f"ignore-{k}", "geometry": {"type": "Polygon", "coordinates": [sq]},
                      "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}})
    feats.append({"type": "Feature", "id": "hole-host", "geometry": {"type": "Polygon", "coordinates": [
        closed(np.array([[0, 0], [size * 0.12, 0], [size * 0.12, size * 0.12], [0, size * 0.12]])), closed(hole)]},
        "properties": {"objectType": "annotation", "classification": {"name": "Ignore*"}}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))


def run_ours(slide, out, tile_px, tile_um, threads, roi_file=None):
    from histosynth.slides.tiling import tile_slide

    o = opts(tile_px, tile_um)
    if roi_file:
        o["roi"] = dict(o["roi"], dir=str(Path(roi_file).parent))
    t0 = time.perf_counter()
    df = tile_slide(slide, "bench", out / "t.tiff", out / "t.parquet", out / "t.png", o,
                    threads=threads, progress=False, roi_file=roi_file)
    dt = time.perf_counter() - t0
    return {"tiles": len(df), "kept": int(df["kept"].sum()), "seconds": dt, "positions": df[["x", "y"]].values.tolist()}


def run_naive(slide, out, tile_px, tile_um, positions):
    import openslide
    from PIL import Image

    from histosynth.slides.reader import choose_level, slide_mpp

    s = openslide.OpenSlide(str(slide))
    ch = choose_level(s, slide_mpp(s, "bench"), tile_um, tile_px)
    t0 = time.perf_counter()
    for k, (x, y) in enumerate(positions):
        img = s.read_region((int(x), int(y)), ch.level, (ch.read_px, ch.read_px)).convert("RGB")
        if ch.read_px != tile_px:
            img = img.resize((tile_px, tile_px), Image.Resampling.LANCZOS)
        sc = naive_scores(np.asarray(img))
        if sc["grayspace"] <= 0.6 and sc["pen"] <= 0.01:
            img.save(out / f"{k}.png")
    return {"tiles": len(positions), "seconds": time.perf_counter() - t0}


def child(args):
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.child == "ours":
        res = run_ours(args.slide, out, args.tile_px, args.tile_um, args.threads, args.roi_file)
    else:
        res = run_naive(args.slide, out, args.tile_px, args.tile_um, json.loads(Path(args.positions).read_text()))
    res["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(res))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's peak,
    which Linux carries across fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spawn(kind, slide, out, a, positions=None, roi_file=None):
    cmd = [sys.executable, __file__, "--child", kind, "--slide", str(slide), "--out", str(out), "--tile-px",
           str(a.tile_px), "--tile-um", str(a.tile_um), "--threads", str(a.threads)]
    if positions:
        cmd += ["--positions", str(positions)]
    if roi_file:
        cmd += ["--roi-file", str(roi_file)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=40960, help="slide width and height in px (>= 40,000 for the README figure)")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--tile-um", type=float, default=128.0)
    ap.add_argument("--threads", type=int, default=2, help="threads of our tiler (the tile rule's threads)")
    ap.add_argument("--naive-max", type=int, default=0, help="time the naive loop on at most this many positions (0 = all)")
    ap.add_argument("--keep", help="directory to keep the generated slides in (reused when present)")
    ap.add_argument("--regions", action="store_true", help="measure tiling with a QuPath region file against without")
    ap.add_argument("--vertices", type=int, default=20000, help="--regions: vertices of the region's outline")
    ap.add_argument("--repeats", type=int, default=3, help="--regions: pairs of runs (median of each)")
    ap.add_argument("--child"), ap.add_argument("--slide"), ap.add_argument("--out"), ap.add_argument("--positions")
    ap.add_argument("--roi-file")
    a = ap.parse_args()
    if a.child:
        return child(a)
    work = Path(a.keep or tempfile.mkdtemp(prefix="histosynth-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    big, small = work / f"bench2-{a.size}.svs", work / f"bench2-{a.size // 4}.svs"
    if a.regions:
        return regions(a, work, big)
    for p, n in ((big, a.size), (small, a.size // 4)):
        if not p.exists():
            t0 = time.perf_counter()
            make_slide(p, n)
            print(f"generated {p.name} ({n} x {n} px, {p.stat().st_size / 2**20:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    ours = spawn("ours", big, work / "ours", a)
    positions = ours.pop("positions")
    if a.naive_max:
        positions = [positions[i] for i in np.linspace(0, len(positions) - 1, min(a.naive_max, len(positions))).astype(int)]
    (work / "positions.json").write_text(json.dumps(positions))
    naive = spawn("naive", big, work / "naive", a, work / "positions.json")
    small_run = spawn("ours", small, work / "ours-small", a)
    small_run.pop("positions")
    r_ours, r_naive = ours["tiles"] / ours["seconds"], naive["tiles"] / naive["seconds"]
    print(f"slide {a.size} x {a.size} px, tiles {a.tile_px} px / {a.tile_um:g} µm, {os.cpu_count()} CPUs")
    print(f"ours  ({a.threads} threads, QC on, store): {ours['tiles']} tissue tiles in {ours['seconds']:.1f} s = "
          f"{r_ours:.0f} tiles/s, peak RSS {ours['peak_rss_mb']:.0f} MB")
    print(f"naive (read_region + checks + PNG):  {naive['tiles']} tiles in {naive['seconds']:.1f} s = {r_naive:.0f} tiles/s, "
          f"peak RSS {naive['peak_rss_mb']:.0f} MB")
    print(f"ratio ours / naive: {r_ours / r_naive:.2f}x")
    print(f"peak RSS of ours: {ours['peak_rss_mb']:.0f} MB on {a.size} px vs {small_run['peak_rss_mb']:.0f} MB on "
          f"{a.size // 4} px (16x fewer pixels, {small_run['tiles']} tiles)")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def regions(a, work, big):
    """Tiling with a many-vertex region file against without, same slide, alternating order."""
    if not big.exists():
        make_slide(big, a.size)
    roi = work / "regions" / "bench.geojson"
    roi.parent.mkdir(exist_ok=True)
    write_regions(roi, a.size, a.vertices)
    plain, with_roi = [], []
    for k in range(a.repeats):
        for kind in (("plain", "roi") if k % 2 == 0 else ("roi", "plain")):
            res = spawn("ours", big, work / f"ours-{kind}", a, roi_file=roi if kind == "roi" else None)
            (with_roi if kind == "roi" else plain).append(res)
    t_plain = float(np.median([r["seconds"] for r in plain]))
    t_roi = float(np.median([r["seconds"] for r in with_roi]))
    same = plain[0]["positions"] == with_roi[0]["positions"]
    print(f"slide {a.size} x {a.size} px, tiles {a.tile_px} px / {a.tile_um:g} µm, {a.threads} threads, "
          f"{os.cpu_count()} CPUs; region file {roi.stat().st_size / 2**20:.1f} MB, {a.vertices} vertices + hole + "
          f"51 Ignore* regions")
    print(f"without regions: {plain[0]['tiles']} tiles, median {t_plain:.1f} s of {[round(r['seconds'], 1) for r in plain]}")
    print(f"with regions:    {with_roi[0]['tiles']} tiles, median {t_roi:.1f} s of "
          f"{[round(r['seconds'], 1) for r in with_roi]}; same positions: {same}")
    print(f"ratio with / without: {t_roi / t_plain:.3f}")
    if not a.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
