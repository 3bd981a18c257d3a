"""svd: the paper's SVD / weighting ablation (METHOD.md §2 "Also saved", §6 "Ablation"),
checked against independent scikit-learn calls, hand cosines and a hand RSA."""

from __future__ import annotations

import math

import _synthetic as syn
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.decomposition import TruncatedSVD
from test_analysis import _authors_rsa

from pipeline import paths, rsa, svd
from pipeline.config import ConfigError
from pipeline.options import Options


def _counts(seed=0, shape=(12, 30)):
    rng = np.random.default_rng(seed)
    return sp.csr_matrix(rng.poisson(0.6, size=shape).astype(np.float64))


def test_svd_embedding_is_sklearns_truncated_svd_and_clips_to_the_matrix():
    m = _counts()
    emb, used = svd.svd_embedding(m, 5, 42)
    assert used == 5
    assert np.array_equal(emb, TruncatedSVD(n_components=5, random_state=42).fit_transform(m))
    emb, used = svd.svd_embedding(m, 600, 42)  # 12 rows: at most 11 components
    assert used == 11 and emb.shape == (12, 11)
    assert np.array_equal(emb, TruncatedSVD(n_components=11, random_state=42).fit_transform(m))


def test_variants_by_hand():
    c = np.array([[2, 0, 1, 0], [1, 1, 0, 0], [0, 3, 0, 1], [0, 0, 2, 2]], dtype=float)
    out = svd.variants(sp.csr_matrix(c), [2], 42)
    assert list(out) == svd.variant_names([2]) == ["counts", "ppmi", "svd2_counts", "svd2_ppmi"]

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total, rs, cs = c.sum(), c.sum(axis=1), c.sum(axis=0)
    p = [[max(math.log(c[i, j] * total / (rs[i] * cs[j])), 0.0) if c[i, j] else 0.0 for j in range(4)]
         for i in range(4)]
    for i in range(4):
        for j in range(4):
            assert out["counts"][0][i, j] == pytest.approx(cos(c[i], c[j]), abs=1e-6)
            assert out["ppmi"][0][i, j] == pytest.approx(cos(p[i], p[j]), abs=1e-6)
    emb = TruncatedSVD(n_components=2, random_state=42).fit_transform(sp.csr_matrix(np.array(p)))
    assert out["svd2_ppmi"][1] == 2 and out["counts"][1] is None
    assert out["svd2_ppmi"][0][0, 3] == pytest.approx(cos(emb[0], emb[3]), abs=1e-6)


def test_stage_writes_every_layer_from_zero_and_matches_a_hand_computation(make_config):
    common = {"methods": ["paper"], "paper_pairs": 200, "bootstrap": 0, "nn_k": [3], "split_half": False}
    off = syn.config(make_config, models=("m1", "m2"), hidden={"strategies": ["meaning"]}, rsa=common)
    cfg = syn.config(make_config, models=("m1", "m2"), hidden={"strategies": ["meaning"]},
                     rsa={**common, "svd_variants": True, "svd_dims": [3, 600]})
    data = syn.build(off, n_layers=2)
    words = data["words"]
    rsa.run(off, Options())
    assert not paths.result_table(off, "svd_variants").exists()
    rsa.run(cfg, Options())  # turning the ablation on leaves the finished RSA cells valid
    df = pd.read_parquet(paths.result_table(cfg, "svd_variants"))
    assert set(df.layer) == {0, 1, 2} and set(df.paradigm) == {"fc", "fa"} and set(df.model) == {"m1", "m2"}
    assert set(df.variant) == set(svd.variant_names([3, 600]))
    assert len(df) == 2 * 3 * 2 * 6
    assert set(df.query("variant == 'svd600_ppmi'").dims_used) == {29}  # 30 words: clipped, and recorded
    assert set(df.n_pairs) == {200} and set(df.n_words) == {30}
    # by hand: FA counts of m1 -> PPMI (numpy) -> sklearn TruncatedSVD(3, random_state=42) on the
    # rows in alphabetical order -> cosine -> Pearson with hidden layer 0 on the paper's pairs
    counts = sp.load_npz(paths.matrices_dir(cfg, "m1", "fa") / "counts.npz").toarray().astype(np.float64)
    order = sorted(range(len(words)), key=words.__getitem__)
    c = counts[order]
    total, rs, cs = c.sum(), c.sum(axis=1, keepdims=True), c.sum(axis=0, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(c > 0, np.maximum(np.log(c * total / (rs * cs)), 0), 0)
    emb = TruncatedSVD(n_components=3, random_state=42).fit_transform(sp.csr_matrix(p))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ref = np.empty((len(words), len(words)))
    ref[np.ix_(order, order)] = emb @ emb.T
    want = _authors_rsa(data["hidden"]["m1", "meaning"][0], ref, words, 200, 0)
    got = df.query("model == 'm1' and paradigm == 'fa' and variant == 'svd3_ppmi' and layer == 0").rsa.item()
    assert got == pytest.approx(want, abs=1e-6)
    # a rerun skips every cell
    part = paths.result_part(cfg, "svd_variants", "m1", "meaning")
    before = part.stat().st_mtime_ns
    rsa.run(cfg, Options())
    assert part.stat().st_mtime_ns == before


def test_svd_dims_are_validated(make_config):
    with pytest.raises(ConfigError, match=r"rsa\.svd_dims.*distinct dimensions"):
        make_config(rsa={"svd_dims": [100, 0]})
