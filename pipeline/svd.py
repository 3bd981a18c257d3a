"""The paper's SVD / weighting ablation (METHOD.md §2 "Also saved", §6 "Ablation", §8).

Hidden centered cosine of every layer, layer 0 (the embeddings) included, against the FC and
FA geometry of the same model in 8 variants: cosine of the count rows (``counts``), of the
PPMI rows (``ppmi``), and of TruncatedSVD embeddings of each (``svd<d>_counts``,
``svd<d>_ppmi`` for d in `rsa.svd_dims`, `random_state = rsa.svd_seed`; the paper: 100, 300,
600 and 42). The statistic is Pearson on the `paper` pairs (`similarity.draw_paper_pairs`,
`rsa.paper_pairs`, `rsa.seed`), the one the paper's ablation reports. Runs with the `rsa`
stage when `rsa.svd_variants = true`.

Words. In both modes the words common to the hidden states, the FC rows and the FA rows (the
paper's ablation), hidden states centered over them. Each variant's SVD is fit, as the
paper's, on every cue with a row of that paradigm, in alphabetical order, columns the sorted
responses; counts and PPMI (`similarity.ppmi`, float64) are the aggregate stage's.

Dimensions. TruncatedSVD needs fewer components than the matrix has rows and columns, and
the rank bounds what is meaningful: a variant asks for d dimensions and gets
``min(d, min(rows, columns) - 1)`` (``dims_used`` in the table). On the 48-word demo every
SVD variant is clipped to a few dozen dimensions (so SVD100/300/600 coincide there); at the
paper's 5,000 words none is.

Output: ``results/svd_variants.parquet`` with model, strategy, paradigm, variant, dims,
dims_used, layer, n_layers, n_words, n_pairs, rsa; one part per model x strategy under
``results/parts/svd_variants/`` (manifest ``rsa/svd_variants/<model>/<strategy>``).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import keys, paths
from .comparison import standardize
from .config import Config
from .hidden import load_hidden
from .manifest import Manifest
from .paradigms import paper_names
from .similarity import centered_cosine, cosine, draw_paper_pairs, ppmi
from .store import write_parquet

log = logging.getLogger(__name__)

_VERSION = 1
_PARADIGMS = paper_names()
COLUMNS = ["model", "strategy", "paradigm", "variant", "dims", "dims_used", "layer", "n_layers", "n_words",
           "n_pairs", "rsa"]


def variant_names(dims) -> list[str]:
    """The variants in the paper's order: counts, ppmi, then svd<d>_counts, svd<d>_ppmi per d."""
    return ["counts", "ppmi"] + [f"svd{d}_{w}" for d in dims for w in ("counts", "ppmi")]


def svd_embedding(m: sp.spmatrix, dims: int, seed: int) -> tuple[np.ndarray, int]:
    """scikit-learn's `TruncatedSVD(n_components, random_state=seed).fit_transform(m)`.

    Args:
        m: rows x columns matrix (counts or PPMI).
        dims: dimensions asked for; clipped to ``min(rows, columns) - 1`` (TruncatedSVD's
            limit, and the most a matrix of that rank can use).
        seed: `random_state`.

    Returns:
        (rows x dims_used embedding, dims_used).
    """
    from sklearn.decomposition import TruncatedSVD

    used = max(1, min(int(dims), min(m.shape) - 1))
    return TruncatedSVD(n_components=used, random_state=seed).fit_transform(m), used


def variants(counts: sp.spmatrix, dims, seed: int) -> dict[str, tuple[np.ndarray, int | None]]:
    """Every variant's cosine similarity between the rows of one count matrix.

    Args:
        counts: cue x response counts, rows in the order the SVD is fit in.
        dims: SVD dimensions (`rsa.svd_dims`).
        seed: TruncatedSVD `random_state` (`rsa.svd_seed`).

    Returns:
        variant -> (rows x rows float32 cosine, dimensions used; None for counts and ppmi).
    """
    c = sp.csr_matrix(counts, dtype=np.float64)
    weights = {"counts": c, "ppmi": ppmi(c)}
    out: dict[str, tuple[np.ndarray, int | None]] = {w: (cosine(m), None) for w, m in weights.items()}
    for d in dims:
        for w, m in weights.items():
            emb, used = svd_embedding(m, d, seed)
            out[f"svd{d}_{w}"] = (cosine(emb), used)
    return out


def _reference_pairs(cfg: Config, model: str, paradigm: str, words: list[str], common: np.ndarray,
                     pi: np.ndarray, pj: np.ndarray) -> dict[str, tuple[np.ndarray, int | None]]:
    """Each variant's values on the pairs (common[pi], common[pj]), SVD fit on every row of the paradigm."""
    from .aggregate import load_matrices

    mats = load_matrices(cfg, model, paradigm)
    valid = ~np.isnan(np.asarray(mats["sim_ppmi"])).all(axis=1)
    rows = np.array(sorted(np.flatnonzero(valid), key=words.__getitem__), dtype=np.int64)
    pos = np.full(len(words), -1, dtype=np.int64)
    pos[rows] = np.arange(rows.size)
    a, b = pos[common[pi]], pos[common[pj]]
    sims = variants(mats["counts"][rows], cfg.rsa.svd_dims, cfg.rsa.svd_seed)
    return {name: (np.asarray(sim[a, b], dtype=np.float64), used) for name, (sim, used) in sims.items()}


def analyse_model(cfg: Config, model: str, strategies, words: list[str]) -> dict[str, pd.DataFrame]:
    """The ablation of one model, per strategy (rows of `COLUMNS`)."""
    from .aggregate import load_matrices

    paradigms = [p for p in _PARADIGMS if p in cfg.behave.paradigms]
    keep = np.ones(len(words), dtype=bool)
    for p in paradigms:
        keep &= ~np.isnan(np.asarray(load_matrices(cfg, model, p)["sim_ppmi"])).all(axis=1)
    common = np.flatnonzero(keep)
    cell_words = [words[i] for i in common]
    pi, pj = draw_paper_pairs(len(cell_words), cfg.rsa.paper_pairs, cfg.rsa.seed, cell_words)
    refs = {p: _reference_pairs(cfg, model, p, words, common, pi, pj) for p in paradigms}
    z = {(p, v): standardize(vals) for p, r in refs.items() for v, (vals, _) in r.items()}
    out = {}
    for strategy in strategies:
        hidden = load_hidden(cfg, model, strategy, n_words=len(words))
        n_layers = hidden.shape[0] - 1
        rows = []
        for layer in range(hidden.shape[0]):
            s = centered_cosine(np.asarray(hidden[layer])[common], compute=np.float32)
            zh = standardize(s[pi, pj])
            for p, r in refs.items():
                for v, (_, used) in r.items():
                    dims = int(v[3:].split("_")[0]) if v.startswith("svd") else None
                    rows.append({"model": model, "strategy": strategy, "paradigm": p, "variant": v, "dims": dims,
                                 "dims_used": used, "layer": layer, "n_layers": n_layers, "n_words": len(common),
                                 "n_pairs": int(pi.size), "rsa": float(z[p, v] @ zh)})
        out[strategy] = pd.DataFrame(rows, columns=COLUMNS)
    return out


def run(cfg: Config, man: Manifest, models, strategies, words: list[str], vocab_fp: str, force: bool) -> None:
    """The ablation for every selected model x strategy with weights, then the merged table.

    Skips cells whose settings and inputs are unchanged; a model without both behavioral
    matrices is skipped with a note.
    """
    from .rsa import describe

    paradigms = [p for p in _PARADIGMS if p in cfg.behave.paradigms]
    if not paradigms:
        log.warning("rsa: rsa.svd_variants is set but behave.paradigms has neither fc nor fa; no SVD ablation")
        return
    r = cfg.rsa
    settings = {"version": _VERSION, "dims": r.svd_dims, "seed": r.svd_seed, "paper_pairs": r.paper_pairs,
                "pair_seed": r.seed, "paradigms": paradigms, "vocab": vocab_fp}
    for model in models:
        if cfg.model(model).behavior_only:
            continue
        upstream = {p: man.require(paths.matrix_file(cfg, model, p, "sim_ppmi"), *describe(cfg, p, model))
                    for p in paradigms}
        steps = {}
        for strategy in strategies:
            hidden = man.require(paths.hidden_file(cfg, model, strategy), *describe(cfg, "hidden", model, strategy))
            steps[strategy] = man.step(keys.svd_variants(model, strategy), settings,
                                       {**upstream, "hidden": hidden}, force)
        todo = [s for s in strategies if not steps[s].done()]
        if not todo:
            log.info("rsa %s: SVD ablation complete, skipped", model)
            continue
        for s in todo:
            steps[s].start()
        log.info("rsa %s: SVD ablation (%d variants x %s) for %s", model, len(variant_names(r.svd_dims)),
                 "/".join(paradigms), ", ".join(todo))
        for strategy, table in analyse_model(cfg, model, todo, words).items():
            part = paths.result_part(cfg, "svd_variants", model, strategy)
            write_parquet(table, part)
            clipped = sorted({(int(d), int(u)) for d, u in zip(table.dims, table.dims_used)
                              if pd.notna(d) and u != d})
            steps[strategy].complete([part], {"rows": len(table), "n_words": int(table.n_words.iloc[0]),
                                              "clipped_dims": clipped})
            if clipped:
                log.info("rsa %s/%s: SVD dimensions clipped to the matrix size: %s", model, strategy,
                         ", ".join(f"{d} -> {u}" for d, u in clipped))
    parts = [p for m in cfg.models if not m.behavior_only for s in cfg.hidden.strategies
             if (p := paths.result_part(cfg, "svd_variants", m.name, s)).exists()]
    frames = [f for p in parts if not (f := pd.read_parquet(p)).empty]
    write_parquet(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS),
                  paths.result_table(cfg, "svd_variants"))
