"""Comparing similarity structures: the RSA statistics and NN@k overlap, pure computation.

`compare(a, b, method=...)` is the one dispatcher (in the spirit of `rsatoolbox.rdm.compare`):
Spearman on all upper-triangle pairs (average ranks for ties), Pearson on all pairs, or the
paper's Pearson on sampled pairs (METHOD.md §6). The building blocks the per-layer analysis
reuses are public here: a fast exact ranker (`Ranker`), standardisation, pair indexing and
top-k neighbours. Nothing here reads or writes files.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .similarity import draw_paper_pairs

METHODS = ("spearman", "pearson", "paper")
NN_CHUNK = 1024


def compare(a, b, method: str = "spearman", *, n_pairs: int = 500_000, seed: int = 0,
            words: list[str] | None = None, pairs: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """Correlate two similarity structures, in the spirit of `rsatoolbox.rdm.compare`.

    Args:
        a: a symmetric N x N similarity (or dissimilarity) matrix, or a 1-D vector of pair
            values in row-major upper-triangle order (`similarity.upper_triangle`).
        b: the same kind of input as `a`, over the same words.
        method: 'spearman' (all pairs, average ranks for ties, as `scipy.stats.spearmanr`),
            'pearson' (all pairs), or 'paper' (Pearson on `n_pairs` pairs sampled with
            `similarity.sample_pairs(N, n_pairs, seed)` over the inputs' order, or over the
            alphabetical order of `words` when given, METHOD.md §6).
        n_pairs: sample size of 'paper' mode (the paper uses 500,000).
        seed: pair-sampling seed of 'paper' mode (the paper uses 0).
        words: the words of the rows ('paper' mode draws its pairs over them sorted).
        pairs: 'paper' mode's pairs already drawn (`similarity.draw_paper_pairs`, once per
            table); `n_pairs`, `seed` and `words` are then not used.

    Returns:
        The correlation over pairs where both inputs are finite (NaN marks a missing pair);
        NaN when either side is constant.
    """
    if method not in METHODS:
        raise ValueError(f"unknown RSA method {method!r}; use one of {', '.join(METHODS)}")
    va, n = pair_vector(a)
    vb, nb = pair_vector(b)
    if n != nb:
        raise ValueError(f"inputs cover different numbers of words ({n} and {nb})")
    if method == "paper":
        i, j = pairs if pairs is not None else draw_paper_pairs(n, n_pairs, seed, words)
        k = pair_index(np.minimum(i, j), np.maximum(i, j), n)
        va, vb = va[k], vb[k]
    keep = np.isfinite(va) & np.isfinite(vb)
    if not keep.all():
        va, vb = va[keep], vb[keep]
    if method == "spearman":
        return float(standardize(rank(va)) @ standardize(rank(vb)))
    return float(standardize(va) @ standardize(vb))


def nn_overlap(a: np.ndarray, b: np.ndarray, ks, *, chunk: int = NN_CHUNK) -> dict[int, float]:
    """Mean top-k neighbour overlap |N_a(w) ∩ N_b(w)| / k over words (METHOD.md §6).

    Neighbours exclude the word itself; ties are broken towards the lower word index, so
    the result is deterministic even for behavioral matrices with many equal (zero) cells.

    Args:
        a: N x N similarity matrix.
        b: N x N similarity matrix over the same words.
        ks: neighbourhood sizes, each below N.
        chunk: rows processed at once (bounds memory to chunk x N).

    Returns:
        {k: mean overlap}.
    """
    ks = sorted(int(k) for k in ks)
    top_a = topk(a, ks[-1], chunk)
    top_b = topk(b, ks[-1], chunk)
    return overlaps(top_a, top_b, ks, chunk)


# ---------------------------------------------------------------- ranks and correlation

def pair_vector(x) -> tuple[np.ndarray, int]:
    x = np.asarray(x)
    if x.ndim == 2:
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"expected a square similarity matrix, got shape {x.shape}")
        n = x.shape[0]
        return x[triu_mask(n)], n
    if x.ndim != 1:
        raise ValueError(f"expected a square matrix or a pair vector, got shape {x.shape}")
    n = int(round((1 + np.sqrt(1 + 8 * x.size)) / 2))
    if n * (n - 1) // 2 != x.size:
        raise ValueError(f"a pair vector of length {x.size} is not a full upper triangle")
    return x, n


def pair_index(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Linear row-major upper-triangle index of pairs (i < j)."""
    i = np.asarray(i, dtype=np.int64)
    return i * (2 * n - i - 1) // 2 + (np.asarray(j, dtype=np.int64) - i - 1)


_MASKS: dict[int, np.ndarray] = {}


def triu_mask(n: int) -> np.ndarray:
    """Boolean strict-upper-triangle mask; boolean indexing walks it in row-major order."""
    if n not in _MASKS:
        if len(_MASKS) > 4:
            _MASKS.clear()
        _MASKS[n] = np.triu(np.ones((n, n), dtype=bool), k=1)
    return _MASKS[n]


def rank(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based float64), identical to `scipy.stats.rankdata(v, 'average')`."""
    return Ranker()(v)[0]


class Ranker:
    """Exact average ranks of float32 vectors, fast, with buffers reused across calls.

    Each value's order-preserving 32-bit key and its position are packed into one uint64
    and sorted with numpy's SIMD sort (several times faster than `argsort`); equal keys
    (ties) then share the mean of their ranks, exactly as `scipy.stats.rankdata`. Only the
    tied runs are rewritten, so the cost stays near one sort even though 12.5M float32
    cosines always hold some ties. -0.0 and +0.0 are folded together first, as they compare
    equal. Reusing the ~700 MB of buffers at N = 5,000 saves the page faults of fresh
    allocations on every layer. Other dtypes fall back to `rankdata`.
    """

    def __init__(self):
        self.n = -1

    def _buffers(self, n: int) -> None:
        if n == self.n:
            return
        self.n = n
        self.b32 = np.empty(n, dtype=np.uint32)
        self.t32 = np.empty(n, dtype=np.uint32)
        self.keys = np.empty(n, dtype=np.uint64)
        self.pos = np.arange(n, dtype=np.uint64)
        self.order = np.empty(n, dtype=np.int64)
        self.ranks = np.empty(n, dtype=np.float64)
        self.one_to_n = np.arange(1, n + 1, dtype=np.float64)
        self.sorted_ranks = np.empty(n, dtype=np.float64)
        self.eq = np.empty(n - 1, dtype=bool)

    def __call__(self, v: np.ndarray) -> tuple[np.ndarray, float]:
        """Rank `v`.

        Returns:
            (ranks, norm): the ranks (a buffer overwritten by the next call) and the L2 norm
            of the centered ranks, so that Pearson(ranks, y) = z_y @ ranks / norm for any
            centered unit vector z_y.
        """
        v = np.asarray(v)
        n = v.size
        if v.dtype != np.float32 or n >= 2**32 or n < 2:
            r = rankdata(v).astype(np.float64, copy=False)
            c = r - r.mean()
            return r, float(np.sqrt(c @ c))
        self._buffers(n)
        b32, t32, keys = self.b32, self.t32, self.keys
        np.add(v, np.float32(0.0), out=b32.view(np.float32))
        np.right_shift(b32, np.uint32(31), out=t32)
        np.subtract(np.uint32(0), t32, out=t32)
        np.bitwise_or(t32, np.uint32(0x80000000), out=t32)
        np.bitwise_xor(b32, t32, out=t32)
        keys[:] = t32
        np.left_shift(keys, np.uint64(32), out=keys)
        np.bitwise_or(keys, self.pos, out=keys)
        keys.sort()
        np.bitwise_and(keys, np.uint64(0xFFFFFFFF), out=self.order.view(np.uint64))
        np.right_shift(keys, np.uint64(32), out=keys)
        eq = self.eq
        np.equal(keys[1:], keys[:-1], out=eq)
        ss = (float(n) ** 3 - n) / 12.0
        tied = np.flatnonzero(eq)
        if tied.size == 0:
            self.ranks[self.order] = self.one_to_n
            return self.ranks, float(np.sqrt(ss))
        brk = np.flatnonzero(np.diff(tied) != 1) + 1
        start = tied[np.r_[0, brk]]
        end = tied[np.r_[brk - 1, tied.size - 1]] + 2
        size = end - start
        pos = np.repeat(start - np.r_[0, np.cumsum(size[:-1])], size) + np.arange(size.sum())
        sorted_ranks = self.sorted_ranks
        np.copyto(sorted_ranks, self.one_to_n)
        sorted_ranks[pos] = np.repeat((start + 1 + end) / 2.0, size)
        self.ranks[self.order] = sorted_ranks
        t = size.astype(np.float64)
        return self.ranks, float(np.sqrt(max(ss - np.sum(t**3 - t) / 12.0, 0.0)))


def standardize(x: np.ndarray) -> np.ndarray:
    """Centered, unit-norm float64 copy, so that a dot product of two is their Pearson r."""
    z = np.asarray(x, dtype=np.float64) - np.mean(x, dtype=np.float64)
    norm = np.sqrt(z @ z)
    if not norm > 0:
        return np.full_like(z, np.nan)
    z /= norm
    return z


def standardize_rows(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", z, z))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, z / norms, np.nan)


# ---------------------------------------------------------------- NN@k

def topk(sim: np.ndarray, kmax: int, chunk: int = NN_CHUNK) -> np.ndarray:
    """Indices of each row's kmax nearest neighbours, by similarity desc then index asc.

    `argpartition` finds the candidates; rows where a tie straddles the kth place (common
    in sparse behavioral matrices) are resolved by a full stable sort of that row.
    """
    n = sim.shape[0]
    if not 0 < kmax < n:
        raise ValueError(f"k = {kmax} must be between 1 and N - 1 = {n - 1}")
    out = np.empty((n, kmax), dtype=np.int32)
    cols = np.arange(n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows = np.arange(start, stop)
        vals = np.array(sim[start:stop], dtype=np.float64)
        vals[np.isnan(vals)] = -np.inf
        vals[rows - start, rows] = -np.inf
        part = np.argpartition(vals, n - kmax, axis=1)[:, n - kmax:]
        pv = np.take_along_axis(vals, part, axis=1)
        order = np.lexsort((part, -pv), axis=1)
        out[start:stop] = np.take_along_axis(part, order, axis=1)
        threshold = pv.min(axis=1)
        straddle = np.flatnonzero((vals >= threshold[:, None]).sum(axis=1) > kmax)
        for r in straddle:
            out[start + r] = np.lexsort((cols, -vals[r]))[:kmax]
    return out


def overlaps(top_a: np.ndarray, top_b: np.ndarray, ks, chunk: int = NN_CHUNK) -> dict[int, float]:
    n = top_a.shape[0]
    total = {k: 0.0 for k in ks}
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        ar = np.arange(stop - start)[:, None]
        mark = np.zeros((stop - start, n), dtype=bool)
        for k in ks:
            mark[:] = False
            mark[ar, top_a[start:stop, :k]] = True
            total[k] += mark[ar, top_b[start:stop, :k]].sum() / k
    return {k: total[k] / n for k in ks}
