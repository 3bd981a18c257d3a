"""One model x strategy analysis: RSA, NN@k and bootstrap CIs of every layer against references.

`analyse_cell` prepares each reference once (ranked for Spearman, standardized, its top-k
neighbours) and then feeds the hidden geometry layer by layer; each layer costs one
centered cosine, one fast ranking per distinct word mask and one dot product per
reference. References that mask the same words share one pair set (a `_Group`).

Bootstrap CIs over words: one resample draws N words with replacement and keeps the set
of distinct words drawn; the statistic is recomputed on the pairs among those words. For
speed the pairs come from a fixed seeded sample of at most `BOOT_MAX_PAIRS` pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import rankdata

from .comparison import METHODS, Ranker, overlaps, rank, standardize, standardize_rows, topk, triu_mask
from .similarity import HIDDEN_GEOMETRIES, draw_paper_pairs, sample_pairs

log = logging.getLogger(__name__)

BOOT_MAX_PAIRS = 100_000


@dataclass
class Reference:
    """One reference geometry: its N x N similarity and the words it has data for."""
    name: str
    sim: np.ndarray
    valid: np.ndarray

    def restrict(self, rows: np.ndarray) -> "Reference":
        """The same reference on a subset of the words."""
        return Reference(self.name, self.sim[np.ix_(rows, rows)], self.valid[rows])


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


def _groups(refs: dict[str, Reference]) -> list[_Group]:
    groups: dict[bytes, _Group] = {}
    for name, ref in refs.items():
        g = groups.setdefault(ref.valid.tobytes(), _Group(ref.valid))
        g.refs.append(name)
    return list(groups.values())


def _extract(sim: np.ndarray, g: _Group) -> np.ndarray:
    v = sim[triu_mask(sim.shape[0])]
    return v if g.pair_valid is None else v[g.pair_valid]


def _sub(sim: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return sim if valid.all() else sim[np.ix_(valid, valid)]


def analyse_cell(hidden: np.ndarray, refs: dict[str, Reference], methods, *, paper_pairs: int, seed: int,
                 nn_k=(), bootstrap: int = 0, words: list[str] | None = None,
                 rows: np.ndarray | None = None, geometry: str = "centered") -> tuple[list[dict], list[dict]]:
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
        geometry: the layer similarity, a key of `similarity.HIDDEN_GEOMETRIES` (``centered``:
            the paper's mean-centered cosine; ``standardized``: z-scored dimensions).

    Returns:
        (rsa rows, nn rows) without the model/strategy columns.
    """
    similarity = HIDDEN_GEOMETRIES[geometry]
    n_layers = hidden.shape[0] - 1
    n = hidden.shape[1] if rows is None else len(rows)
    cell = Cell(n, n_layers, refs, methods, paper_pairs=paper_pairs, seed=seed, nn_k=nn_k,
                 bootstrap=bootstrap, words=words)
    for layer in range(1, n_layers + 1):
        x = hidden[layer] if rows is None else np.asarray(hidden[layer])[rows]
        cell.layer(layer, similarity(x, compute=np.float32))
    return cell.rows(), cell.nn_rows


class Cell:
    """One model x strategy analysis: references prepared once, then fed layer by layer."""

    def __init__(self, n: int, n_layers: int, refs: dict[str, Reference], methods, *, paper_pairs: int,
                 seed: int, nn_k=(), bootstrap: int = 0, words: list[str] | None = None):
        self.n, self.n_layers, self.refs = n, n_layers, refs
        self.methods = [m for m in METHODS if m in methods]
        self.kinds = {"rank" if m == "spearman" else "value" for m in self.methods}
        self.groups = _groups(refs)
        self.tri = triu_mask(n)
        if "paper" not in self.methods:
            self.pi = self.pj = None
        else:
            self.pi, self.pj = draw_paper_pairs(n, paper_pairs, seed, words)
        self.boot = _BootPlan(n, bootstrap, seed) if bootstrap else None
        self.boot_h = np.empty((n_layers, self.boot.pi.size), dtype=np.float32) if self.boot else None
        self.values: dict[tuple[str, str, int], float] = {}
        self.nn_rows: list[dict] = []
        self.ranker = Ranker()
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
                g.z[f"spearman:{name}"] = standardize(rankdata(vec))
            if "pearson" in self.methods:
                vec = _extract(sim, g) if vec is None else vec
                g.z[f"pearson:{name}"] = standardize(vec)
            del vec
            if self.pi is not None:
                g.z[f"paper:{name}"] = standardize(sim[self.pi, self.pj][g.paper_sel])
        g.ks = [k for k in sorted(set(nn_k)) if k < g.valid.sum()]
        if len(g.ks) < len(set(nn_k)):
            log.warning("NN@k: k >= %d valid words skipped for %s", g.valid.sum(), ", ".join(g.refs))
        if g.ks:
            for name in g.refs:
                g.top[name] = topk(_sub(self.refs[name].sim, g.valid), g.ks[-1])

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
                    zh = standardize(hv)
                    for name in g.refs:
                        self.values["pearson", name, layer] = float(g.z[f"pearson:{name}"] @ zh)
                del hv
            if self.pi is not None:
                zh = standardize(s[self.pi, self.pj][g.paper_sel])
                for name in g.refs:
                    self.values["paper", name, layer] = float(g.z[f"paper:{name}"] @ zh)
            if g.ks:
                top_h = topk(_sub(s, g.valid), g.ks[-1])
                for name in g.refs:
                    for k, ov in overlaps(top_h, g.top[name], g.ks).items():
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

    def intervals(self, boot_h: np.ndarray, refs: dict[str, Reference], groups: list[_Group],
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
                        hz = standardize_rows(np.stack([rank(row) for row in h]))
                    else:
                        hz = standardize_rows(h)
                    for name in g.refs:
                        r = ref_p[name][sel]
                        rz = standardize(rank(r) if kind == "rank" else r)
                        stats[kind, name][b] = hz @ rz
        out = {}
        for (kind, name), arr in stats.items():
            for layer in range(1, n_layers + 1):
                col = arr[:, layer - 1]
                col = col[np.isfinite(col)]
                lo, hi = np.percentile(col, [2.5, 97.5]) if col.size else (np.nan, np.nan)
                out[kind, name, layer] = (float(lo), float(hi))
        return out
