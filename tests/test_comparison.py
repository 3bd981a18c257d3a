"""comparison: fast exact ranks, compare() against scipy and rsatoolbox, the paper's sampled
pairs, NN@k against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats as ss
from rsatoolbox.rdm import RDMs
from rsatoolbox.rdm import compare as rsa_compare

from pipeline import comparison
from pipeline.similarity import centered_cosine


def _f32_centered(x, rows=None):
    return centered_cosine(x, rows, compute=np.float32)


def _sym(n, seed, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 5))
    s = x @ x.T
    if ties:
        s = np.round(s)
    return s.astype(dtype)


def _rdm(sim_vec):
    return RDMs((1.0 - np.asarray(sim_vec, dtype=np.float64))[None, :])


# ---------------------------------------------------------------- ranks and compare

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_rank_equals_rankdata_with_ties(seed):
    rng = np.random.default_rng(seed)
    v = rng.integers(-3, 4, 2000).astype(np.float32)
    v[:5] = -0.0
    v[5:9] = 0.0
    v[9] = np.inf
    v[10] = -np.inf
    assert np.array_equal(comparison.rank(v), ss.rankdata(v))
    w = rng.standard_normal(5000).astype(np.float32)
    assert np.array_equal(comparison.rank(w), ss.rankdata(w))
    ranks, norm = comparison.Ranker()(v)
    centered = ss.rankdata(v) - ss.rankdata(v).mean()
    assert norm == pytest.approx(np.sqrt(centered @ centered), rel=1e-12)


@pytest.mark.parametrize("v", [[1, 1, 1, 1], [0, 1, 2, 2], [2, 2, 0, 1], [5, 3], [3, 3], [1, 2, 2, 3, 3, 3, 4, 4]])
def test_fast_rank_tie_runs_at_the_edges(v):
    v = np.array(v, dtype=np.float32)
    ranks, norm = comparison.Ranker()(v)
    expected = ss.rankdata(v)
    assert np.array_equal(ranks, expected)
    assert norm == pytest.approx(np.sqrt(np.sum((expected - expected.mean()) ** 2)), abs=1e-12)


def test_ranker_reuses_buffers_correctly():
    ranker = comparison.Ranker()
    a = np.array([3, 1, 2, 2], dtype=np.float32)
    b = np.array([0.5, 0.1, 0.9, 0.7], dtype=np.float32)
    assert np.array_equal(ranker(a)[0], ss.rankdata(a))
    assert np.array_equal(ranker(b)[0], ss.rankdata(b))


@pytest.mark.parametrize("ties", [False, True])
def test_compare_equals_scipy_and_rsatoolbox(ties):
    n = 40
    a, b = _sym(n, 0, ties), _sym(n, 1, ties)
    b = (a + 2 * b).astype(np.float32)
    iu = np.triu_indices(n, 1)
    rho = comparison.compare(a, b, "spearman")
    r = comparison.compare(a, b, "pearson")
    assert rho == pytest.approx(ss.spearmanr(a[iu], b[iu])[0], abs=1e-6)
    assert r == pytest.approx(ss.pearsonr(a[iu].astype(float), b[iu].astype(float))[0], abs=1e-6)
    assert rho == pytest.approx(rsa_compare(_rdm(a[iu]), _rdm(b[iu]), method="spearman")[0, 0], abs=1e-6)
    assert r == pytest.approx(rsa_compare(_rdm(a[iu]), _rdm(b[iu]), method="corr")[0, 0], abs=1e-6)
    assert comparison.compare(a[iu], b[iu], "spearman") == pytest.approx(rho, abs=1e-12)


def test_compare_masks_nan_pairs_like_rsatoolbox():
    n = 30
    a, b = _sym(n, 3, ties=True), _sym(n, 4)
    a[[2, 7]] = np.nan
    a[:, [2, 7]] = np.nan
    iu = np.triu_indices(n, 1)
    va, vb = a[iu], b[iu]
    keep = np.isfinite(va)
    assert keep.sum() == (n - 2) * (n - 3) // 2
    expected = ss.spearmanr(va[keep], vb[keep])[0]
    assert comparison.compare(a, b, "spearman") == pytest.approx(expected, abs=1e-6)
    vb_nan = np.where(keep, vb, np.nan)
    tool = rsa_compare(_rdm(va), _rdm(vb_nan), method="spearman")[0, 0]
    assert comparison.compare(a, b, "spearman") == pytest.approx(tool, abs=1e-6)
    assert comparison.compare(a, b, "pearson") == pytest.approx(
        rsa_compare(_rdm(va), _rdm(vb_nan), method="corr")[0, 0], abs=1e-6)


def test_paper_mode_matches_method_formula():
    """METHOD.md §6: rng.choice(M, size, replace=False), off[i] = i(2N-i-1)//2,
    i = searchsorted(off, k, 'right') - 1, j = i + 1 + (k - off[i]); Pearson on those pairs."""
    n, size, seed = 60, 400, 0
    a, b = _sym(n, 5), _sym(n, 6)
    b = (a + b).astype(np.float32)
    m = n * (n - 1) // 2
    k = np.random.default_rng(seed).choice(m, size, replace=False)
    off = np.array([i * (2 * n - i - 1) // 2 for i in range(n)])
    i = np.searchsorted(off, k, side="right") - 1
    j = i + 1 + (k - off[i])
    assert (i < j).all() and (j < n).all()
    expected = ss.pearsonr(a[i, j].astype(float), b[i, j].astype(float))[0]
    assert comparison.compare(a, b, "paper", n_pairs=size, seed=seed) == pytest.approx(expected, abs=1e-9)
    iu = np.triu_indices(n, 1)
    assert comparison.compare(a[iu], b[iu], "paper", n_pairs=size, seed=seed) == pytest.approx(expected, abs=1e-9)
    assert comparison.compare(a, b, "paper", n_pairs=10**6) == pytest.approx(comparison.compare(a, b, "pearson"), abs=1e-12)


def test_compare_rejects_bad_input():
    with pytest.raises(ValueError, match="method"):
        comparison.compare(np.eye(3), np.eye(3), "kendall")
    with pytest.raises(ValueError, match="upper triangle"):
        comparison.compare(np.ones(4), np.ones(4))


def test_layer_similarity_equals_centered_cosine():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 16)) + 2).astype(np.float16)
    x[3] = x[:, :].astype(np.float32).mean(axis=0)
    assert np.allclose(_f32_centered(x), centered_cosine(x.astype(np.float64)), atol=2e-6)
    rows = np.arange(0, 50, 2)
    assert np.allclose(_f32_centered(x, rows), centered_cosine(x.astype(np.float64), rows), atol=2e-6)


# ---------------------------------------------------------------- NN@k

def _brute_top(sim, k):
    n = sim.shape[0]
    out = []
    for r in range(n):
        vals = sim[r].astype(np.float64).copy()
        vals[r] = -np.inf
        out.append(set(np.lexsort((np.arange(n), -vals))[:k].tolist()))
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_nn_overlap_equals_brute_force(ties):
    n = 45
    a, b = _sym(n, 7, ties), _sym(n, 8, ties)
    b = (a + b).astype(np.float32)
    if ties:
        b[:, :] = np.maximum(b, 0)
    ks = [1, 3, 10, 44]
    got = comparison.nn_overlap(a, b, ks, chunk=7)
    for k in ks:
        ta, tb = _brute_top(a, k), _brute_top(b, k)
        expected = np.mean([len(ta[r] & tb[r]) / k for r in range(n)])
        assert got[k] == pytest.approx(expected, abs=1e-12)
    assert got[44] == pytest.approx(1.0)


def test_topk_orders_by_value_then_index():
    sim = np.array([[9, 1, 1, 1, 0], [1, 9, 2, 2, 2], [1, 2, 9, 3, 0], [1, 2, 3, 9, 0], [0, 2, 0, 0, 9]],
                   dtype=np.float32)
    top = comparison.topk(sim, 2, chunk=2)
    assert top.tolist() == [[1, 2], [2, 3], [3, 1], [2, 1], [1, 0]]
