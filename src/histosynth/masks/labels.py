"""Label sets: the ordered class names of a label map and the colour each is drawn in.

A label map is a uint8 (H, W) array of class indices into the set; index 0 is the class that
unannotated pixels get (background)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from histosynth.utils import UserError

# The classes the colour-deconvolution segmenter (histosynth.masks.colour) assigns.
AUTO_LABELS = [{"name": "background", "color": "#ffffff"}, {"name": "stroma", "color": "#e377c2"},
               {"name": "nuclei", "color": "#1f3a93"}]
# PanNuke's nucleus types after background, in the order of its mask channels
PANNUKE_LABELS = [{"name": "background", "color": "#ffffff"}, {"name": "neoplastic", "color": "#d62728"},
                  {"name": "inflammatory", "color": "#2ca02c"}, {"name": "connective", "color": "#1f77b4"},
                  {"name": "dead", "color": "#ffdd00"}, {"name": "epithelial", "color": "#ff7f0e"}]


def _rgb(hexcolor: str, where: str) -> tuple:
    h = hexcolor.lstrip("#")
    if len(h) != 6:
        raise UserError(f"{where}: colour {hexcolor!r} is not #rrggbb")
    return tuple(int(h[i:i + 2], 16) for i in (0, 2, 4))


@dataclass
class LabelSet:
    names: list
    colors: np.ndarray  # (K, 3) uint8

    @classmethod
    def from_config(cls, labels: list, where="masks.labels") -> LabelSet:
        if not labels or len(labels) < 2:
            raise UserError(f"{where}: a label set needs at least two classes (the first is background)")
        if len(labels) > 255:
            raise UserError(f"{where}: at most 255 classes")
        names = [str(x["name"]) for x in labels]
        if len(set(names)) != len(names):
            raise UserError(f"{where}: class names must be unique, got {names}")
        colors = np.array([_rgb(x["color"], f"{where}[{x['name']}]") for x in labels], np.uint8)
        if len({tuple(c) for c in colors}) != len(colors):
            raise UserError(f"{where}: every class needs its own colour (the drawing page maps colours to classes)")
        return cls(names, colors)

    def to_config(self) -> list:
        return [{"name": n, "color": "#{:02x}{:02x}{:02x}".format(*(int(v) for v in c))} for n, c in zip(self.names, self.colors)]

    def __len__(self):
        return len(self.names)

    def colorize(self, maps: np.ndarray) -> np.ndarray:
        """(..., H, W) class indices -> (..., H, W, 3) RGB."""
        maps = np.asarray(maps)
        if maps.size and int(maps.max()) >= len(self):
            raise UserError(f"label map holds class {int(maps.max())} but the label set has {len(self)} classes")
        return self.colors[maps]

    def from_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) RGB drawn in the set's colours -> class indices, each pixel to the nearest
        colour (anti-aliased brush edges land on one of the two classes they blend)."""
        px = np.asarray(rgb, np.int32)[..., :3]
        d = ((px[..., None, :] - self.colors.astype(np.int32)) ** 2).sum(-1)
        return d.argmin(-1).astype(np.uint8)
