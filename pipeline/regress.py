"""Held-out-words ridge regression: does behavior predict unseen hidden-state similarity?

METHOD.md §7, for every model x strategy x layer (1..L) x seed of `regress.seeds`:

- Word split: `train_test_split(sorted(words), test_size=regress.test_size,
  random_state=seed)`. Train pairs: `regress.train_pairs` pairs drawn without replacement
  from the train-train upper triangle by `similarity.sample_pairs(n_train_words, size, seed)`
  (indices into the split's train list, as the paper does). Test pairs: every test-test
  pair. No test pair contains a train word.
- Target: the model's layer-l hidden cosine after subtracting the mean of the train words
  only (raw cosine when `regress.centered = false`, the paper's ablation).
- Features per pair: static cosine, encoder cosine, cross-model consensus (the mean over
  every other model and every layer 1..L of the same train-mean-centered cosine, same
  strategy), FC and FA cosine of raw count rows (`sim_counts.npy`).
- Five nested feature sets, each `make_pipeline(StandardScaler(), RidgeCV(alphas=
  np.logspace(-2, 6, 15), cv=regress.cv))` fitted on the train pairs and scored (R²) on the
  test pairs (computed in closed form by `ridge_cv`, checked against scikit-learn): `base` (static + encoder), `base+cross`, `base+cross+fc`, `base+cross+fa`,
  `base+cross+fc+fa` (full). With a single model there is no consensus: the sets that need
  it are replaced by `base+fc`, `base+fa`, `base+fc+fa`, and the manifest records it.
- Pairs with a word whose static vector is missing are dropped (column `n_dropped`).

Output `results/regression.parquet`: model, strategy, layer, n_layers, seed, feature_set,
r2_test, r2_train, alpha, n_train, n_test, n_dropped. Each model x strategy cell is written
to `results/parts/regression/` and recorded as `regress/<model>/<strategy>`, so a re-run
skips finished cells.

Hidden cosines are evaluated as a train x train and a test x test block per layer (one
float32 syrk each, no train x test block), which keeps the consensus over hundreds of
layers affordable; `tests/test_regress.py` checks the values against
`similarity.centered_cosine(layer, center_rows=train_idx)`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import paths
from .config import Config
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .rsa import _file_id, _write_parquet, parts_dir, selected
from .similarity import cosine, sample_pairs

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-2, 6, 15)
FEATURE_SETS = {
    "base": ("static", "encoder"),
    "base+cross": ("static", "encoder", "consensus"),
    "base+cross+fc": ("static", "encoder", "consensus", "fc"),
    "base+cross+fa": ("static", "encoder", "consensus", "fa"),
    "base+cross+fc+fa": ("static", "encoder", "consensus", "fc", "fa"),
}
FEATURE_SETS_NO_CONSENSUS = {
    "base": ("static", "encoder"),
    "base+fc": ("static", "encoder", "fc"),
    "base+fa": ("static", "encoder", "fa"),
    "base+fc+fa": ("static", "encoder", "fc", "fa"),
}
_COLUMNS = ["model", "strategy", "layer", "n_layers", "seed", "feature_set", "r2_test", "r2_train", "alpha",
            "n_train", "n_test", "n_dropped"]
_VERSION = 1


@dataclass
class Split:
    """One seed's word split and pairs, as vocabulary indices."""
    train_idx: np.ndarray
    test_idx: np.ndarray
    train_a: np.ndarray
    train_b: np.ndarray
    test_a: np.ndarray
    test_b: np.ndarray
    keep_train: np.ndarray
    keep_test: np.ndarray

    @property
    def ii_train(self) -> np.ndarray:
        return self.train_idx[self.train_a]

    @property
    def jj_train(self) -> np.ndarray:
        return self.train_idx[self.train_b]

    @property
    def ii_test(self) -> np.ndarray:
        return self.test_idx[self.test_a]

    @property
    def jj_test(self) -> np.ndarray:
        return self.test_idx[self.test_b]

    @property
    def n_dropped(self) -> int:
        return int((~self.keep_train).sum() + (~self.keep_test).sum())


def make_split(words: list[str], seed: int, test_size: float, train_pairs: int,
               valid: np.ndarray | None = None) -> Split:
    """Word split and pair sets of one seed (METHOD.md §7).

    Args:
        words: the run vocabulary (matrix order).
        seed: `random_state` of the split and seed of the train-pair sampler.
        test_size: share of test words.
        train_pairs: number of train-train pairs to sample.
        valid: words usable in pairs (False where the static vector is missing); pairs
            touching an invalid word are flagged in `keep_train`/`keep_test`.

    Returns:
        The split.
    """
    index = {w: i for i, w in enumerate(words)}
    train_w, test_w = train_test_split(sorted(words), test_size=test_size, random_state=seed)
    train_idx = np.array([index[w] for w in train_w], dtype=np.int64)
    test_idx = np.array([index[w] for w in test_w], dtype=np.int64)
    a, b = sample_pairs(len(train_idx), train_pairs, seed)
    ta, tb = np.triu_indices(len(test_idx), k=1)
    valid = np.ones(len(words), dtype=bool) if valid is None else valid
    keep_train = valid[train_idx[a]] & valid[train_idx[b]]
    keep_test = valid[test_idx[ta]] & valid[test_idx[tb]]
    return Split(train_idx, test_idx, a, b, ta, tb, keep_train, keep_test)


def pair_cosines(layer: np.ndarray, split: Split, centered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Hidden cosine of one layer on the split's kept train and test pairs.

    Centering subtracts the train words' mean vector only (METHOD.md §7), so nothing about
    the test words leaks into the target or the consensus.

    Returns:
        (train values, test values), float32, in the split's pair order.
    """
    x = np.array(layer, dtype=np.float32)
    if centered:
        x -= x[split.train_idx].mean(axis=0, dtype=np.float64).astype(np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    x /= np.where(norms > 0, norms, np.float32(1.0))[:, None]
    xs = x[split.train_idx]
    block = xs @ xs.T
    train = block[split.train_a, split.train_b][split.keep_train]
    xs = x[split.test_idx]
    block = xs @ xs.T
    test = block[split.test_a, split.test_b][split.keep_test]
    return train, test


def consensus_pairs(values: dict[str, list[tuple[np.ndarray, np.ndarray]]], target: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Cross-model consensus on the split's pairs: the mean over every other model and every
    layer of its (train-mean-centered) hidden cosine, one scalar per pair (METHOD.md §5).

    Args:
        values: model -> per-layer (train, test) pair values from `pair_cosines`.
        target: the model being predicted, left out of its own consensus.
    """
    others = [v for m, layers in values.items() if m != target for v in layers]
    if not others:
        raise ValueError(f"no model besides {target!r}: a consensus needs at least two models")
    return tuple(np.mean(np.stack([v[part] for v in others]), axis=0, dtype=np.float64) for part in (0, 1))


def fit_sets(features_train: dict[str, np.ndarray], y_train: np.ndarray, features_test: dict[str, np.ndarray],
             y_test: np.ndarray, sets: dict[str, tuple[str, ...]], cv: int, engine: str = "fast") -> list[dict]:
    """Fit each nested feature set and score it on the test pairs.

    Args:
        features_train: feature name -> train-pair values.
        y_train: train targets.
        features_test: feature name -> test-pair values.
        y_test: test targets.
        sets: feature-set name -> feature names.
        cv: folds of the alpha search.
        engine: 'sklearn' fits `make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, cv=cv))`;
            'fast' (default) computes the same model in closed form (see `ridge_cv`), about
            50 times faster, which matters with 5 sets x 40 layers x seeds x cells.

    Returns:
        One dict per set: feature_set, r2_test, r2_train, alpha.
    """
    out = []
    y_train = np.asarray(y_train, dtype=np.float64)
    y_test = np.asarray(y_test, dtype=np.float64)
    for name, feats in sets.items():
        x_tr = np.column_stack([features_train[f] for f in feats]).astype(np.float64)
        x_te = np.column_stack([features_test[f] for f in feats]).astype(np.float64)
        if engine == "sklearn":
            model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, cv=cv))
            model.fit(x_tr, y_train)
            predict, alpha = model.predict, float(model[-1].alpha_)
        elif engine == "fast":
            predict, alpha = ridge_cv(x_tr, y_train, cv)
        else:
            raise ValueError(f"unknown engine {engine!r}; use 'fast' or 'sklearn'")
        out.append({"feature_set": name, "r2_test": float(r2_score(y_test, predict(x_te))),
                    "r2_train": float(r2_score(y_train, predict(x_tr))), "alpha": alpha})
    return out


def ridge_cv(x: np.ndarray, y: np.ndarray, cv: int, alphas: np.ndarray = ALPHAS):
    """`make_pipeline(StandardScaler(), RidgeCV(alphas, cv=cv))` in closed form.

    The same computation as scikit-learn's: standardize with the train mean and (ddof 0)
    std; for each unshuffled `KFold(cv)` fold and alpha, a ridge with intercept fitted on
    the other folds (centered normal equations) and scored by R² on the fold; the alpha
    with the best mean score (first on ties) is refitted on all rows. The normal equations
    of all alphas share one eigendecomposition of the p x p Gram matrix, instead of 15 x cv
    separate estimator fits. `tests/test_regress.py` checks alphas and R² against sklearn.

    Returns:
        (predict function for raw feature rows, chosen alpha).
    """
    from sklearn.model_selection import KFold

    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 10 * np.finfo(np.float64).eps] = 1.0
    xs = (x - mean) / scale
    scores = np.zeros(len(alphas))
    for tr, te in KFold(n_splits=cv).split(xs):
        coef, intercept = _ridge_path(xs[tr], y[tr], alphas)
        pred = xs[te] @ coef + intercept
        resid = ((y[te, None] - pred) ** 2).sum(axis=0)
        total = ((y[te] - y[te].mean()) ** 2).sum()
        scores += 1 - resid / total if total > 0 else (resid == 0).astype(float)
    best = int(np.argmax(scores))
    coef, intercept = _ridge_path(xs, y, alphas[best:best + 1])
    w, b = coef[:, 0] / scale, intercept[0] - (mean / scale) @ coef[:, 0]
    return (lambda rows: rows @ w + b), float(alphas[best])


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ridge-with-intercept coefficients (p x len(alphas)) and intercepts for every alpha."""
    xm, ym = x.mean(axis=0), y.mean()
    xc = x - xm
    evals, evecs = np.linalg.eigh(xc.T @ xc)
    proj = evecs.T @ (xc.T @ (y - ym))
    coef = evecs @ (proj[:, None] / (evals[:, None] + alphas[None, :]))
    return coef, ym - xm @ coef


# ---------------------------------------------------------------- stage

def _load_vectors(path: Path, n: int, what: str, cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise PipelineError(f"{path}: {what} is missing; the regression needs it: run `python -m pipeline "
                            f"baselines --config {cfg.source}` (and configure baselines.static / "
                            f"baselines.encoder)")
    v = np.load(path, mmap_mode="r")
    if v.ndim != 2 or v.shape[0] != n:
        raise PipelineError(f"{path}: {what} has shape {v.shape}, expected ({n}, dim); re-run the baselines "
                            f"stage with --force")
    v = np.array(v, dtype=np.float64)
    valid = np.isfinite(v).all(axis=1)
    v[~valid] = 0.0
    return cosine(v), valid


def _load_counts_cosine(cfg: Config, model: str, paradigm: str, n: int) -> np.ndarray:
    path = paths.matrices_dir(cfg, model, paradigm) / "sim_counts.npy"
    if not path.exists():
        raise PipelineError(f"{path}: the {paradigm.upper()} counts-cosine matrix of {model} is missing; run "
                            f"`python -m pipeline aggregate --config {cfg.source} --model {model}` first")
    m = np.load(path, mmap_mode="r")
    if m.shape != (n, n):
        raise PipelineError(f"{path}: shape {m.shape}, expected ({n}, {n}); re-run aggregate with --force")
    return np.asarray(m, dtype=np.float32)


def _hidden(cfg: Config, model: str, strategy: str, n: int) -> np.ndarray:
    path = paths.hidden_file(cfg, model, strategy)
    if not path.exists():
        raise PipelineError(f"{path}: hidden states of {model}/{strategy} are missing; run `python -m pipeline "
                            f"hidden --config {cfg.source} --model {model} --strategy {strategy}` first")
    h = np.load(path, mmap_mode="r")
    if h.ndim != 3 or h.shape[1] != n or h.shape[0] < 2:
        raise PipelineError(f"{path}: shape {h.shape}, expected (L+1, {n}, dim) with L >= 1")
    return h


def _layer_values(cfg: Config, model: str, strategy: str, n: int, split: Split) -> list[tuple]:
    h = _hidden(cfg, model, strategy, n)
    return [pair_cosines(h[layer], split, cfg.regress.centered) for layer in range(1, h.shape[0])]


def _pairs(m: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    tr = m[split.ii_train[split.keep_train], split.jj_train[split.keep_train]]
    te = m[split.ii_test[split.keep_test], split.jj_test[split.keep_test]]
    return tr, te


def run(cfg: Config, opts) -> None:
    """`regress` stage: held-out-words regression for every model x strategy x layer x seed."""
    from .vocab import load_run_vocab, vocab_fingerprint

    words = load_run_vocab(cfg)
    n = len(words)
    force = bool(getattr(opts, "force", False))
    man = Manifest(cfg.run_dir)
    models, strategies = selected(cfg, opts)
    all_models = [m.name for m in cfg.models]
    consensus = len(all_models) > 1
    sets = FEATURE_SETS if consensus else FEATURE_SETS_NO_CONSENSUS
    paradigms = [p for p in ("fc", "fa") if p in cfg.behave.paradigms]
    sets = {k: v for k, v in sets.items() if all(f in paradigms or f not in ("fc", "fa") for f in v)}
    dropped_sets = sorted(set(FEATURE_SETS if consensus else FEATURE_SETS_NO_CONSENSUS) - set(sets))
    base = paths.baselines_dir(cfg)
    static_path = base / f"{cfg.baselines.static_name}.npy"
    encoder_path = base / f"{cfg.baselines.encoder_name}.npy"
    settings = {**asdict(cfg.regress), "sets": sets, "version": _VERSION, "vocab": vocab_fingerprint(cfg)}
    static = encoder = valid = None

    for strategy in strategies:
        pending = {}
        for model in models:
            inputs = {"static": _file_id(static_path), "encoder": _file_id(encoder_path),
                      **{p: _file_id(paths.matrices_dir(cfg, model, p) / "sim_counts.npy") for p in paradigms},
                      "hidden": {m: _file_id(paths.hidden_file(cfg, m, strategy))
                                 for m in (all_models if consensus else [model])}}
            key = f"regress/{model}/{strategy}"
            fp = fingerprint({"settings": settings, "inputs": inputs})
            part = parts_dir(cfg) / "regression" / model / f"{strategy}.parquet"
            if man.check(key, fp, force) and part.exists():
                log.info("regress %s/%s: complete, skipped", model, strategy)
                continue
            man.start(key, fp)
            pending[model] = (key, fp, part, [])
        if not pending:
            continue
        if static is None:
            static, valid = _load_vectors(static_path, n, f"the {cfg.baselines.static_name} static vectors", cfg)
            encoder, _ = _load_vectors(encoder_path, n, f"the {cfg.baselines.encoder_name} encoder vectors", cfg)
            if not valid.all():
                log.warning("regress: %d words have no static vector; pairs containing them are dropped",
                            int((~valid).sum()))
        behavior = {m: {p: _load_counts_cosine(cfg, m, p, n) for p in paradigms} for m in pending}
        for seed in cfg.regress.seeds:
            split = make_split(words, seed, cfg.regress.test_size, cfg.regress.train_pairs, valid)
            lexical = {"static": _pairs(static, split), "encoder": _pairs(encoder, split)}
            needed = all_models if consensus else list(pending)
            values = {m: _layer_values(cfg, m, strategy, n, split) for m in needed}
            for model, (_, _, _, rows) in pending.items():
                feats = dict(lexical)
                for p in paradigms:
                    feats[p] = _pairs(behavior[model][p], split)
                if consensus:
                    feats["consensus"] = consensus_pairs(values, model)
                f_tr = {k: v[0] for k, v in feats.items()}
                f_te = {k: v[1] for k, v in feats.items()}
                n_layers = len(values[model])
                for layer, (y_tr, y_te) in enumerate(values[model], start=1):
                    for r in fit_sets(f_tr, y_tr, f_te, y_te, sets, cfg.regress.cv):
                        rows.append({"model": model, "strategy": strategy, "layer": layer, "n_layers": n_layers,
                                     "seed": seed, **r, "n_train": int(y_tr.size), "n_test": int(y_te.size),
                                     "n_dropped": split.n_dropped})
                log.info("regress %s/%s seed %d: %d layers fitted", model, strategy, seed, n_layers)
            del values
        for model, (key, fp, part, rows) in pending.items():
            _write_parquet(pd.DataFrame(rows, columns=_COLUMNS), part)
            note = {} if consensus else {"consensus": "single model: sets needing consensus replaced by "
                                                      + ", ".join(s for s in sets if s != "base")}
            if dropped_sets:
                note["skipped_sets"] = f"{', '.join(dropped_sets)}: paradigm not in behave.paradigms"
            man.complete(key, fp, {"rows": len(rows), "feature_sets": list(sets), **note})
    _merge(cfg, man)


def _merge(cfg: Config, man: Manifest) -> None:
    stages = man.read()["stages"]
    cells = [(m.name, s) for m in cfg.models for s in cfg.hidden.strategies]
    done = [(m, s) for m, s in cells if (stages.get(f"regress/{m}/{s}") or {}).get("complete")]
    frames = [pd.read_parquet(p) for m, s in done
              if (p := parts_dir(cfg) / "regression" / m / f"{s}.parquet").exists()]
    _write_parquet(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=_COLUMNS),
                   paths.results_dir(cfg) / "regression.parquet")
    if len(done) == len(cells):
        fp = fingerprint({f"{m}/{s}": stages[f"regress/{m}/{s}"]["inputs"] for m, s in done})
        man.start("regress", fp)
        man.complete("regress", fp, {"cells": len(done)})
