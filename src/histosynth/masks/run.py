"""The masks section with its label set resolved (the mask run itself: histosynth.runs)."""
from __future__ import annotations

import copy

from histosynth.utils import UserError


def resolve_labels(masks: dict) -> dict:
    """`masks` with `labels` filled in from the source when it is null."""
    from histosynth.masks.labels import AUTO_LABELS, PANNUKE_LABELS, LabelSet

    m = copy.deepcopy(masks)
    if not m.get("labels"):
        if m["source"] == "geojson":
            raise UserError("masks.source geojson needs masks.labels: the classes of your annotations (first = what "
                            "unannotated pixels get), e.g. [{name: background, color: '#ffffff'}, {name: tumor, "
                            "color: '#d62728'}, {name: stroma, color: '#e377c2'}]")
        m["labels"] = AUTO_LABELS if m["source"] == "auto" else PANNUKE_LABELS
    elif m["source"] == "auto" and [x["name"] for x in m["labels"]] != [x["name"] for x in AUTO_LABELS]:
        raise UserError("masks.source auto makes maps of the classes background, stroma, nuclei (in that order); "
                        "masks.labels may change their colours but not their names or order")
    LabelSet.from_config(m["labels"])
    return m
