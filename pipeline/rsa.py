"""RSA and NN@k overlap of hidden-state geometry against behavioral and baseline references.

For every model x strategy x layer (1..L; layer 0, the embeddings, is excluded) the hidden
geometry is the mean-centered cosine of the layer's word vectors (METHOD.md §4). It is
compared with each reference of `rsa.references`:

- `fc`, `fa`: the same model's behavioral PPMI-cosine (`matrices/<model>/<paradigm>/sim_ppmi.npy`);
- `static`, `encoder`: raw cosine of the baseline vectors; words whose vector is missing
  (a NaN row) are masked, i.e. every pair containing one is dropped;
- `consensus`: the cross-model consensus of the baselines stage (absent, and skipped with a
  note, when the config has a single model).

Methods (`rsa.methods`), all computed by `compare`:

- `spearman` (default): Spearman on all upper-triangle pairs, average ranks for ties;
- `pearson`: Pearson on all upper-triangle pairs;
- `paper`: Pearson on `rsa.paper_pairs` pairs drawn by `similarity.alphabetical_pairs`:
  `np.random.default_rng(rsa.seed).choice` over the upper triangle of the words sorted
  alphabetically, as the authors' matrices are; the same pairs for every layer, reference
  and model (METHOD.md §6).

Word sets. By default each reference masks its own missing words (a NaN row: no static
vector, a cue without any valid response) and every pair touching one is dropped for that
reference only. In paper mode (`experiment.paper_mode`) the analysis runs, as the authors'
does, on the words common to the hidden states, the FC rows and the FA rows (hidden
centering included); static and encoder vectors then mask their missing words within them.

Beyond the paper:

- Bootstrap CIs over words (`rsa.bootstrap` resamples, seeded by `rsa.seed`). One resample
  draws N words with replacement and keeps the set of distinct words drawn; the statistic is
  recomputed on the pairs among those words (duplicates add no pairs: a word paired with its
  own copy is a diagonal cell, which RSA excludes). The distinct set holds about 63% of the
  words, so the intervals are somewhat conservative. For speed the pairs come from a fixed
  seeded sample of at most `BOOT_MAX_PAIRS` pairs (all pairs when N is small). `spearman`
  intervals bootstrap Spearman; `pearson` and `paper` intervals bootstrap Pearson (so they
  coincide). `ci_low`/`ci_high` are the 2.5th/97.5th percentiles; NaN without bootstrap.
- Split-half reliability of each behavioral matrix (`rsa.split_half`): FC trials of each cue
  split into two halves by the parity of their rank in trial_id order (the group index
  when trial ids grow with the group), FA trials by run parity; each half is turned into
  PPMI-cosine, the halves are correlated with each method, and Spearman-Brown corrected,
  2r/(1+r). The report shows it as a noise ceiling band from r_SB (an independent
  replication of the behavioral experiment) to sqrt(r_SB) (a noise-free geometry equal to
  the true behavioral one; attenuation bound).

Outputs under `results/`:

- `rsa.parquet`: model, strategy, layer, n_layers, reference, method, n_words, n_pairs, rsa,
  ci_low, ci_high;
- `nn.parquet` (NN@k overlap in its own table, because its rows have a `k` and no pair
  count): model, strategy, layer, n_layers, reference, k, n_words, overlap;
- `reliability.parquet`: model, paradigm, method, n_words, n_pairs, r_half, reliability,
  ceiling_low, ceiling_high, n_trials_a, n_trials_b.

Each model x strategy cell is written to `results/parts/` and recorded in the manifest as
`rsa/<model>/<strategy>`; a re-run skips finished cells and the tables are rebuilt from the
parts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from . import paths
from .config import Config
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .rules import Rules
from .store import load_npy, write_parquet
from .similarity import alphabetical_pairs, cosine, sample_pairs

log = logging.getLogger(__name__)

METHODS = ("spearman", "pearson", "paper")
BOOT_MAX_PAIRS = 100_000
NN_CHUNK = 1024
_VERSION = 1
_BEHAVIORAL = ("fc", "fa")
_RSA_COLUMNS = ["model", "strategy", "layer", "n_layers", "reference", "method", "n_words", "n_pairs",
                "rsa", "ci_low", "ci_high"]
_NN_COLUMNS = ["model", "strategy", "layer", "n_layers", "reference", "k", "n_words", "overlap"]
_REL_COLUMNS = ["model", "paradigm", "method", "n_words", "n_pairs", "r_half", "reliability",
                "ceiling_low", "ceiling_high", "n_trials_a", "n_trials_b"]


# ---------------------------------------------------------------- public comparison API

def compare(a, b, method: str = "spearman", *, n_pairs: int = 500_000, seed: int = 0,
            words: list[str] | None = None) -> float:
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

    Returns:
        The correlation over pairs where both inputs are finite (NaN marks a missing pair);
        NaN when either side is constant.
    """
    if method not in METHODS:
        raise ValueError(f"unknown RSA method {method!r}; use one of {', '.join(METHODS)}")
    va, n = _pair_vector(a)
    vb, nb = _pair_vector(b)
    if n != nb:
        raise ValueError(f"inputs cover different numbers of words ({n} and {nb})")
    if method == "paper":
        if words is not None:
            i, j = alphabetical_pairs(list(words), n_pairs, seed)
            i, j = np.minimum(i, j), np.maximum(i, j)
        else:
            i, j = sample_pairs(n, n_pairs, seed)
        k = _pair_index(i, j, n)
        va, vb = va[k], vb[k]
    keep = np.isfinite(va) & np.isfinite(vb)
    if not keep.all():
        va, vb = va[keep], vb[keep]
    if method == "spearman":
        return float(_standardize(_rank(va)) @ _standardize(_rank(vb)))
    return float(_standardize(va) @ _standardize(vb))


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
    top_a = _topk(a, ks[-1], chunk)
    top_b = _topk(b, ks[-1], chunk)
    return _overlaps(top_a, top_b, ks, chunk)


# ---------------------------------------------------------------- ranks and correlation

def _pair_vector(x) -> tuple[np.ndarray, int]:
    x = np.asarray(x)
    if x.ndim == 2:
        if x.shape[0] != x.shape[1]:
            raise ValueError(f"expected a square similarity matrix, got shape {x.shape}")
        n = x.shape[0]
        return x[_triu_mask(n)], n
    if x.ndim != 1:
        raise ValueError(f"expected a square matrix or a pair vector, got shape {x.shape}")
    n = int(round((1 + np.sqrt(1 + 8 * x.size)) / 2))
    if n * (n - 1) // 2 != x.size:
        raise ValueError(f"a pair vector of length {x.size} is not a full upper triangle")
    return x, n


def _pair_index(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    """Linear row-major upper-triangle index of pairs (i < j)."""
    i = np.asarray(i, dtype=np.int64)
    return i * (2 * n - i - 1) // 2 + (np.asarray(j, dtype=np.int64) - i - 1)


_MASKS: dict[int, np.ndarray] = {}


def _triu_mask(n: int) -> np.ndarray:
    """Boolean strict-upper-triangle mask; boolean indexing walks it in row-major order."""
    if n not in _MASKS:
        if len(_MASKS) > 4:
            _MASKS.clear()
        _MASKS[n] = np.triu(np.ones((n, n), dtype=bool), k=1)
    return _MASKS[n]


def _rank(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based float64), identical to `scipy.stats.rankdata(v, 'average')`."""
    return _Ranker()(v)[0]


class _Ranker:
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


def _standardize(x: np.ndarray) -> np.ndarray:
    """Centered, unit-norm float64 copy, so that a dot product of two is their Pearson r."""
    z = np.asarray(x, dtype=np.float64) - np.mean(x, dtype=np.float64)
    norm = np.sqrt(z @ z)
    if not norm > 0:
        return np.full_like(z, np.nan)
    z /= norm
    return z


def _standardize_rows(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", z, z))[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norms > 0, z / norms, np.nan)


def _layer_similarity(x: np.ndarray, center_rows: np.ndarray | None = None) -> np.ndarray:
    """Mean-centered cosine of one layer in float32 (one BLAS syrk, the bulk of the time).

    Same quantity as `similarity.centered_cosine` (which works in float64) up to float32
    rounding; all-zero rows stay zero.
    """
    x = np.array(x, dtype=np.float32)
    base = x if center_rows is None else x[center_rows]
    x -= base.mean(axis=0, dtype=np.float64).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.where(norms > 0, norms, np.float32(1.0))[:, None]
    return x @ x.T


# ---------------------------------------------------------------- NN@k

def _topk(sim: np.ndarray, kmax: int, chunk: int = NN_CHUNK) -> np.ndarray:
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


def _overlaps(top_a: np.ndarray, top_b: np.ndarray, ks, chunk: int = NN_CHUNK) -> dict[int, float]:
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


# ---------------------------------------------------------------- references

@dataclass
class _Reference:
    name: str
    sim: np.ndarray
    valid: np.ndarray


def reference_paths(cfg: Config, model: str, strategy: str) -> dict[str, Path]:
    """Files of each configured reference for one model x strategy (whether or not present)."""
    base = paths.baselines_dir(cfg)
    out = {}
    for name in cfg.rsa.references:
        if name in _BEHAVIORAL:
            out[name] = paths.matrices_dir(cfg, model, name) / "sim_ppmi.npy"
        elif name == "static":
            out[name] = base / f"{cfg.baselines.static_name}.npy"
        elif name == "encoder":
            out[name] = base / f"{cfg.baselines.encoder_name}.npy"
        elif name == "consensus":
            out[name] = base / "consensus" / model / f"{strategy}.npy"
    return out


def available_references(cfg: Config, model: str, strategy: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Split the configured references into usable files and skipped ones with the reason.

    A reference that cannot exist in this config is skipped with a note (consensus with a
    single model; a baseline whose source is not configured); any other missing file is an
    error raised when it is loaded, naming the stage to run.
    """
    use, skipped = {}, {}
    for name, path in reference_paths(cfg, model, strategy).items():
        if name in _BEHAVIORAL and name not in cfg.behave.paradigms:
            skipped[name] = f"behave.paradigms does not include {name}"
        elif path.exists():
            use[name] = path
        elif name == "consensus" and len(cfg.models) < 2:
            skipped[name] = "a single model in the config: no other models to form a consensus"
        elif name == "static" and cfg.baselines.static is None:
            skipped[name] = "baselines.static is not configured"
        elif name == "encoder" and cfg.baselines.encoder is None:
            skipped[name] = "baselines.encoder is not configured"
        else:
            use[name] = path
    return use, skipped


def describe(cfg: Config, name: str, model: str = "", strategy: str = "") -> tuple[str, str]:
    """(what the file of reference `name` holds, the command that rebuilds it)."""
    if name in _BEHAVIORAL:
        return (f"the {name.upper()} PPMI-cosine matrix of {model}",
                f"python -m pipeline aggregate --config {cfg.source} --model {model} --paradigm {name}")
    if name == "consensus":
        return (f"the cross-model consensus matrix of {model}/{strategy}",
                f"python -m pipeline baselines --config {cfg.source} --model {model} --strategy {strategy}")
    if name == "hidden":
        from .hidden import rebuild_command
        return f"hidden states of {model}/{strategy}", rebuild_command(cfg, model, strategy)
    return f"the {name} baseline vectors", f"python -m pipeline baselines --config {cfg.source}"


def load_reference(cfg: Config, name: str, path: Path, n: int, model: str = "", strategy: str = "") -> _Reference:
    """One reference's N x N similarity and valid-word mask, validated.

    Behavioral and consensus files are similarity matrices whose masked words are NaN rows;
    static and encoder files are vectors (NaN rows: no vector), turned into raw cosine.
    """
    what, rebuild = describe(cfg, name, model, strategy)
    if name in _BEHAVIORAL or name == "consensus":
        sim = np.asarray(load_npy(path, what, rebuild, shape=(n, n), finite="rows"), dtype=np.float32)
        return _Reference(name, sim, ~np.isnan(sim).all(axis=1))
    v = np.array(load_npy(path, what, rebuild, shape=(n, None), finite="rows"), dtype=np.float64)
    valid = np.isfinite(v).all(axis=1)
    v[~valid] = 0.0
    return _Reference(name, cosine(v), valid)


def _restrict(ref: _Reference, rows: np.ndarray) -> _Reference:
    return _Reference(ref.name, ref.sim[np.ix_(rows, rows)], ref.valid[rows])


# ---------------------------------------------------------------- one model x strategy cell

@dataclass
class _Group:
    """References sharing one set of valid words, hence one pair set and one hidden ranking."""
    valid: np.ndarray
    refs: list[str] = field(default_factory=list)
    pair_valid: np.ndarray | None = None
    paper_sel: np.ndarray | None = None
    boot_valid: np.ndarray | None = None
    z: dict[str, np.ndarray] = field(default_factory=dict)
    top: dict[str, np.ndarray] = field(default_factory=dict)
    ks: list[int] = field(default_factory=list)


def _groups(refs: dict[str, _Reference]) -> list[_Group]:
    groups: dict[bytes, _Group] = {}
    for name, ref in refs.items():
        g = groups.setdefault(ref.valid.tobytes(), _Group(ref.valid))
        g.refs.append(name)
    return list(groups.values())


def _extract(sim: np.ndarray, g: _Group) -> np.ndarray:
    v = sim[_triu_mask(sim.shape[0])]
    return v if g.pair_valid is None else v[g.pair_valid]


def _sub(sim: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return sim if valid.all() else sim[np.ix_(valid, valid)]


def analyse_cell(hidden: np.ndarray, refs: dict[str, _Reference], methods, *, paper_pairs: int, seed: int,
                 nn_k=(), bootstrap: int = 0, words: list[str] | None = None,
                 rows: np.ndarray | None = None) -> tuple[list[dict], list[dict]]:
    """RSA, NN@k and bootstrap CIs of every layer 1..L of one hidden stack against references.

    Each reference is prepared once (ranked with `scipy.stats.rankdata` for Spearman,
    standardized); each layer costs one centered cosine, one fast ranking per distinct
    word mask and one dot product per reference.

    Args:
        hidden: (L+1) x N x dim hidden states (layer 0 is skipped).
        refs: reference name -> similarity matrix and valid-word mask.
        methods: subset of `METHODS`.
        paper_pairs: sample size of the 'paper' method.
        seed: seed of the paper pairs and of the bootstrap.
        nn_k: neighbourhood sizes for NN@k (values >= the number of valid words are skipped).
        bootstrap: number of word resamples for CIs (0: none).
        words: the words of the references' rows; the 'paper' method draws its pairs over
            them in alphabetical order (default: row order).
        rows: restrict the hidden stack to these word rows (centering included) to match
            references already restricted the same way (paper mode's common words).

    Returns:
        (rsa rows, nn rows) without the model/strategy columns.
    """
    n_layers = hidden.shape[0] - 1
    n = hidden.shape[1] if rows is None else len(rows)
    cell = _Cell(n, n_layers, refs, methods, paper_pairs=paper_pairs, seed=seed, nn_k=nn_k,
                 bootstrap=bootstrap, words=words)
    for layer in range(1, n_layers + 1):
        x = hidden[layer] if rows is None else np.asarray(hidden[layer])[rows]
        cell.layer(layer, _layer_similarity(x))
    return cell.rows(), cell.nn_rows


class _Cell:
    """One model x strategy analysis: references prepared once, then fed layer by layer."""

    def __init__(self, n: int, n_layers: int, refs: dict[str, _Reference], methods, *, paper_pairs: int,
                 seed: int, nn_k=(), bootstrap: int = 0, words: list[str] | None = None):
        self.n, self.n_layers, self.refs = n, n_layers, refs
        self.methods = [m for m in METHODS if m in methods]
        self.kinds = {"rank" if m == "spearman" else "value" for m in self.methods}
        self.groups = _groups(refs)
        self.tri = _triu_mask(n)
        if "paper" not in self.methods:
            self.pi = self.pj = None
        elif words is not None:
            self.pi, self.pj = alphabetical_pairs(list(words), paper_pairs, seed)
        else:
            self.pi, self.pj = sample_pairs(n, paper_pairs, seed)
        self.boot = _BootPlan(n, bootstrap, seed) if bootstrap else None
        self.boot_h = np.empty((n_layers, self.boot.pi.size), dtype=np.float32) if self.boot else None
        self.values: dict[tuple[str, str, int], float] = {}
        self.nn_rows: list[dict] = []
        self.ranker = _Ranker()
        for g in self.groups:
            self._prepare(g, nn_k)

    def _prepare(self, g: _Group, nn_k) -> None:
        if not g.valid.all():
            g.pair_valid = np.outer(g.valid, g.valid)[self.tri]
        if self.pi is not None:
            g.paper_sel = g.valid[self.pi] & g.valid[self.pj]
        if self.boot is not None:
            g.boot_valid = g.valid[self.boot.pi] & g.valid[self.boot.pj]
        for name in g.refs:
            sim = self.refs[name].sim
            vec = None
            if "spearman" in self.methods:
                vec = _extract(sim, g)
                g.z[f"spearman:{name}"] = _standardize(rankdata(vec))
            if "pearson" in self.methods:
                vec = _extract(sim, g) if vec is None else vec
                g.z[f"pearson:{name}"] = _standardize(vec)
            del vec
            if self.pi is not None:
                g.z[f"paper:{name}"] = _standardize(sim[self.pi, self.pj][g.paper_sel])
        g.ks = [k for k in sorted(set(nn_k)) if k < g.valid.sum()]
        if len(g.ks) < len(set(nn_k)):
            log.warning("NN@k: k >= %d valid words skipped for %s", g.valid.sum(), ", ".join(g.refs))
        if g.ks:
            for name in g.refs:
                g.top[name] = _topk(_sub(self.refs[name].sim, g.valid), g.ks[-1])

    def layer(self, layer: int, s: np.ndarray) -> None:
        """Add one layer's hidden similarity matrix (N x N, float32)."""
        if self.boot is not None:
            self.boot_h[layer - 1] = s[self.boot.pi, self.boot.pj]
        upper = s[self.tri] if self.methods != ["paper"] else None
        for g in self.groups:
            if upper is not None:
                hv = upper if g.pair_valid is None else upper[g.pair_valid]
                if "spearman" in self.methods:
                    ranks, norm = self.ranker(hv)
                    for name in g.refs:
                        rho = float(g.z[f"spearman:{name}"] @ ranks) / norm if norm > 0 else np.nan
                        self.values["spearman", name, layer] = rho
                if "pearson" in self.methods:
                    zh = _standardize(hv)
                    for name in g.refs:
                        self.values["pearson", name, layer] = float(g.z[f"pearson:{name}"] @ zh)
                del hv
            if self.pi is not None:
                zh = _standardize(s[self.pi, self.pj][g.paper_sel])
                for name in g.refs:
                    self.values["paper", name, layer] = float(g.z[f"paper:{name}"] @ zh)
            if g.ks:
                top_h = _topk(_sub(s, g.valid), g.ks[-1])
                for name in g.refs:
                    for k, ov in _overlaps(top_h, g.top[name], g.ks).items():
                        self.nn_rows.append({"layer": layer, "n_layers": self.n_layers, "reference": name, "k": k,
                                             "n_words": int(g.valid.sum()), "overlap": ov})

    def rows(self) -> list[dict]:
        """RSA rows of every layer added, with bootstrap intervals."""
        cis = self.boot.intervals(self.boot_h, self.refs, self.groups, self.kinds) if self.boot else {}
        rows = []
        for g in self.groups:
            n_words = int(g.valid.sum())
            all_pairs = n_words * (n_words - 1) // 2
            for method in self.methods:
                n_pairs = int(g.paper_sel.sum()) if method == "paper" else all_pairs
                kind = "rank" if method == "spearman" else "value"
                for name in g.refs:
                    for layer in range(1, self.n_layers + 1):
                        lo, hi = cis.get((kind, name, layer), (np.nan, np.nan))
                        rows.append({"layer": layer, "n_layers": self.n_layers, "reference": name,
                                     "method": method, "n_words": n_words, "n_pairs": n_pairs,
                                     "rsa": self.values[method, name, layer], "ci_low": lo, "ci_high": hi})
        return rows


class _BootPlan:
    """Seeded word resamples and the fixed pair sample the bootstrap statistics use."""

    def __init__(self, n: int, n_boot: int, seed: int):
        m = n * (n - 1) // 2
        self.pi, self.pj = sample_pairs(n, min(BOOT_MAX_PAIRS, m), seed)
        rng = np.random.default_rng([seed, 0xB007])
        self.members = np.zeros((n_boot, n), dtype=bool)
        for b in range(n_boot):
            self.members[b, rng.integers(0, n, n)] = True

    def intervals(self, boot_h: np.ndarray, refs: dict[str, _Reference], groups: list[_Group],
                  kinds) -> dict[tuple[str, str, int], tuple[float, float]]:
        n_boot, n_layers = self.members.shape[0], boot_h.shape[0]
        ref_p = {name: ref.sim[self.pi, self.pj] for name, ref in refs.items()}
        stats = {(kind, name): np.full((n_boot, n_layers), np.nan) for kind in kinds for name in refs}
        for b in range(n_boot):
            inside = self.members[b][self.pi] & self.members[b][self.pj]
            for g in groups:
                sel = inside & g.boot_valid
                if sel.sum() < 3:
                    continue
                h = boot_h[:, sel]
                for kind in kinds:
                    if kind == "rank":
                        hz = _standardize_rows(np.stack([_rank(row) for row in h]))
                    else:
                        hz = _standardize_rows(h)
                    for name in g.refs:
                        r = ref_p[name][sel]
                        rz = _standardize(_rank(r) if kind == "rank" else r)
                        stats[kind, name][b] = hz @ rz
        out = {}
        for (kind, name), arr in stats.items():
            for layer in range(1, n_layers + 1):
                col = arr[:, layer - 1]
                col = col[np.isfinite(col)]
                lo, hi = np.percentile(col, [2.5, 97.5]) if col.size else (np.nan, np.nan)
                out[kind, name, layer] = (float(lo), float(hi))
        return out


# ---------------------------------------------------------------- split-half reliability

def split_half(cfg: Config, model: str, paradigm: str, words: list[str]) -> list[dict]:
    """Split-half reliability of one behavioral PPMI-cosine matrix, one row per method.

    Each half is counted by `aggregate.count_matrix` (the same cleaning, NA strings and
    row masking as the full matrix). FC halves: the parity of the candidate group,
    ``trial_id mod m`` with m groups per cue (`trials`: ``trial_id = cue_idx * m + group``).
    FA halves: the parity of the run.

    Returns:
        Rows of `reliability.parquet`; empty when the behavior log has no final rows.
    """
    from .aggregate import count_matrix, masked_similarity
    from .similarity import ppmi
    from .trials import fc_group_sizes

    directory = paths.behavior_dir(cfg, model, paradigm)
    n = len(words)
    m = len(fc_group_sizes(n, cfg.trials.fc_candidates))
    rules = Rules.of(cfg)

    def half(h: int):
        if paradigm == "fa":
            return lambda b: b.column("run").to_numpy(zero_copy_only=False).astype(np.int64) % 2 == h
        return lambda b: (b.column("trial_id").to_numpy().astype(np.int64) % m) % 2 == h

    sims, sizes = [], []
    for h in (0, 1):
        counts, _, stats = count_matrix(directory, words, paradigm, rules, select=half(h))
        sims.append(masked_similarity(ppmi(counts), stats["row_valid"]))
        sizes.append(stats["trials"])
    if not sum(sizes):
        return []
    rows = []
    for method in [m for m in METHODS if m in cfg.rsa.methods]:
        r = compare(sims[0], sims[1], method, n_pairs=cfg.rsa.paper_pairs, seed=cfg.rsa.seed, words=words)
        rel = 2 * r / (1 + r) if np.isfinite(r) and r > -1 else np.nan
        n_pairs = min(cfg.rsa.paper_pairs, n * (n - 1) // 2) if method == "paper" else n * (n - 1) // 2
        rows.append({"model": model, "paradigm": paradigm, "method": method, "n_words": n, "n_pairs": n_pairs,
                     "r_half": r, "reliability": rel, "ceiling_low": rel,
                     "ceiling_high": float(np.sqrt(rel)) if np.isfinite(rel) and rel >= 0 else np.nan,
                     "n_trials_a": sizes[0], "n_trials_b": sizes[1]})
    return rows


# ---------------------------------------------------------------- stage

def parts_dir(cfg: Config) -> Path:
    return paths.results_dir(cfg) / "parts"


def selected(cfg: Config, opts) -> tuple[list[str], list[str]]:
    """Models and strategies of this invocation (`--model`/`--strategy` narrow them)."""
    model = getattr(opts, "model", None)
    strategy = getattr(opts, "strategy", None)
    models = [cfg.model(model).name] if model else [m.name for m in cfg.models]
    if strategy and strategy not in cfg.hidden.strategies:
        raise PipelineError(f"--strategy {strategy}: not in hidden.strategies of {cfg.source} "
                            f"({', '.join(cfg.hidden.strategies)})")
    strategies = [strategy] if strategy else list(cfg.hidden.strategies)
    if not models:
        raise PipelineError(f"{cfg.source}: no [[models]] configured; add at least one model")
    return models, strategies


def run(cfg: Config, opts) -> None:
    """`rsa` stage: RSA, NN@k and CIs per model x strategy cell, split-half reliability per model."""
    from .hidden import load_hidden
    from .vocab import load_run_vocab, vocab_fingerprint

    words = load_run_vocab(cfg)
    n = len(words)
    vfp = vocab_fingerprint(cfg)
    rules = Rules.of(cfg)
    force = bool(getattr(opts, "force", False))
    man = Manifest(cfg.run_dir)
    models, strategies = selected(cfg, opts)
    settings = {**asdict(cfg.rsa), "version": _VERSION, "boot_max_pairs": BOOT_MAX_PAIRS, "rules": rules.name}
    shared: dict[str, _Reference] = {}
    for model in models:
        per_model: dict[str, _Reference] = {}
        for strategy in strategies:
            use, skipped = available_references(cfg, model, strategy)
            hidden_path = paths.hidden_file(cfg, model, strategy)
            upstream = {"hidden": man.require(hidden_path, *describe(cfg, "hidden", model, strategy))}
            for name, path in use.items():
                upstream[name] = man.require(path, *describe(cfg, name, model, strategy))
            key = f"rsa/{model}/{strategy}"
            fp = fingerprint({"settings": settings, "vocab": vfp, "skipped": skipped})
            up = fingerprint(upstream)
            part_rsa = parts_dir(cfg) / "rsa" / model / f"{strategy}.parquet"
            part_nn = parts_dir(cfg) / "nn" / model / f"{strategy}.parquet"
            if man.check(key, fp, force, upstream=up):
                log.info("rsa %s/%s: complete, skipped", model, strategy)
                continue
            man.start(key, fp, up)
            for name, why in skipped.items():
                log.warning("rsa %s/%s: reference '%s' skipped (%s)", model, strategy, name, why)
            hidden = load_hidden(cfg, model, strategy, n_words=n)
            refs = {}
            for name, path in use.items():
                cache = shared if name in ("static", "encoder") else per_model
                if name == "consensus":
                    refs[name] = load_reference(cfg, name, path, n, model, strategy)
                    continue
                if upstream[name] not in cache:
                    cache[upstream[name]] = load_reference(cfg, name, path, n, model, strategy)
                refs[name] = cache[upstream[name]]
            rows_sel, cell_words = None, words
            if rules.common_words:
                rows_sel, cell_words, refs = _common(words, refs)
            log.info("rsa %s/%s: %d layers x %d references, methods %s", model, strategy, hidden.shape[0] - 1,
                     len(refs), ", ".join(cfg.rsa.methods))
            rows, nn_rows = analyse_cell(hidden, refs, cfg.rsa.methods, paper_pairs=cfg.rsa.paper_pairs,
                                         seed=cfg.rsa.seed, nn_k=cfg.rsa.nn_k, bootstrap=cfg.rsa.bootstrap,
                                         words=cell_words, rows=rows_sel)
            cell = {"model": model, "strategy": strategy}
            write_parquet(pd.DataFrame([{**cell, **r} for r in rows], columns=_RSA_COLUMNS), part_rsa)
            write_parquet(pd.DataFrame([{**cell, **r} for r in nn_rows], columns=_NN_COLUMNS), part_nn)
            man.complete(key, fp, {"layers": int(hidden.shape[0] - 1), "references": sorted(refs),
                                   "skipped_references": skipped, "rows": len(rows), "nn_rows": len(nn_rows),
                                   "n_words": len(cell_words)},
                         outputs=[part_rsa, part_nn], upstream=up)
        if cfg.rsa.split_half:
            _reliability(cfg, man, model, words, vfp, force)
    _merge(cfg, man)


def _common(words: list[str], refs: dict[str, _Reference]) -> tuple[np.ndarray | None, list[str], dict]:
    """Paper mode: restrict every reference to the words valid in FC and FA (the authors'
    common-word intersection); None when that is every word."""
    keep = np.ones(len(words), dtype=bool)
    for name in _BEHAVIORAL:
        if name in refs:
            keep &= refs[name].valid
    if keep.all():
        return None, words, refs
    rows = np.flatnonzero(keep)
    dropped = [words[i] for i in np.flatnonzero(~keep)]
    log.warning("rsa (paper mode): %d word(s) without an FC or FA row leave every comparison: %s", len(dropped),
                ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    return rows, [words[i] for i in rows], {k: _restrict(r, rows) for k, r in refs.items()}


def _reliability(cfg: Config, man: Manifest, model: str, words: list[str], vfp: str, force: bool) -> None:
    from .logs import list_parts

    key = f"rsa/reliability/{model}"
    paradigms = [p for p in _BEHAVIORAL if p in cfg.behave.paradigms]
    fp = fingerprint({"methods": cfg.rsa.methods, "paper_pairs": cfg.rsa.paper_pairs, "seed": cfg.rsa.seed,
                      "vocab": vfp, "version": _VERSION, "rules": Rules.of(cfg).name, "paradigms": paradigms})
    up = fingerprint({p: man.ids(list_parts(paths.behavior_dir(cfg, model, p))) for p in paradigms})
    part = parts_dir(cfg) / "reliability" / f"{model}.parquet"
    if man.check(key, fp, force, upstream=up):
        return
    man.start(key, fp, up)
    rows = []
    for paradigm in paradigms:
        got = split_half(cfg, model, paradigm, words)
        if not got:
            log.warning("rsa %s: no final trials in %s; no split-half reliability for %s", model,
                        paths.behavior_dir(cfg, model, paradigm), paradigm.upper())
        rows += got
    write_parquet(pd.DataFrame(rows, columns=_REL_COLUMNS), part)
    man.complete(key, fp, {"rows": len(rows)}, outputs=[part], upstream=up)


def _merge(cfg: Config, man: Manifest) -> None:
    """Rebuild the result tables from every finished cell part of the configured cells.

    Skipped when the cells and the tables are what the last merge recorded.
    """
    stages = man.read()["stages"]
    cells = [(m.name, s) for m in cfg.models for s in cfg.hidden.strategies]
    done = [(m, s) for m, s in cells if (stages.get(f"rsa/{m}/{s}") or {}).get("complete")]
    out = paths.results_dir(cfg)
    sources = {"rsa": [parts_dir(cfg) / "rsa" / m / f"{s}.parquet" for m, s in done],
               "nn": [parts_dir(cfg) / "nn" / m / f"{s}.parquet" for m, s in done],
               "reliability": [p for m in cfg.models if (p := parts_dir(cfg) / "reliability" / f"{m.name}.parquet").exists()]}
    fp = fingerprint({"cells": done, "version": _VERSION})
    up = fingerprint({k: man.ids([p for p in v if p.exists()]) for k, v in sources.items()})
    if len(done) == len(cells) and man.check("rsa", fp, True, upstream=up):
        return
    for table, columns in (("rsa", _RSA_COLUMNS), ("nn", _NN_COLUMNS), ("reliability", _REL_COLUMNS)):
        frames = [f for p in sources[table] if p.exists() and not (f := pd.read_parquet(p)).empty]
        write_parquet(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns),
                      out / f"{table}.parquet")
    tables = [out / f"{t}.parquet" for t in ("rsa", "nn", "reliability")]
    if len(done) == len(cells):
        man.complete("rsa", fp, {"cells": len(done)}, outputs=tables, upstream=up)
    else:
        log.info("rsa: %d of %d model x strategy cells finished; tables hold those", len(done), len(cells))
