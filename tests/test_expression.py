"""Expression conditioning: matrix parsers, preparation fitted on training patients, the β-VAE,
an expression-conditioned toy GAN, and the profile-specificity statistic."""
import gzip

import numpy as np
import pandas as pd
import pytest
import torch

from histosynth.config import validate
from histosynth.expression.evaluate import profile_specificity
from histosynth.expression.io import read_csv_matrix, read_gct, read_matrix, read_star_counts, read_star_manifest
from histosynth.expression.prepare import apply_transform, attach_embeddings, key_of, prepare
from histosynth.expression.vae import embedding_frame, load_vae, save_vae, train_vae
from histosynth.utils import UserError

GCT = """#1.2
3\t4
Name\tDescription\tGTEX-1117F-0226-SM-5GZZ7\tGTEX-1117F-0426-SM-5EGHI\tGTEX-111CU-1826-SM-5GZYN\tGTEX-111FC-0226-SM-5N9B8
ENSG00000223972.5\tDDX11L1\t0\t0.1\t0.2\t0
ENSG00000227232.5\tWASH7P\t18.5\t4.5\t10.1\t9.3
ENSG00000243485.5\tMIR1302-2HG\t0.5\t0\t1.5\t2.0
"""

STAR = """# gene-model: GENCODE v36
gene_id\tgene_name\tgene_type\tunstranded\tstranded_first\tstranded_second\ttpm_unstranded\tfpkm_unstranded\tfpkm_uq_unstranded
N_unmapped\t\t\t1530406\t1530406\t1530406\t\t\t
N_multimapping\t\t\t3291823\t3291823\t3291823\t\t\t
N_noFeature\t\t\t1658011\t27017006\t27173539\t\t\t
N_ambiguous\t\t\t2680098\t555048\t568412\t\t\t
ENSG00000000003.15\tTSPAN6\tprotein_coding\t{a}\t1000\t1100\t{ta}\t10.1\t11.2
ENSG00000000005.6\tTNMD\tprotein_coding\t4\t2\t2\t{tb}\t0.05\t0.06
ENSG00000000419.13\tDPM1\tprotein_coding\t900\t450\t451\t{tc}\t30.2\t33.3
ENSG00000000457.14\tSCYL3\tlncRNA\t300\t150\t150\t{td}\t1.9\t2.1
"""


def test_gct_reads_only_the_cohorts_samples_gzipped(tmp_path):
    p = tmp_path / "tpm.gct.gz"
    with gzip.open(p, "wt") as fh:
        fh.write(GCT)
    values, genes = read_gct(p, samples=lambda s: s.startswith("GTEX-1117F"))
    assert list(values.index) == ["GTEX-1117F-0226-SM-5GZZ7", "GTEX-1117F-0426-SM-5EGHI"]
    assert list(values.columns) == ["ENSG00000223972.5", "ENSG00000227232.5", "ENSG00000243485.5"]
    assert values.loc["GTEX-1117F-0226-SM-5GZZ7", "ENSG00000227232.5"] == pytest.approx(18.5)
    assert list(genes["gene_name"]) == ["DDX11L1", "WASH7P", "MIR1302-2HG"]
    # key mapping: a GTEx aliquot belongs to the donor (patient) and to the tissue sample (slide)
    assert key_of("GTEX-1117F-0226-SM-5GZZ7", "patient_id", None) == "GTEX-1117F"
    assert key_of("GTEX-1117F-0226-SM-5GZZ7", "slide_id", None) == "GTEX-1117F-0226"
    assert key_of("TCGA-05-4244-01A-01R-1107-07", "patient_id", None) == "TCGA-05-4244"


def test_gct_errors_name_the_problem(tmp_path):
    trunc = tmp_path / "trunc.gct"
    trunc.write_text(GCT.rsplit("\n", 2)[0] + "\n")  # last gene row lost
    with pytest.raises(UserError, match="dimensions line says 3 genes but the file has 2"):
        read_gct(trunc)
    bad = tmp_path / "bad.gct"
    bad.write_text("Name\tDescription\n")
    with pytest.raises(UserError, match="not a GCT file"):
        read_gct(bad)
    with pytest.raises(UserError, match="none of its 4 samples"):
        read_gct(tmp_path / "trunc.gct", samples={"nope"})


def _star(tmp_path, name, **v):
    p = tmp_path / name
    p.write_text(STAR.format(**v))
    return p


def test_star_counts_and_manifest(tmp_path):
    _star(tmp_path, "a.rna_seq.augmented_star_gene_counts.tsv", a=2000, ta=12.5, tb=0.1, tc=40.0, td=3.0)
    _star(tmp_path, "b.rna_seq.augmented_star_gene_counts.tsv", a=10, ta=1.0, tb=0.0, tc=80.0, td=6.0)
    s, genes = read_star_counts(tmp_path / "a.rna_seq.augmented_star_gene_counts.tsv")
    assert list(s.index) == ["ENSG00000000003.15", "ENSG00000000005.6", "ENSG00000000419.13", "ENSG00000000457.14"]
    assert s["ENSG00000000003.15"] == pytest.approx(12.5) and "N_unmapped" not in s.index
    s2, _ = read_star_counts(tmp_path / "a.rna_seq.augmented_star_gene_counts.tsv", column="unstranded")
    assert s2["ENSG00000000003.15"] == 2000
    assert list(genes["gene_type"]) == ["protein_coding"] * 3 + ["lncRNA"]
    (tmp_path / "star.tsv").write_text("sample_id\tpath\nTCGA-AA-0001-01A\ta.rna_seq.augmented_star_gene_counts.tsv\n"
                                       "TCGA-AA-0002-01A\tb.rna_seq.augmented_star_gene_counts.tsv\n")
    values, genes = read_matrix(tmp_path / "star.tsv")  # auto: a STAR manifest
    assert values.shape == (2, 4) and values.loc["TCGA-AA-0002-01A", "ENSG00000000419.13"] == pytest.approx(80.0)
    with pytest.raises(UserError, match="needs columns"):
        read_star_counts(tmp_path / "star.tsv")
    values, _ = read_star_manifest(tmp_path / "star.tsv", samples={"TCGA-AA-0001-01A"})
    assert list(values.index) == ["TCGA-AA-0001-01A"]


def _cohort(n_per_class=10, n_genes=60, seed=0, factors=3, class_effect=2.0):
    """Patients with low-rank profiles: a class program plus `factors` continuous programs."""
    rng = np.random.default_rng(seed)
    load = rng.normal(0, 1, (factors, n_genes))
    cls = np.zeros(n_genes)
    cls[:10] = class_effect
    cls[10:20] = -class_effect
    rows, meta = {}, []
    for label, sign in (("tumor", 1), ("normal", -1)):
        for i in range(n_per_class):
            pid = f"TCGA-{label[:2].upper()}-{i:04d}"
            f = rng.normal(0, 1, factors)
            log = 5 + sign * cls / 2 + f @ load + rng.normal(0, 0.2, n_genes)
            rows[f"{pid}-01A-11R-A00Z-07"] = 2 ** np.clip(log, 0, None) - 1
            meta.append((pid, label))
    values = pd.DataFrame(rows, index=[f"ENSG{i:011d}.1" for i in range(n_genes)]).T
    genes = pd.DataFrame({"gene_id": values.columns, "gene_name": [f"G{i}" for i in range(n_genes)]})
    sheet = pd.DataFrame({"slide_id": [f"{p}-01Z-00-DX1" for p, _ in meta], "patient_id": [p for p, _ in meta],
                          "label": [lab for _, lab in meta]})
    parts = np.array(["train"] * len(meta), dtype=object)
    for label in ("tumor", "normal"):  # last three of each class: test; one val
        idx = [i for i, (_, lab) in enumerate(meta) if lab == label]
        parts[idx[-3:]] = "test"
        parts[idx[-4]] = "val"
    split = pd.DataFrame({"patient_id": sheet["patient_id"], "label": sheet["label"], "partition": parts})
    return values, genes, sheet, split


def _opts(**kw):
    o = validate({"expression": dict({"matrix": "x"}, **kw)})["expression"]
    return o


def test_prepare_fits_on_training_patients_only():
    values, genes, sheet, split = _cohort()
    o = _opts(top_variance=40)
    profiles, tf = prepare(values, genes, sheet, split, o)
    assert len(tf["genes"]) == 40 and tf["fitted_on"]["n_keys"] == (split["partition"] == "train").sum()
    gcols = tf["genes"]
    train = profiles[profiles["partition"] == "train"][gcols]
    assert np.allclose(train.mean(), 0, atol=1e-5) and np.allclose(train.std(ddof=1), 1, atol=1e-4)
    # changing a test patient's values changes neither the gene choice nor the statistics
    v2 = values.copy()
    test_sample = [s for s in v2.index if s.startswith(split.loc[split["partition"] == "test", "patient_id"].iloc[0])]
    v2.loc[test_sample] *= 50
    _, tf2 = prepare(v2, genes, sheet, split, o)
    assert tf2["genes"] == tf["genes"] and np.allclose(tf2["mean"], tf["mean"]) and np.allclose(tf2["std"], tf["std"])
    # new profiles through the saved transform land where the cohort's do; symbols work too
    z = apply_transform(values.iloc[:3], tf)
    assert np.allclose(z.to_numpy(), profiles.set_index("key").loc[[s[:12] for s in values.index[:3]], gcols], atol=1e-4)
    by_symbol = values.iloc[:3].rename(columns=dict(zip(genes["gene_id"], genes["gene_name"])))
    assert np.allclose(apply_transform(by_symbol, tf).to_numpy(), z.to_numpy(), atol=1e-5)
    with pytest.raises(UserError, match="lack"):
        apply_transform(values.iloc[:3, :5], tf)
    with pytest.raises(UserError, match="protein_coding needs gene types"):
        prepare(values, genes, sheet, split, _opts(protein_coding=True))
    with pytest.raises(UserError, match="no expression sample matches"):
        prepare(values.rename(index=lambda s: "X" + s), genes, sheet, split, o)


def test_vae_beats_the_mean_profile_on_held_out_patients(tmp_path):
    values, genes, sheet, split = _cohort(n_per_class=60, n_genes=80, factors=3)
    profiles, tf = prepare(values, genes, sheet, split, _opts(top_variance=None))
    vo = _opts(vae={"hidden": [64, 32], "latent": 6, "epochs": 150, "batch": 32, "beta": 0.5})["vae"]
    model, history, report = train_vae(profiles, vo, progress=False)
    print("VAE reconstruction:", report)
    assert report["test"]["mse"] < 0.6 * report["test"]["mse_mean_profile"], report["test"]
    assert report["test"]["r2"] > 0.4
    save_vae(model, tf, vo, report, tmp_path / "vae.pt")
    m2, tf2, _ = load_vae(tmp_path / "vae.pt")
    emb = embedding_frame(m2, profiles)
    assert emb.shape[1] == 4 + 2 * 6 and tf2["genes"] == tf["genes"]
    # the embedding separates the classes (what the GAN will see)
    from sklearn.linear_model import LogisticRegression

    mu = emb[[c for c in emb.columns if c.startswith("z_mu_")]].to_numpy()
    tr = emb["partition"] == "train"
    acc = LogisticRegression().fit(mu[tr], emb["label"][tr]).score(mu[~tr], emb["label"][~tr])
    assert acc >= 0.9


def test_expression_conditioned_gan_makes_class_appropriate_tiles_from_profiles(tmp_path):
    """Toy tiles of two classes; each patient's profile carries its class. The GAN conditioned
    on the VAE embedding makes tiles of the right class from each class's profiles, including
    profiles of patients it never saw."""
    from sklearn.linear_model import LogisticRegression
    from test_gan import tiny_opts
    from toydata import toy_index

    from histosynth.gan.checkpoint import load_generator
    from histosynth.gan.training.loop import train
    from histosynth.generate.sample import expression_sets

    index, tiles, labels = toy_index(tmp_path, 128)
    # 8 patients per class in the toy index; give them TCGA-style ids and profiles
    index["patient_id"] = index["patient_id"].map(lambda p: f"TCGA-{'DA' if p.endswith('dark') else 'LI'}-{p[1]:0>4}")
    values, genes, _, _ = _cohort(n_per_class=12, n_genes=60, factors=2, class_effect=6.0)
    rename = {}
    for label, short in (("tumor", "DA"), ("normal", "LI")):
        src = [s for s in values.index if s.startswith(f"TCGA-{label[:2].upper()}")]
        for i, s in enumerate(src):
            rename[s] = f"TCGA-{short}-{i:04d}-01A"
    values = values.rename(index=rename)
    pats = sorted({s[:12] for s in values.index})
    sheet = pd.DataFrame({"slide_id": pats, "patient_id": pats,
                          "label": ["dark" if p.startswith("TCGA-DA") else "light" for p in pats]})
    # patients 0-7 of each class have tiles (train); 8-11 are new profiles (test)
    split = sheet.assign(partition=["train" if int(p[-4:]) < 8 else "test" for p in pats])[["patient_id", "label", "partition"]]
    profiles, tf = prepare(values, genes, sheet, split, _opts(top_variance=None))
    vo = _opts(vae={"hidden": [32], "latent": 4, "epochs": 100, "batch": 16})["vae"]
    vae, _, _ = train_vae(profiles, vo, progress=False)
    emb = embedding_frame(vae, profiles)
    joined = attach_embeddings(index, emb)
    assert len(joined) == len(index) and joined["expression_key"].str.startswith("TCGA-").all()
    net = train(joined, tmp_path / "run", tiny_opts(kimg=3.0, snap_kimg=3.0, conditioning="expression",
                                                    expression_noise=0.25), progress=False)
    _net = load_generator(net)
    G, spec = _net.G, _net.spec
    assert spec.kind == "expression" and spec.dim == 4 and set(spec.extra["table"]) == set(index["patient_id"])
    clf = LogisticRegression(max_iter=2000).fit(tiles.reshape(len(tiles), -1) / 255.0, labels)

    def label_share(c, label, n=64):
        with torch.no_grad():
            img = G(torch.randn(n, 32, generator=torch.Generator().manual_seed(1)),
                    torch.as_tensor(c, dtype=torch.float32).reshape(-1, 4).expand(n, -1), noise_mode="const")
        x = ((img.permute(0, 2, 3, 1) * 127.5 + 128).clamp(0, 255) / 255.0).numpy().reshape(n, -1)
        return float((clf.predict(x) == label).mean())

    seen = {}
    for st in expression_sets(spec, per_class=16, seed0=0):
        seen.setdefault(st["meta"]["label"], []).append(label_share(st["c"], st["meta"]["label"]))
    unseen = {}
    for _, r in emb[emb["partition"] == "test"].iterrows():
        mu = r[[c for c in emb.columns if c.startswith("z_mu_")]].to_numpy(np.float32)
        unseen.setdefault(r["label"], []).append(label_share(mu, r["label"]))
    print("class-appropriate share, training profiles:", {k: np.mean(v) for k, v in seen.items()},
          "new profiles:", {k: np.mean(v) for k, v in unseen.items()})
    assert set(seen) == set(unseen) == {"dark", "light"}
    assert min(np.mean(v) for v in seen.values()) >= 0.9
    assert min(np.mean(v) for v in unseen.values()) >= 0.85


def test_profile_specificity_detects_patient_specific_tiles():
    """Features where each patient has its own centre: tiles 'generated' around the right centre
    are closest to their own patient; tiles that ignore the profile are not."""
    rng = np.random.default_rng(0)
    keys = [f"K{i}" for i in range(6)]
    centres = {k: rng.normal(0, 3, 8) for k in keys}
    real = pd.DataFrame({"patient_id": np.repeat(keys, 60)})
    f_real = np.concatenate([centres[k] + rng.normal(0, 1, (60, 8)) for k in keys])
    fake = pd.DataFrame({"expression_key": np.repeat(keys, 40), "label": np.repeat(["a", "a", "a", "b", "b", "b"], 40)})
    good = np.concatenate([centres[k] + rng.normal(0, 1, (40, 8)) for k in keys])
    r = profile_specificity(real, f_real, fake, good, "patient_id", kid_subset=40)
    assert r["share_pairs_closer_to_own"] == 1.0 and r["all_others"]["mean_gap"] > 5
    assert r["all_others"]["p_value_sign_flip"] == 1 / 64 and r["same_class"]["p_value_sign_flip"] == 1 / 64
    assert r["share_pairs_closer_to_own_same_class"] == 1.0 and r["pairs"] == 30
    common = rng.normal(0, 3, 8)  # a generator that ignores the profile
    bad = np.concatenate([common + rng.normal(0, 1, (40, 8)) for _ in keys])
    r = profile_specificity(real, f_real, fake, bad, "patient_id", kid_subset=40)
    assert r["share_pairs_closer_to_own"] < 0.6 and r["all_others"]["p_value_sign_flip"] > 0.1


def test_csv_matrix_and_errors(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("sample_id,G1,G2\ns1,1.5,2\ns2,0,3\n")
    values, genes = read_csv_matrix(p)
    assert values.shape == (2, 2) and values.loc["s2", "G2"] == 3 and list(genes["gene_id"]) == ["G1", "G2"]
    p.write_text("sample_id,G1,G2\ns1,high,2\n")
    with pytest.raises(UserError, match="non-numeric"):
        read_csv_matrix(p)
    with pytest.raises(UserError, match="does not exist"):
        read_matrix(tmp_path / "missing.gct")


def test_matrix_url_is_fetched_resumably_and_checked(tmp_path, monkeypatch):
    """A GCT served over HTTP with a dropped connection, then an HTML page with status 200:
    the file arrives byte-exact, its MD5 is recorded, and it parses."""
    import hashlib
    import subprocess
    import sys

    from httpfaults import FaultServer

    rng = np.random.default_rng(0)
    body = GCT + "".join(f"ENSG{i:011d}.1\tG{i}\t" + "\t".join(f"{v:.3f}" for v in rng.uniform(0, 50, 4)) + "\n"
                         for i in range(3000))
    body = body.replace("3\t4", "3003\t4", 1)
    data = gzip.compress(body.encode())
    with FaultServer({"tpm.gct.gz": data}, {"tpm.gct.gz": ["drop", "html"]}) as srv:
        dest = tmp_path / "resources" / "tpm.gct.gz"
        r = subprocess.run([sys.executable, "-m", "histosynth.expression.fetch", f"{srv.url}/data/tpm.gct.gz", str(dest)],
                           capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert dest.read_bytes() == data and not list(dest.parent.glob("*.partial"))
    assert (tmp_path / "resources" / "tpm.gct.gz.md5").read_text().split()[0] == hashlib.md5(data).hexdigest()
    values, genes = read_gct(dest)
    assert values.shape == (4, 3003)
