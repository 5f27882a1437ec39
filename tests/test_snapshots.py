"""Steering training: snapshot metrics, the kept snapshots, the choice among them
(generate.snapshot), fine-tuning from a trained network and FreezeD."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from test_gan import tiny_opts
from toydata import toy_index

from histosynth.classify.study import save_reference, train_reference
from histosynth.config import validate
from histosynth.gan import checkpoint as ckpt
from histosynth.gan import networks as N
from histosynth.gan.training.loop import train
from histosynth.gan.training.snapshots import SNAPSHOT_DIR, best_record, choose, read_series, select
from histosynth.utils import UserError


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy cohort and its reference classifier (the domain feature space)."""
    d = tmp_path_factory.mktemp("toy")
    index, _, _ = toy_index(d, 32)
    copts = validate({"classify": {"arch": "shufflenet_v2_x0_5", "steps": 20, "batch": 16}})["classify"]
    model, classes, val = train_reference(index, copts)
    save_reference(model, classes, copts, val, d / "ref.pt")
    return index, {"reference": str(d / "ref.pt")}


def _states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_snapshot_metrics_each_snapshot_identical_on_resume_and_training_unchanged(tmp_path, toy):
    """metrics.jsonl gets one record per snapshot (kimg, file, FID, KID, precision/recall, the
    evaluation's time and share); a run killed after its first snapshot and resumed writes the
    same values; the metrics draw no random numbers from training, so the networks equal those
    of a run without metrics; keep_snapshots keeps the last N and the best."""
    index, files = toy
    m = dict(metrics=["fid", "kid", "pr"], metrics_samples=64)
    a = train(index, tmp_path / "a", tiny_opts(kimg=0.4, snap_kimg=0.1, **m), progress=False, files=files)
    train(index, tmp_path / "b", tiny_opts(kimg=0.2, snap_kimg=0.1, **m), progress=False, files=files)
    b = train(index, tmp_path / "b", tiny_opts(kimg=0.4, snap_kimg=0.1, **m), progress=False, files=files)
    c = train(index, tmp_path / "c", tiny_opts(kimg=0.4, snap_kimg=0.1, keep_snapshots=1), progress=False)
    sa, sb = read_series(tmp_path / "a"), read_series(tmp_path / "b")
    assert [r["kimg"] for r in sa] == [0.112, 0.208, 0.304, 0.4]
    for ra, rb in zip(sa, sb, strict=True):
        assert ra["snapshot"] == rb["snapshot"] and (tmp_path / "a" / SNAPSHOT_DIR / ra["snapshot"]).is_file()
        for k in ("fid", "kid", "kid_std", "precision", "recall", "n_real", "n_fake"):
            assert ra[k] == rb[k], k
        assert ra["n_fake"] == 64 and ra["fid"] > 0 and 0 <= ra["precision"] <= 1
        assert ra["eval_sec"] > 0 and ra["eval_share"] == pytest.approx(ra["eval_sec"] / ra["train_sec"])
    ca, cb, cc = ckpt.load(a), ckpt.load(b), ckpt.load(c)
    for key in ("G", "D", "G_ema"):
        assert _states_equal(ca[key], cb[key]) and _states_equal(ca[key], cc[key]), key
    assert read_series(tmp_path / "c") == [] and (tmp_path / "c" / "metrics.jsonl").read_text() == ""
    assert [p.name for p in (tmp_path / "c" / SNAPSHOT_DIR).iterdir()] == ["network-0000.400kimg.pt"]
    assert len(list((tmp_path / "a" / SNAPSHOT_DIR).iterdir())) == 4
    # a kept snapshot holds the weights of that moment, without optimiser or random-number states
    snap = ckpt.load(tmp_path / "a" / SNAPSHOT_DIR / "network-0000.400kimg.pt")
    assert _states_equal(snap["G_ema"], ca["G_ema"]) and "opt_G" not in snap and "rng" not in snap

    # keep the last one and the best: the best survives the pruning
    d = tmp_path / "d"
    train(index, d, tiny_opts(kimg=0.4, snap_kimg=0.1, keep_snapshots=1, **m), progress=False, files=files)
    best = best_record(read_series(d))["snapshot"]
    assert sorted(p.name for p in (d / SNAPSHOT_DIR).iterdir()) == sorted({best, "network-0000.400kimg.pt"})

    # the training plot shows the metrics and marks the selected snapshot
    from histosynth.commands.report import plot_training

    select(tmp_path / "a", "best", tmp_path / "a" / "selected.pt")
    plot_training(tmp_path / "a" / "stats.jsonl", tmp_path / "plot.png", tmp_path / "a" / "metrics.jsonl",
                  tmp_path / "a" / "selected.pt")
    from PIL import Image

    assert Image.open(tmp_path / "plot.png").size[0] > 1000  # three panels


def test_best_is_the_minimum_of_the_tracked_metric_and_choices_are_recorded(tmp_path):
    """generate.snapshot: best picks the lowest tracked value (the earliest of a tie), a kimg
    picks that snapshot, last the final network; selected.pt carries that network's weights and
    the record; a kimg not kept, and best without metrics, are refused with what to do."""
    index, _, _ = toy_index(tmp_path, 16)
    run = tmp_path / "run"
    train(index, run, tiny_opts(kimg=0.4, snap_kimg=0.1), progress=False)
    files = sorted(p.name for p in (run / SNAPSHOT_DIR).iterdir())
    assert len(files) == 4
    with pytest.raises(UserError, match="gan.metrics was empty"):
        choose(run, "best")
    kimgs = [0.112, 0.208, 0.304, 0.4]
    series = [{"kimg": k, "snapshot": f, "fid": v, "tracked": "fid", "extractor": "domain-x", "eval_sec": 1,
               "train_sec": 10} for k, f, v in zip(kimgs, files, [5.0, 2.0, 3.0, 2.0], strict=True)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in series))
    assert best_record(series)["kimg"] == 0.208
    sel = select(run, "best", run / "selected.pt")
    assert (sel["choice"], sel["kimg"], sel["value"], sel["metric"], sel["last_kimg"]) == ("best", 0.208, 2.0, "fid", 0.4)
    out = ckpt.load(run / "selected.pt")
    assert out["selection"] == sel
    assert _states_equal(out["G_ema"], ckpt.load(run / SNAPSHOT_DIR / files[1])["G_ema"])
    assert not _states_equal(out["G_ema"], ckpt.load(run / "network.pt")["G_ema"])
    assert select(run, 0.304, run / "s2.pt")["file"].endswith(files[2])
    last = select(run, "last", run / "s3.pt")
    assert last["kimg"] == 0.4 and _states_equal(ckpt.load(run / "s3.pt")["G_ema"], ckpt.load(run / "network.pt")["G_ema"])
    with pytest.raises(UserError, match=r"0.25 kimg is not a kept snapshot.*keep_snapshots"):
        choose(run, 0.25)
    # the generator of selected.pt loads like any network
    assert ckpt.load_generator(run / "selected.pt").kind == "class"


def test_metrics_under_two_processes_equal_one_process_evaluation(tmp_path, toy):
    """Under torchrun each rank generates its share of the evaluation batches; the FID rank 0
    records equals the FID of the same snapshot evaluated in one process (the batches' seeds do
    not depend on the number of processes), and the ranks' weights stay identical."""
    from histosynth.gan.training.kinds import StyleGAN2Kind
    from histosynth.gan.training.snapshots import SnapshotMetrics

    index, files = toy
    index.to_parquet(tmp_path / "tiles.parquet")
    opts = tiny_opts(kimg=0.1, snap_kimg=0.05, tick_kimg=0.05, batch=8, metrics=["fid"], metrics_samples=100)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "histosynth.cli", "-q", "train-gan",
                        "--options", json.dumps(opts), "--tiles", str(tmp_path / "tiles.parquet"), "--outdir",
                        str(tmp_path / "ddp"), "--reference", files["reference"]],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    series = read_series(tmp_path / "ddp")
    assert len(series) == 2 and all(s["n_fake"] == 100 for s in series)
    snaps = [json.loads(x) for x in open(tmp_path / "ddp" / "snapshots.jsonl")]
    assert all(s["rank_checksums"][0] == s["rank_checksums"][1] for s in snaps)
    kind = StyleGAN2Kind(index, opts, torch.device("cpu"), 1)
    one = SnapshotMetrics(kind, opts, torch.device("cpu"), 1, 0, files)
    for rec in series:
        G = ckpt.load_generator(tmp_path / "ddp" / SNAPSHOT_DIR / rec["snapshot"]).G
        assert one.evaluate(G, int(rec["kimg"] * 1000), 1.0, rec["snapshot"])["fid"] == pytest.approx(rec["fid"], rel=1e-6)


# --- fine-tuning ---------------------------------------------------------------------------------

def _relabel(index, mapping):
    out = index.copy()
    out["label"] = out["label"].map(mapping)
    return out


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A class network (dark, light) trained on the toy cohort, and an unconditional one."""
    d = tmp_path_factory.mktemp("source")
    index, _, _ = toy_index(d, 16)
    cls = train(index, d / "cls", tiny_opts(kimg=0.2, snap_kimg=0.2, augment="ada", ada_p=0.5), progress=False)
    unc = train(index, d / "unc", tiny_opts(kimg=0.2, snap_kimg=0.2, conditioning="none"), progress=False)
    return index, cls, unc


def _start(index, path, **kw):
    """The fine-tuning start as the training loop builds it, and the freshly built networks."""
    from histosynth.gan.training.finetune import read_start
    from histosynth.gan.training.kinds import StyleGAN2Kind
    from histosynth.runs import RunSpec

    opts = tiny_opts(finetune_from=str(path), **kw)
    start = read_start(RunSpec.of_gan(opts), opts)
    kind = StyleGAN2Kind(index, start.options, torch.device("cpu"), 1)
    torch.manual_seed(0)
    G, D = kind.build()
    fresh_G, fresh_D = {k: v.clone() for k, v in G.state_dict().items()}, {k: v.clone() for k, v in D.state_dict().items()}
    ema, report = start.apply(G, D, kind.spec)
    return G, D, ema, report, fresh_G, fresh_D, kind


def test_finetune_keeps_every_weight_it_says_and_rebuilds_the_label_embedding(source, tmp_path):
    """Same classes: every tensor of G, D and G_ema is the network's. Three classes, two of them
    mapped (finetune_classes) onto the network's: their embedding columns are the network's, the
    third's is new; every other tensor is kept."""
    index, cls, _ = source
    ck = ckpt.load(cls)
    G, D, ema, report, _, _, _ = _start(index, cls)
    assert _states_equal(G.state_dict(), ck["G"]) and _states_equal(D.state_dict(), ck["D"])
    assert _states_equal(ema, ck["G_ema"]) and report["new"] == [] and report["partly_kept"] == []
    assert report["classes"] == {"dark": "dark", "light": "light"}

    three = pd.concat([_relabel(index, {"dark": "a", "light": "c"}), _relabel(index.head(8), {"dark": "b"})])
    G, D, ema, report, fresh_G, fresh_D, kind = _start(three, cls, finetune_classes={"a": "dark", "c": "light"})
    assert kind.spec.categories["label"] == ["a", "b", "c"]
    assert report["classes"] == {"a": "dark", "b": None, "c": "light"}
    assert report["partly_kept"] == ["G.mapping.embed.weight", "D.mapping.embed.weight"]
    for mine, src, fresh, prefix in ((G.state_dict(), ck["G"], fresh_G, "G"), (D.state_dict(), ck["D"], fresh_D, "D"),
                                     (ema, ck["G_ema"], fresh_G, "G_ema")):
        for k, v in mine.items():
            if k == "mapping.embed.weight":
                assert torch.equal(v[:, 0], src[k][:, 0]) and torch.equal(v[:, 2], src[k][:, 1])
                assert torch.equal(v[:, 1], fresh[k][:, 1])  # class b: the new network's column
            else:
                assert torch.equal(v, src[k]), (prefix, k)
    with pytest.raises(UserError, match=r"maps to \['tumour'\], which the network does not know"):
        _start(three, cls, finetune_classes={"a": "tumour"})
    with pytest.raises(UserError, match=r"names \['z'\], which are not this cohort's"):
        _start(three, cls, finetune_classes={"z": "dark"})


def test_finetune_from_an_unconditional_network_starts_as_that_network(source):
    """An unconditional network starting a conditional run: at step 0 the generator makes the
    unconditional network's tiles whatever the class (the new embedding enters G's first mapping
    layer with zero weight); D keeps everything but its condition mapping and projection head."""
    index, _, unc = source
    ck = ckpt.load(unc)
    G, D, ema, report, _, _, _ = _start(index, unc)
    assert report["classes"] == {"dark": None, "light": None}
    assert "G.mapping.fc0.weight" in report["partly_kept"] and "G.mapping.embed.weight" in report["new"]
    assert {k for k in D.state_dict() if f"D.{k}" in report["new"]} == {
        k for k in D.state_dict() if k.startswith(("mapping.", "b4.out."))}
    base = N.Generator(32, 0, 64, 16, 256, 32, 2)
    base.load_state_dict(ck["G_ema"])
    G_ema = N.Generator(32, 2, 64, 16, 256, 32, 2)
    G_ema.load_state_dict(ema)
    z = torch.randn(6, 32, generator=torch.Generator().manual_seed(0))
    want = base.eval()(z, None, noise_mode="const")
    for c in torch.eye(2):
        got = G_ema.eval()(z, c.expand(6, 2), noise_mode="const")
        assert torch.allclose(got, want, atol=1e-5), (got - want).abs().max()  # float rounding of the rescaled weights


def test_finetune_runs_as_stylegan2_ada_resume_freezes_d_and_refuses_what_cannot_carry(source, tmp_path):
    """A fine-tuning run: ADA's p from 0 with ada_kimg at most 100, no EMA ramp-up, the
    architecture from the network; FreezeD leaves the first N blocks bit-identical while the rest
    train; a resume equals the uninterrupted run; another resolution and a mask network are
    refused."""
    index, cls, _ = source
    ck = ckpt.load(cls)
    kw = dict(finetune_from=str(cls), freeze_d=1, ada_kimg=500, augment="ada", channel_max=64)
    out = train(index, tmp_path / "ft", tiny_opts(kimg=0.2, snap_kimg=0.1, **kw), progress=False)
    res = ckpt.load(out)
    opts = json.loads((tmp_path / "ft" / "training_options.json").read_text())
    assert (opts["ada_kimg"], opts["ema_rampup"], opts["channel_max"]) == (100, None, 32)
    assert opts["finetune"]["md5"] and opts["finetune"]["architecture_from_network"] == {"channel_max": 32}
    assert ck["loss"]["augment"]["p"] == 0.5 and 0 <= res["loss"]["augment"]["p"] < 0.01  # p from 0, not 0.5
    assert res["cur_nimg"] == 208
    frozen = [k for k in res["D"] if k.startswith("b16.")]
    assert frozen and all(torch.equal(res["D"][k], ck["D"][k]) for k in frozen)
    assert not torch.equal(res["D"]["b8.conv0.weight"], ck["D"]["b8.conv0.weight"])
    assert not torch.equal(res["G"]["synthesis.b16.conv1.weight"], ck["G"]["synthesis.b16.conv1.weight"])
    # resumed after its first snapshot: the same networks
    train(index, tmp_path / "r", tiny_opts(kimg=0.1, snap_kimg=0.1, **kw), progress=False)
    again = ckpt.load(train(index, tmp_path / "r", tiny_opts(kimg=0.2, snap_kimg=0.1, **kw), progress=False))
    for key in ("G", "D", "G_ema"):
        assert _states_equal(res[key], again[key]), key

    with pytest.raises(UserError, match="makes 16 px tiles but gan.resolution is 32"):
        train(index, tmp_path / "bad", tiny_opts(finetune_from=str(cls), resolution=32), progress=False)
    with pytest.raises(UserError, match="gan.freeze_d 4: the discriminator has 2 blocks"):
        train(index, tmp_path / "bad2", tiny_opts(finetune_from=str(cls), freeze_d=4), progress=False)
    mask = dict(ck, kind="mask")
    ckpt.save(tmp_path / "mask.pt", mask)
    with pytest.raises(UserError, match="is a mask"):
        train(index, tmp_path / "bad3", tiny_opts(finetune_from=str(tmp_path / "mask.pt")), progress=False)
    with pytest.raises(UserError, match="set only one"):
        train(index, tmp_path / "bad4", tiny_opts(finetune_from=str(cls), pretrained=str(cls)), progress=False)


def test_a_stylegan2_ada_pickle_fine_tunes_through_the_workflow(e2e_workdir, tmp_path):
    """gan.finetune_from a stylegan2-ada pickle (written by the tests in its format, classes named
    by pretrained_classes in another order than the cohort's): train_gan and select_snapshot run
    through Snakemake; the network was fine-tuned (its weights moved from the pickle's) and records
    where it started."""
    from e2e import TINY, run, write_config
    from test_stylegan2_import import write_snapshot

    work = tmp_path / "w"
    shutil.copytree(e2e_workdir, work, symlinks=True)
    shutil.rmtree(work / "results" / "gan" / "stylegan2-class")
    torch.manual_seed(3)
    G = N.Generator(16, 2, 32, 32, 256, 32, 2)
    D = N.Discriminator(2, 32, 256, 32)
    write_snapshot(work / "start.pkl", G, D)
    cfg = json.loads(json.dumps(TINY))
    cfg["gan"].update(finetune_from="start.pkl", pretrained_classes=["tumor", "normal"], freeze_d=1)
    write_config(work, cfg)
    res = run(["results/gan/stylegan2-class/selected.pt"], cwd=work)
    assert res.returncode == 0, res.stderr[-3000:]
    opts = json.loads((work / "results/gan/stylegan2-class/training_options.json").read_text())
    ft = opts["finetune"]
    assert ft["tool"] == "stylegan2-ada-pytorch" and ft["classes"] == {"normal": "normal", "tumor": "tumor"}
    assert ft["new"] == [] and (opts["z_dim"], opts["w_dim"]) == (16, 32)
    sel = ckpt.load(work / "results/gan/stylegan2-class/selected.pt")
    assert sel["selection"]["choice"] == TINY["generate"].get("snapshot", "last")
    g0 = G.state_dict()
    assert not torch.equal(sel["G"]["synthesis.b32.conv1.weight"], g0["synthesis.b32.conv1.weight"])
    # the cohort's tumor is the pickle's label index 0: its embedding column started from column 0
    assert np.isfinite(sel["G_ema"]["mapping.embed.weight"].numpy()).all()
    assert all(torch.equal(sel["D"][k], D.state_dict()[k]) for k in sel["D"] if k.startswith("b32."))
