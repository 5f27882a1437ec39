"""The generation stage's commands: bulk tiles per condition with class blending and latent
interpolation, tiles from expression profiles, tiles from label maps (``histosynth generate |
generate-profiles | generate-layout``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from histosynth.utils import UserError

log = logging.getLogger("histosynth")


def tile_meta(tiles) -> dict:
    """The real tiles' size and scale, given to generated tiles."""
    return {"tile_px": int(tiles["tile_px"].iloc[0]), "tile_um": float(tiles["tile_um"].iloc[0]),
            "mpp": float(tiles["mpp"].iloc[0])}


def generate(opts: dict, network, tiles, outdir, out_index, blend_png=None, blend_gif=None, latent_png=None,
             latent_gif=None, blend_mp4=None, progress=True):
    import pandas as pd

    from histosynth.generate.sample import class_blend_grid, latent_interpolation
    from histosynth.generate.sample import generate as generate_tiles
    from histosynth.slides.store import read_index, write_index
    from histosynth.torch_utils.distributed import default_device

    o, dev = opts, default_device()
    df = generate_tiles(network, outdir, o["per_class"], truncation=o["truncation"], seed0=o["seed0"], batch=o["batch"],
                        device=dev, tile_meta=tile_meta(read_index(tiles)), progress=progress, fov_um=o["fov_um"],
                        out_px=o["out_px"], vectors=o["vectors"])
    if blend_png:
        class_blend_grid(network, blend_png, blend_gif, o["blend_seeds"], o["blend_steps"], dev, out_mp4=blend_mp4)
    if latent_png:
        latent_interpolation(network, latent_png, latent_gif, o["blend_seeds"][:2], o["blend_steps"], dev)
    write_index(pd.DataFrame(df), out_index)
    log.info("generated %d tiles: %s", len(df), df["condition"].value_counts().to_dict())


def blend_analysis(opts: dict, network, reference, out_json, out_png, out_layers):
    """``histosynth blend-analysis``: layer-wise class blends (coarse, middle, fine) and the
    reference classifier's probability of the second class along each, with its 0.5 crossing."""
    from histosynth.classify.study import load_reference
    from histosynth.generate.blend import (
        blend_endpoints,
        blend_probability,
        layer_blend_frames,
        layer_groups,
        probability_plot,
    )
    from histosynth.generate.sample import stylegan2_network
    from histosynth.images import grid, save_png
    from histosynth.torch_utils.distributed import default_device
    from histosynth.utils import write_json

    dev = default_device()
    G, spec, _ = stylegan2_network(network, dev)
    model, classes, ref = load_reference(reference, dev)
    target = ref.get("target", "label")  # references written before classify.target predict the label
    ends = blend_endpoints(spec, vary=target)
    if ends is None:
        raise UserError(f"{network} is {spec.kind}-conditioned with fewer than two classes: there is nothing to blend")
    result = blend_probability(G, spec, model, classes, opts["blend_seeds"], opts["blend_analysis_steps"], dev, target)
    if "skipped" in result:
        raise UserError(f"blend analysis of {network}: {result['skipped']}")
    write_json(out_json, result)
    probability_plot(result, out_png)
    groups = layer_groups(G)
    rows = [layer_blend_frames(G, ends[1], ends[2], opts["blend_seeds"][:1], opts["blend_steps"], layers, dev)
            for layers in groups.values()]
    save_png(grid(np.concatenate([np.concatenate(r, 0) for r in rows]), len(rows)), out_layers)  # a row per group
    for g, r in result["groups"].items():
        log.info("blend %s -> %s, %s layers: P(%s) reaches 0.5 at %s", result["from"], result["to"], g,
                 result["class"], "never" if r["crossing"] is None else f"{r['crossing']:.2f}")


def attribute_grids(opts: dict, network, out):
    """``histosynth attribute-grids``: per-attribute interpolation (one attribute varies, the seed
    and the other attributes fixed), a row per attribute value, for an attributes run."""
    from histosynth.generate.blend import attribute_grid
    from histosynth.generate.sample import stylegan2_network
    from histosynth.images import grid, save_png
    from histosynth.torch_utils.distributed import default_device

    dev = default_device()
    G, spec, _ = stylegan2_network(network, dev)
    if spec.kind != "attributes":
        raise UserError(f"{network} is {spec.kind}-conditioned; attribute grids need an attributes run "
                        f"(gan.conditioning: attributes)")
    imgs, names = attribute_grid(G, spec, opts["blend_seeds"][0], opts["blend_steps"], dev)
    save_png(grid(imgs, len(names)), out)
    log.info("attribute interpolation, seed %d, rows: %s", opts["blend_seeds"][0], "; ".join(names))


def generate_profiles(opts: dict, network, tiles, outdir, out_index, embeddings=None, partitions=("test",), vae=None,
                      profiles=None, vae_samples=None, out_sampled=None, per_profile=None, seed0=0, grid=None,
                      progress=True):
    """Tiles from expression profiles (`opts`: the expression section, for per_profile and vae_samples)."""
    from histosynth.generate.profiles import profile_sets
    from histosynth.generate.sample import generate_sets, stylegan2_network
    from histosynth.slides.store import read_index, write_index
    from histosynth.torch_utils.distributed import default_device

    per_profile = per_profile if per_profile is not None else opts["per_profile"]
    vae_samples = vae_samples if vae_samples is not None else opts["vae_samples"]
    dev = default_device()
    G, spec, _ = stylegan2_network(network, dev)
    if spec.kind != "expression":
        raise UserError(f"{network} is {spec.kind}-conditioned; generate-profiles needs an expression-conditioned network")
    vecs, names, metas = profile_sets(embeddings, partitions, profiles, vae, vae_samples, out_sampled, seed0)
    sets = [{"name": n, "c": v, "meta": m, "seeds": np.arange(seed0, seed0 + per_profile)}
            for n, v, m in zip(names, vecs, metas)]
    df = generate_sets(G, sets, outdir, network, batch=64, device=dev, tile_meta=tile_meta(read_index(tiles)),
                       progress=progress)
    write_index(df, out_index)
    if grid:
        from histosynth.report.plots import profile_grid

        profile_grid(df, grid, per_row=min(8, per_profile))
    log.info("generated %d tiles from %d profiles", len(df), len(sets))


def generate_layout(masks: dict, network, index, outdir, out_index, out_heldout, triplets, progress=True):
    from histosynth.generate.from_maps import generate_from_maps, triplet_figure
    from histosynth.masks.labels import LabelSet
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import default_device

    m, idx, out, dev = masks, read_index(index), Path(outdir), default_device()
    train = idx[idx["partition"] == "train"]
    if m["max_maps"] and len(train) > m["max_maps"]:
        train = train.sample(m["max_maps"], random_state=0).sort_index()
    test = idx[idx["partition"] == "test"]
    if len(test) == 0:
        raise UserError("no label maps of test patients: layout fidelity needs held-out maps (check split.test_fraction)")
    test = test.sample(min(len(test), m["eval_maps"]), random_state=0).sort_index()
    bulk = generate_from_maps(network, train, out / "synthetic.tiff", out_index, m["per_map"], seed0=0,
                              device=dev, name="train-maps", progress=progress)
    held = generate_from_maps(network, test, out / "heldout.tiff", out_heldout, 1, seed0=10**6,
                              device=dev, name="heldout-maps", progress=progress)
    triplet_figure(idx, held.sample(min(len(held), m["triplets"]), random_state=0), LabelSet.from_config(m["labels"]),
                   triplets, n=m["triplets"])
    log.info("generated %d tiles from training maps and %d from held-out maps", len(bulk), len(held))


def generate_images(network, seeds, outdir, class_name=None, class_index=None, trunc=1.0, noise_mode="const"):
    """``histosynth generate-images``: one PNG per seed with NVIDIA's seed convention."""
    from histosynth.generate.images import generate_images as make_images
    from histosynth.generate.images import parse_seeds
    from histosynth.torch_utils.distributed import default_device

    paths = make_images(network, parse_seeds(seeds), outdir, class_name, class_index, trunc, noise_mode, default_device())
    log.info("wrote %d images to %s (%s ... %s)", len(paths), outdir, paths[0].name, paths[-1].name)


def project(opts: dict, network, tiles, reference, out_json, out_table, out_npz, out_png, embeddings=None,
            progress=True):
    """``histosynth project``: real tiles projected into a conditional StyleGAN2 run, their
    reconstruction quality and counterfactuals under another condition (generate.project)."""
    from histosynth.generate.project import projection_grid, run_projection
    from histosynth.images import grid, save_png
    from histosynth.slides.store import read_index
    from histosynth.torch_utils.distributed import default_device
    from histosynth.utils import atomic_path, write_json

    o = dict(opts["project"])
    if o["tiles"] < 1:
        raise UserError("generate.project.tiles is 0: set how many real tiles to project (e.g. 64)")
    summary, table, arrays = run_projection(network, read_index(tiles), reference, o, default_device(), progress,
                                            embeddings)
    summary["network"] = str(network)
    with atomic_path(out_npz) as tmp, open(tmp, "wb") as fh:  # read back with np.load(allow_pickle=False)
        np.savez_compressed(fh, **arrays)
    with atomic_path(out_table) as tmp:
        table.to_parquet(tmp, index=False)
    imgs, rows = projection_grid(arrays, o["grid_tiles"])
    save_png(grid(imgs, rows), out_png)
    write_json(out_json, summary)
    rec, base = summary["reconstruction"], summary["mean_image"]
    log.info("projected %d tiles (%.1f s each): PSNR %.2f dB, SSIM %.3f, feature distance %.3f; the class-mean image "
             "%.2f dB, %.3f, %.3f", summary["n_tiles"], summary["seconds_per_tile"], rec["psnr"], rec["ssim"],
             rec["feature_distance"], base["psnr"], base["ssim"], base["feature_distance"])
    for g, v in summary["counterfactual"].items():
        log.info("counterfactual, %s layers: P(target) %.3f -> %.3f, moved towards the target in %.0f%% of tiles",
                 g, v["p_target_start"], v["p_target_end"], 100 * v["moved_towards_target"])
