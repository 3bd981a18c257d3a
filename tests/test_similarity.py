"""similarity: PPMI by hand, cosine (dense, and sparse with frequent columns in BLAS and rare
ones sparse) against scipy's cdist, centered cosine, pair sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.spatial.distance import cdist

from pipeline import similarity
from pipeline.similarity import alphabetical_pairs, centered_cosine, cosine, ppmi, sample_pairs


def test_ppmi_by_hand():
    c = sp.csr_matrix(np.array([[2, 1, 0], [0, 1, 3]]))
    n = 7
    expected = np.array([[max(math.log(2 * n / (3 * 2)), 0), max(math.log(1 * n / (3 * 2)), 0), 0],
                         [0, max(math.log(1 * n / (4 * 2)), 0), max(math.log(3 * n / (4 * 3)), 0)]])
    np.testing.assert_allclose(ppmi(c).toarray(), expected, rtol=1e-12)


@pytest.mark.parametrize("heavy", [0, 5, None, 10_000])
def test_sparse_cosine_equals_cdist_whatever_the_column_split(monkeypatch, heavy):
    monkeypatch.setattr(similarity, "HEAVY_COLUMN", heavy)
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, size=(40, 300)) * (rng.random((40, 300)) < np.linspace(0.02, 0.9, 300))
    dense[7] = 0
    m = sp.csr_matrix(dense.astype(float))
    before = (m.data.copy(), m.indices.copy(), m.indptr.copy())
    got = cosine(m)
    xn = similarity.l2_normalize_rows(m)
    kept = (xn.data.copy(), xn.indices.copy(), xn.indptr.copy())
    similarity._sparse_gram(xn, np.float32)
    for a, b in zip(before + kept, (m.data, m.indices, m.indptr, xn.data, xn.indices, xn.indptr)):
        np.testing.assert_array_equal(a, b)  # the input is left as it was
    ref = 1 - cdist(dense, dense, "cosine")
    ok = dense.any(axis=1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[np.ix_(ok, ok)], ref[np.ix_(ok, ok)], atol=2e-6)
    assert (got[7] == 0).all()  # an all-zero row has cosine 0 with everything
    np.testing.assert_allclose(cosine(dense.astype(float)), got, atol=2e-6)
    np.testing.assert_allclose(cosine(m, dtype=np.float64)[np.ix_(ok, ok)], ref[np.ix_(ok, ok)], atol=1e-12)


def test_centered_cosine_float32_path_equals_float64():
    x = np.random.default_rng(1).standard_normal((30, 12)) + 3
    rows = np.arange(0, 30, 2)
    mean = x[rows].mean(axis=0)
    ref = 1 - cdist(x - mean, x - mean, "cosine")
    np.testing.assert_allclose(centered_cosine(x, rows, dtype=np.float64), ref, atol=1e-12)
    np.testing.assert_allclose(centered_cosine(x, rows, compute=np.float32), ref, atol=2e-6)


def test_pairs_sampled_over_the_alphabetical_order():
    words = ["pear", "apple", "fig", "kiwi", "date", "lime"]
    order = sorted(range(len(words)), key=words.__getitem__)
    i, j = alphabetical_pairs(words, 7, 0)
    a, b = sample_pairs(len(words), 7, 0)
    assert [(words[x], words[y]) for x, y in zip(i, j)] == [(words[order[x]], words[order[y]]) for x, y in zip(a, b)]
    assert all(words[x] < words[y] for x, y in zip(i, j))
    assert len(set(zip(a.tolist(), b.tolist()))) == 7 and (a < b).all()
