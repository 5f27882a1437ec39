"""A run's snapshots: the networks kept at every ``snap_kimg``, their quality measured while the
run trains (``gan.metrics``), and the choice of the network everything downstream uses
(``generate.snapshot``: last, best or a kimg).

Files in the run directory:
  snapshots/network-<kimg>.pt   G, D, G_ema and the loss state at that snapshot (the checkpoint
                                format, without optimiser and random-number states); the last
                                ``gan.keep_snapshots`` are kept, and always the best
  metrics.jsonl                 one line per snapshot: kimg, the snapshot's file, each metric's
                                value, the evaluation's time and its share of the training time
                                since the previous snapshot. The series lives in the checkpoint
                                and the file is rewritten from it at every snapshot, so a resumed
                                run's file is the uninterrupted run's.
  selected.pt                   (rule select_snapshot) the chosen network with a ``selection``
                                record: the choice, its kimg, the tracked metric and its value

The metrics never draw from the training's random-number streams (their latents, conditions and
noise come from generators of their own, seeded per batch), so a run trains the same networks
with or without them. Under ``torchrun`` every rank generates and embeds its share of the
batches; rank 0 gathers the features and computes the values, and the ranks meet at the
snapshot's barrier as before.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from histosynth.torch_utils import distributed as tdist
from histosynth.utils import UserError, atomic_path

log = logging.getLogger(__name__)

SNAPSHOT_DIR = "snapshots"
METRIC_BATCH = 64
WEIGHT_KEYS = {"inception-v3": "inception_weights", "uni": "uni_weights", "phikon": "phikon_weights"}
# the value a metric name tracks (lower is better for each)
TRACKED = {"fid": "fid", "kid": "kid", "pr": "one_minus_precision"}


def snapshot_name(nimg: int) -> str:
    return f"network-{nimg / 1000:08.3f}kimg.pt"


def snapshot_kimg(name: str) -> float:
    return float(name[len("network-"):-len("kimg.pt")])


def kept_snapshots(run_dir) -> list[Path]:
    """The snapshot files of a run, by kimg."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    return sorted(folder.glob("network-*kimg.pt"), key=lambda p: snapshot_kimg(p.name)) if folder.is_dir() else []


def snapshot_state(state: dict) -> dict:
    """A checkpoint's state as a kept snapshot: without the optimisers and random-number states."""
    return {k: v for k, v in state.items() if k not in ("opt_G", "opt_D", "rng", "sample_gen")}


def prune(run_dir, series: list[dict], keep, current: str) -> list[str]:
    """Delete the snapshot files beyond the last `keep` (an int; "all" keeps every one), never
    the best by the tracked metric; the names deleted."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if keep == "all" or not folder.is_dir():
        return []
    files = [p.name for p in kept_snapshots(run_dir)]
    keepers = set(files[-int(keep):]) | {current}
    b = best_record(series)
    if b is not None:
        keepers.add(b["snapshot"])
    gone = [f for f in files if f not in keepers]
    for f in gone:
        (folder / f).unlink()
    return gone


def tracked_value(record: dict) -> float | None:
    v = record.get(record.get("tracked", ""))
    return None if v is None or not math.isfinite(v) else float(v)


def best_record(series: list[dict]) -> dict | None:
    """The record of lowest tracked value (the earliest on a tie); None without values."""
    scored = [r for r in series if tracked_value(r) is not None]
    return min(scored, key=lambda r: (tracked_value(r), r["kimg"])) if scored else None


def write_series(run_dir, series: list[dict]) -> None:
    with atomic_path(Path(run_dir) / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in series))


class SnapshotMetrics:
    """The metrics of ``gan.metrics`` at each snapshot, against a fixed sample of the run's real
    training tiles, in ``gan.metrics_extractor``'s feature space."""

    def __init__(self, kind, opts: dict, device, world: int, rank: int, files: dict | None = None):
        self.names = list(opts["metrics"])
        self.enabled = bool(self.names)
        self.kind, self.o, self.device, self.world, self.rank = kind, opts, device, world, rank
        self.series: list[dict] = []
        if not self.enabled:
            return
        from histosynth.evaluate.features import extractor_function

        files = files or {}
        ex = opts["metrics_extractor"]
        eopts = {}
        if ex == "domain" and not files.get("reference"):
            raise UserError("gan.metrics in the domain feature space needs the reference classifier "
                            "(histosynth train-gan --reference results/evaluate/reference_classifier.pt); or set "
                            "gan.metrics_extractor to inception-v3, uni or phikon with its weights file")
        if ex in WEIGHT_KEYS:
            eopts[WEIGHT_KEYS[ex]] = files.get("weights")
        self.extractor_id, self.extract = extractor_function(ex, eopts, files.get("reference"), device)
        self.n = int(opts["metrics_samples"])
        self.real = None
        if rank == 0:
            t0 = time.time()
            n_real = min(self.n, len(kind.tiles))
            pick = np.sort(np.random.default_rng(opts["seed"]).choice(len(kind.tiles), n_real, replace=False))
            reals = [kind.source.get(torch.from_numpy(pick[i:i + 256])).permute(0, 2, 3, 1).cpu().numpy()
                     for i in range(0, n_real, 256)]
            self.real = self.extract(np.concatenate(reals))
            log.info("snapshot metrics %s: %d real training tiles embedded by %s in %.1f s", self.names, n_real,
                     self.extractor_id, time.time() - t0)

    def load(self, series: list[dict] | None) -> None:
        self.series = list(series or [])

    @torch.no_grad()
    def _fake_features(self, G_ema) -> np.ndarray | None:
        """Every rank's share of the n generated tiles, embedded; rank 0 gets all of them in order."""
        n_batches = -(-self.n // METRIC_BATCH)
        mine = []
        base = self.o["seed"] * 1_000_003 + 17
        fork = [self.device] if self.device.type == "cuda" else []
        for b in range(self.rank, n_batches, self.world):
            m = min(METRIC_BATCH, self.n - b * METRIC_BATCH)
            gen = torch.Generator().manual_seed(base + b)
            with torch.random.fork_rng(devices=fork):
                torch.manual_seed(base + b)
                imgs = self.kind.metric_batch(G_ema, m, gen)
            mine.append((b, self.extract(imgs)))
        gathered = tdist.all_gather(mine, self.world)
        if self.rank != 0:
            return None
        parts = sorted((b, f) for rank_parts in gathered for b, f in rank_parts)
        return np.concatenate([f for _, f in parts])

    def evaluate(self, G_ema, cur_nimg: int, train_sec: float, snapshot: str) -> dict | None:
        """The metrics of G_ema now (rank 0: the record, appended to the series; other ranks: None)."""
        if not self.enabled:
            return None
        from histosynth.evaluate import metrics as M

        t0 = time.time()
        fake = self._fake_features(G_ema)
        if self.rank != 0:
            return None
        rec = {"kimg": cur_nimg / 1000, "snapshot": snapshot, "extractor": self.extractor_id,
               "n_real": len(self.real), "n_fake": len(fake), "tracked": TRACKED[self.names[0]]}
        for name in self.names:
            if name == "fid":
                rec["fid"] = M.fid(self.real, fake)
            elif name == "kid":
                rec["kid"], rec["kid_std"] = (float(v) for v in M.kid(self.real, fake, subsets=50, subset_size=1000))
            elif name == "pr":
                p, r = M.precision_recall(self.real[:5000], fake[:5000])
                rec.update(precision=float(p), recall=float(r), one_minus_precision=1 - float(p))
        eval_sec = time.time() - t0
        rec.update(eval_sec=eval_sec, train_sec=train_sec, eval_share=eval_sec / max(train_sec, 1e-9), time=time.time())
        self.series.append(rec)
        log.info("snapshot %.3g kimg: %s (%.1f s, %.0f%% of the training time since the last snapshot)",
                 cur_nimg / 1000, ", ".join(f"{k} {rec[k]:.4g}" for k in ("fid", "kid", "precision", "recall")
                                             if k in rec), eval_sec, 100 * rec["eval_share"])
        return rec


def read_series(run_dir) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def choose(run_dir, choice) -> tuple[Path, dict]:
    """The network file of `choice` (last | best | a kimg) in the run directory, and the
    selection record (choice, kimg, file, tracked metric and its value where measured)."""
    from histosynth.gan import checkpoint as ckpt

    run_dir = Path(run_dir)
    final = run_dir / "network.pt"
    series = read_series(run_dir)
    meta = ckpt.read_metadata(final)
    last_kimg = meta.get("cur_nimg", 0) / 1000
    by_kimg = {round(r["kimg"], 3): r for r in series}
    kept_kimg = {round(snapshot_kimg(p.name), 3): p for p in kept_snapshots(run_dir)}
    if choice in (None, "last"):
        path, kimg = final, last_kimg
    elif choice == "best":
        b = best_record(series)
        if b is None:
            why = ("it imported a network instead of training one (gan.pretrained)" if meta.get("imported")
                   and not series else "gan.metrics was empty while it trained, so no snapshot was measured")
            raise UserError(f"generate.snapshot: best needs the snapshot metrics of {run_dir}, and {why}. Set "
                            f"gan.metrics (e.g. [fid]) and train again, or choose last or a kimg of "
                            f"{sorted(kept_kimg) or [last_kimg]}")
        path, kimg = run_dir / SNAPSHOT_DIR / b["snapshot"], b["kimg"]
        if not path.is_file():
            raise UserError(f"{path}, the best snapshot of {run_dir}, is gone; train again or choose another")
    else:
        kimg = round(float(choice), 3)
        if kimg in kept_kimg:
            path = kept_kimg[kimg]
        elif abs(kimg - last_kimg) < 1e-6:
            path = final
        else:
            raise UserError(f"generate.snapshot: {choice:g} kimg is not a kept snapshot of {run_dir}; kept: "
                            f"{', '.join(f'{k:g}' for k in sorted(kept_kimg)) or 'none'} (and the last, "
                            f"{last_kimg:g}); keep more with gan.keep_snapshots")
    rec = by_kimg.get(round(kimg, 3), {})
    selection = {"choice": "last" if choice in (None, "last") else choice if choice == "best" else float(choice),
                 "kimg": kimg, "file": str(path), "last_kimg": last_kimg}
    if rec:
        selection.update(metric=rec["tracked"], value=tracked_value(rec), extractor=rec["extractor"],
                         metrics={k: rec[k] for k in ("fid", "kid", "precision", "recall") if k in rec})
    return path, selection


def select(run_dir, choice, out) -> dict:
    """Write the network of `choice` to `out` with its ``selection`` record; the record."""
    from histosynth.gan import checkpoint as ckpt

    path, selection = choose(run_dir, choice)
    state = ckpt.load(path)
    ckpt.save(out, dict(state, selection=selection))
    log.info("%s: snapshot %s -> %s (%g kimg%s)", run_dir, selection["choice"], out, selection["kimg"],
             f", {selection['metric']} {selection['value']:.4g}" if selection.get("value") is not None else "")
    return selection
