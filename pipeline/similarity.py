"""Similarity primitives shared by every stage: PPMI, cosine, centered cosine, pair indexing.

One implementation each, so behavioral matrices, hidden-state geometry, baselines,
consensus, RSA and regression all compute the same quantity the same way (METHOD.md §2, §4).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def ppmi(counts: sp.spmatrix) -> sp.csr_matrix:
    """Positive PMI of a count matrix, computed on its nonzero cells only.

    PMI_ij = log(c_ij * N / (rowsum_i * colsum_j)), N = total count; PPMI = max(PMI, 0).
    Plain natural log, no smoothing or shifting (METHOD.md §2).

    Args:
        counts: nonnegative sparse cue x response counts.

    Returns:
        float64 CSR matrix with the same sparsity pattern (zeros where PMI <= 0 are dropped).
    """
    c = sp.csr_matrix(counts, dtype=np.float64)
    c.eliminate_zeros()
    total = c.sum()
    if total == 0:
        return c.copy()
    row = np.asarray(c.sum(axis=1)).ravel()
    col = np.asarray(c.sum(axis=0)).ravel()
    coo = c.tocoo()
    pmi = np.log(coo.data * total / (row[coo.row] * col[coo.col]))
    out = sp.csr_matrix((np.maximum(pmi, 0.0), (coo.row, coo.col)), shape=c.shape)
    out.eliminate_zeros()
    return out


def l2_normalize_rows(x):
    """Rows scaled to unit L2 norm; all-zero rows stay zero (their cosine is 0, not NaN)."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float64)
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
        return sp.diags(inv) @ x
    x = np.array(x, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.where(norms > 0, norms, 1.0)[:, None]
    return x


def cosine(x, dtype=np.float32) -> np.ndarray:
    """Dense N x N cosine similarity between the rows of a dense or sparse matrix.

    Rows are normalized in float64; the product runs in float32 BLAS when `dtype` is
    float32 (one syrk), within float32 rounding of the float64 result. Sparse input goes
    through `_sparse_gram`.
    """
    xn = l2_normalize_rows(x)
    if sp.issparse(xn):
        return _sparse_gram(xn, dtype)
    if np.dtype(dtype) == np.float32:
        a = xn.astype(np.float32)
        return a @ a.T
    return np.asarray(xn @ xn.T, dtype=dtype)


HEAVY_COLUMN: int | None = None
"""Columns with more non-zeros than this go to the dense BLAS product in `_sparse_gram`;
None: `_heavy_threshold` of the row count."""


def _heavy_threshold(n_rows: int) -> int:
    """Non-zeros above which a column is cheaper in the dense product.

    A column with k non-zeros costs about k^2 steps in the sparse product (plus placing its
    k^2 results) and n^2 BLAS steps in the dense one, some 6,000 times cheaper each on one
    core: the break-even is near k = n / 80, measured on the paper-scale FA matrix (5,000 x
    28,528; thresholds 32/64/128/256/512 took 1.10/0.79/1.19/1.51/1.56 s).
    """
    return max(16, n_rows // 80)


def _sparse_gram(x: sp.csr_matrix, dtype) -> np.ndarray:
    """X X^T of a sparse matrix, split by columns (the product is a sum over columns).

    Frequent columns (every column of an FC matrix, a few thousand common associates of an
    FA one) are multiplied densely in float32 BLAS, the long tail of rare ones sparsely,
    and the sparse part is added in place (no dense copy, no index sort).
    """
    x = sp.csr_matrix(x)
    n, m = x.shape
    nnz = np.bincount(x.indices, minlength=m)
    is_heavy = nnz > (HEAVY_COLUMN if HEAVY_COLUMN is not None else _heavy_threshold(n))
    work = np.float32 if np.dtype(dtype) == np.float32 else np.float64
    on_heavy = is_heavy[x.indices]
    rows = np.repeat(np.arange(n), np.diff(x.indptr))
    if on_heavy.any():
        slot = np.cumsum(is_heavy) - 1
        d = np.zeros((n, int(is_heavy.sum())), dtype=work)
        d[rows[on_heavy], slot[x.indices[on_heavy]]] = x.data[on_heavy]
        out = d @ d.T
        del d
    else:
        out = np.zeros((n, n), dtype=work)
    rare = ~on_heavy
    if rare.any():
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows[rare], minlength=n))])
        lt = sp.csr_matrix((x.data[rare], x.indices[rare], indptr), shape=x.shape)
        g = (lt @ lt.T).tocoo()
        out[g.row, g.col] += g.data.astype(work, copy=False)
    return out if out.dtype == np.dtype(dtype) else out.astype(dtype)


def unit_centered(x: np.ndarray, center_rows: np.ndarray | None = None, dtype=np.float32,
                  center: bool = True) -> np.ndarray:
    """Rows minus the mean row (of `center_rows` only, when given), scaled to unit length.

    All-zero rows stay zero. The mean is accumulated in float64 whatever `dtype` is;
    ``center=False`` only normalizes (raw cosine).
    """
    x = np.array(x, dtype=dtype)
    if center:
        base = x if center_rows is None else x[center_rows]
        x -= base.mean(axis=0, dtype=np.float64).astype(dtype)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.where(norms > 0, norms, dtype(1.0))[:, None]
    return x


def centered_cosine(x: np.ndarray, center_rows: np.ndarray | None = None, dtype=np.float32,
                    compute=np.float64) -> np.ndarray:
    """Mean-centered cosine (Ethayarajh 2019): subtract the mean word vector, then cosine.

    The one implementation of the hidden-state geometry (METHOD.md §4): the per-layer RSA,
    the exports and the consensus call it (the regression uses `unit_centered` on pair
    blocks).

    Args:
        x: N x D vectors (one layer).
        center_rows: indices of the rows whose mean is subtracted (e.g. training words
            only, METHOD.md §7); default all rows.
        dtype: output dtype.
        compute: working precision; float32 is one BLAS syrk and the bulk of the RSA stage's
            time, within float32 rounding of the float64 result.

    Returns:
        N x N similarities.
    """
    u = unit_centered(x, center_rows, compute)
    return (u @ u.T).astype(dtype, copy=False)


def standardized_cosine(x: np.ndarray, center_rows: np.ndarray | None = None, dtype=np.float32,
                        compute=np.float64) -> np.ndarray:
    """Cosine after z-scoring every dimension over the words (`rsa.hidden_geometry` "standardized").

    A few "rogue" dimensions with huge variance dominate a centered cosine (Timkey & van
    Schijndel 2021); dividing each centered dimension by its standard deviation gives every
    dimension the same weight. Dimensions constant over the words are dropped (set to 0).

    Args:
        x: N x D vectors (one layer).
        center_rows: rows whose mean and standard deviation are used (default all rows).
        dtype: output dtype.
        compute: working precision (float32: one BLAS syrk).

    Returns:
        N x N similarities.
    """
    x = np.array(x, dtype=compute)
    base = x if center_rows is None else x[center_rows]
    mean = base.mean(axis=0, dtype=np.float64)
    std = base.std(axis=0, dtype=np.float64)
    scale = np.divide(1.0, std, out=np.zeros_like(std), where=std > 0)
    x = (x - mean.astype(compute)) * scale.astype(compute)
    u = unit_centered(x, dtype=compute, center=False)
    return (u @ u.T).astype(dtype, copy=False)


HIDDEN_GEOMETRIES = {"centered": centered_cosine, "standardized": standardized_cosine}
"""The hidden-state geometries `rsa.hidden_geometry` can name (`centered` is the paper's)."""


def upper_triangle(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-major indices (i < j) of the strict upper triangle of an n x n matrix."""
    return np.triu_indices(n, k=1)


def sample_pairs(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample `size` upper-triangle pairs without replacement, exactly as the paper does.

    `np.random.default_rng(seed).choice(M, size, replace=False)` over linear indices
    k < M = n(n-1)/2, mapped to (i, j) through row offsets off[i] = i(2n-i-1)/2
    (METHOD.md §6). When size >= M, all pairs are returned in row-major order.
    """
    m = n * (n - 1) // 2
    if size >= m:
        return upper_triangle(n)
    k = np.random.default_rng(seed).choice(m, size, replace=False)
    i_all = np.arange(n, dtype=np.int64)
    off = i_all * (2 * n - i_all - 1) // 2
    i = np.searchsorted(off, k, side="right") - 1
    j = i + 1 + (k - off[i])
    return i, j


def alphabetical_pairs(words: list[str], size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`sample_pairs` over the words sorted alphabetically, as indices into `words`.

    The paper draws its 500,000 RSA pairs over its matrices' order, which is the words
    sorted with Python's `sorted` (METHOD.md §6); drawing over any other order gives other
    pairs. Returned pairs are (i, j) positions in `words` with the alphabetically first word
    first; similarity matrices are symmetric, so i > j is possible and harmless.
    """
    order = np.array(sorted(range(len(words)), key=words.__getitem__), dtype=np.int64)
    a, b = sample_pairs(len(words), size, seed)
    return order[a], order[b]


def draw_paper_pairs(n: int, size: int, seed: int, words: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of the 'paper' RSA method (``rsa.paper_pairs``, ``rsa.seed``), drawn in this one place.

    Over `words` sorted alphabetically when given, the paper's order (`alphabetical_pairs`),
    else over the n rows in their order (`sample_pairs`). A table draws them once and hands
    them to every comparison it makes (`comparison.compare` ``pairs=``), so all its cells
    use the same sample and the draw is not repeated per cell.

    Returns:
        (i, j) row positions; with `words`, the alphabetically first word of a pair first.
    """
    if words is not None:
        return alphabetical_pairs(list(words), size, seed)
    return sample_pairs(n, size, seed)
