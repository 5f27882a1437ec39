"""Writes stylegan2_ada_reference.npz: a tiny random StyleGAN2 built by NVIDIA's own code, its
weights, and the images NVIDIA's generate.py maths gives for a few seeds, classes, psi and noise
modes (and D's scores), for tests/test_stylegan2_import.py to check against.

Run once with a checkout of https://github.com/NVlabs/stylegan2-ada-pytorch (not part of
histosynth; its code is not copied here):

    python tests/data/make_stylegan2_reference.py --nvidia-repo PATH/stylegan2-ada-pytorch

Used in making the committed file: commit d72cc7d041b42ec8e806021a205ed9349f87c6a4, torch 2.15 CPU.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

CFG = dict(z_dim=8, c_dim=2, w_dim=16, img_resolution=16, img_channels=3, channel_base=256, channel_max=16,
           num_fp16_res=4, conv_clamp=256, mapping_layers=2, mbstd_group=4)
CASES = [dict(seed=s, class_idx=c, psi=p, noise_mode=n) for s in (0, 1, 2) for c in (0, 1)
         for p, n in ((1.0, "const"), (0.7, "const"), (0.5, "none"))]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nvidia-repo", required=True)
    args = ap.parse_args()
    sys.path.insert(0, args.nvidia_repo)
    from training import networks  # NVIDIA's code, from the user's checkout

    torch.manual_seed(2021)
    k = CFG
    G = networks.Generator(z_dim=k["z_dim"], c_dim=k["c_dim"], w_dim=k["w_dim"], img_resolution=k["img_resolution"],
                           img_channels=3, mapping_kwargs=dict(num_layers=k["mapping_layers"]),
                           synthesis_kwargs=dict(channel_base=k["channel_base"], channel_max=k["channel_max"],
                                                 num_fp16_res=k["num_fp16_res"], conv_clamp=k["conv_clamp"]))
    D = networks.Discriminator(c_dim=k["c_dim"], img_resolution=k["img_resolution"], img_channels=3,
                               channel_base=k["channel_base"], channel_max=k["channel_max"],
                               num_fp16_res=k["num_fp16_res"], conv_clamp=k["conv_clamp"],
                               epilogue_kwargs=dict(mbstd_group_size=k["mbstd_group"]))
    with torch.no_grad():  # trained-looking values: biases, noise strengths and w_avg away from zero
        for net in (G, D):
            for name, p in net.named_parameters():
                if name.endswith("bias") or "noise_strength" in name:
                    p.copy_(torch.randn_like(p) * 0.2)
        G.mapping.w_avg.copy_(torch.randn(k["w_dim"]))
    G.eval().requires_grad_(False)
    D.eval().requires_grad_(False)
    out = {f"G_ema/{n}": t.numpy() for n, t in G.state_dict().items()}
    out.update({f"D/{n}": t.numpy() for n, t in D.state_dict().items()})
    imgs = []
    for case in CASES:  # generate.py's maths
        z = torch.from_numpy(np.random.RandomState(case["seed"]).randn(1, G.z_dim))
        label = torch.zeros([1, G.c_dim])
        label[:, case["class_idx"]] = 1
        img = G(z, label, truncation_psi=case["psi"], noise_mode=case["noise_mode"])
        imgs.append((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255).to(torch.uint8)[0].numpy())
    out["images"] = np.stack(imgs)
    x = torch.from_numpy(np.random.RandomState(7).randn(8, 3, 16, 16).astype(np.float32))
    c = torch.eye(2)[torch.arange(8) % 2]
    out["d_input"], out["d_label"], out["d_score"] = x.numpy(), c.numpy(), D(x, c).numpy()
    out["meta"] = np.array(json.dumps({"cfg": CFG, "cases": CASES}))
    np.savez_compressed(Path(__file__).with_name("stylegan2_ada_reference.npz"), **out)


if __name__ == "__main__":
    main()
