"""The conditioning spec: how a tile's metadata becomes the GAN's condition vector ``c``.

Saved inside every network checkpoint, so generation needs nothing else.

* ``class``: one-hot of one categorical column (default ``label``).
* ``attributes``: concatenated one-hots of several categorical columns (AttributeGAN-style).
* ``vector``: numeric columns taken as they are. The spec keeps each training patient's mean
  vector and label (``extra["table"]``), so generation can draw from the cohort's vectors.
* ``expression``: the β-VAE posterior mean of each tile's patient (or slide) profile
  (RNA-GAN), columns ``z_mu_*``; optionally plus ``noise`` x the posterior σ (``z_sd_*``)
  per sample while training. The spec keeps every training key's embedding and label,
  so generation from the cohort's profiles needs only the checkpoint.
* ``none``: unconditional.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from histosynth.utils import UserError


@dataclass
class ConditioningSpec:
    kind: str
    columns: list = field(default_factory=list)
    categories: dict = field(default_factory=dict)  # column -> sorted category list
    extra: dict = field(default_factory=dict)  # expression: key, noise, sd_columns, table

    @property
    def dim(self) -> int:
        if self.kind in ("class", "attributes"):
            return sum(len(self.categories[c]) for c in self.columns)
        if self.kind in ("vector", "expression"):
            return len(self.columns)
        return 0

    @classmethod
    def fit(cls, kind: str, index: pd.DataFrame, columns=None, noise: float = 0.0) -> ConditioningSpec:
        if kind == "none":
            return cls("none")
        if kind == "expression":
            mu = sorted(c for c in index.columns if c.startswith("z_mu_"))
            if not mu or "expression_key" not in index.columns:
                raise UserError("gan.conditioning: expression needs the tiles joined with the β-VAE embeddings "
                                "(histosynth train-gan --embeddings results/expression/embeddings.parquet)")
            sd = [c.replace("z_mu_", "z_sd_") for c in mu]
            per_key = index.drop_duplicates("expression_key")
            table = {str(r["expression_key"]): {"mu": [float(r[c]) for c in mu], "label": str(r.get("label", "")),
                                                "patient_id": str(r["patient_id"])} for _, r in per_key.iterrows()}
            return cls("expression", mu, {}, {"noise": float(noise), "sd_columns": sd, "table": table})
        if kind == "class":
            columns = list(columns or ["label"])[:1]
        if not columns:
            raise UserError(f"gan.conditioning: {kind} needs gan.condition_columns")
        missing = [c for c in columns if c not in index.columns]
        if missing:
            raise UserError(f"gan.condition_columns {missing} are not columns of the tile index / sample sheet "
                            f"(have: {sorted(index.columns)})")
        if kind in ("class", "attributes"):
            cats = {c: sorted(map(str, index[c].unique())) for c in columns}
            return cls(kind, list(columns), cats)
        if kind == "vector":
            bad = [c for c in columns if not pd.api.types.is_numeric_dtype(index[c])]
            if bad:
                raise UserError(f"gan.conditioning: vector needs numeric condition_columns; {bad} are not numeric "
                                f"(use attributes for categorical columns)")
            per = index.groupby("patient_id")
            table = {str(p): {"mu": [float(v) for v in g[columns].mean().to_numpy()],
                              "label": str(g["label"].iloc[0]) if "label" in g.columns else ""} for p, g in per}
            return cls(kind, list(columns), {}, {"table": table})
        raise UserError(f"unknown gan.conditioning {kind!r}; use class, attributes, vector or none")

    def encode(self, df: pd.DataFrame) -> np.ndarray:
        n = len(df)
        if self.kind == "none":
            return np.zeros((n, 0), np.float32)
        if self.kind in ("vector", "expression"):
            return df[self.columns].to_numpy(np.float32, copy=True)
        parts = []
        for c in self.columns:
            cats = self.categories[c]
            vals = df[c].astype(str).to_numpy()
            unknown = sorted(set(vals) - set(cats))
            if unknown:
                raise UserError(f"condition column {c!r}: value(s) {unknown[:5]} were not seen in training ({cats})")
            onehot = np.zeros((n, len(cats)), np.float32)
            onehot[np.arange(n), [cats.index(v) for v in vals]] = 1
            parts.append(onehot)
        return np.concatenate(parts, 1)

    def conditions(self) -> list[dict]:
        """Every named condition to sample (classes; for attributes, all combinations)."""
        if self.kind in ("class", "attributes"):
            combos = [{}]
            for c in self.columns:
                combos = [dict(d, **{c: v}) for d in combos for v in self.categories[c]]
            return combos
        return [{}]

    @staticmethod
    def name(cond: dict) -> str:
        return ",".join(f"{v}" for v in cond.values()) or "all"

    def to_dict(self):
        return asdict(self)

    def sd(self, df: pd.DataFrame) -> np.ndarray:
        """Posterior σ per row (expression), for the training-time noise."""
        return df[self.extra["sd_columns"]].to_numpy(np.float32)

    def key_vectors(self, keys) -> np.ndarray:
        """Condition vectors of training keys (patients or slides) by name."""
        table = self.extra["table"]
        unknown = [k for k in keys if k not in table]
        if unknown:
            raise UserError(f"no expression embedding for {unknown[:5]} in this network (it knows {len(table)} keys)")
        return np.array([table[k]["mu"] for k in keys], np.float32)

    @classmethod
    def from_dict(cls, d):
        return cls(**d)
