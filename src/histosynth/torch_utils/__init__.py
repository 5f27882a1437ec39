"""The neutral layer under every network stage (as ``torch_utils`` is in stylegan2-ada-pytorch):
processes and devices (:mod:`.distributed`), training statistics (:mod:`.stats`), EMA,
random-number states and snapshots (:mod:`.snapshot`), and image grids and PNGs
(:mod:`.images`; torch-free grids and PNGs: histosynth.images). It imports nothing from the stage packages, which import it by public names."""
