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
  test pairs (computed in closed form by `ridge_cv`, checked against scikit-learn): `base`
  (static + encoder), `base+cross`, `base+cross+fc`, `base+cross+fa`, `base+cross+fc+fa`
  (full). With a single model there is no consensus: the sets that need it are replaced by
  `base+fc`, `base+fa`, `base+fc+fa`, and the manifest records it. Behavior-only models (no
  `models[].path`, e.g. behind an API) have no hidden states: they get no cells and are not
  part of the consensus.
- Beyond the paper: each reference of `rsa.references` from a paradigm beyond the paper's or
  from human norms (``fc_scored`` when it is in `behave.paradigms`, ``human:<name>``) adds one
  set, the consensus set (or `base`) plus its counts-cosine, e.g. `base+cross+fc_scored`,
  `base+cross+human:swow`, listed before the full set.
- Pairs with a word whose static vector or behavioral (or human-norms) row is missing are
  dropped (column `n_dropped`), for every set alike, so the sets are fitted on the same
  pairs; paper mode follows the authors instead (`rules.Rules`).

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
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from . import keys, paths
from .config import HUMAN, Config
from .errors import PipelineError
from .hidden import load_hidden
from .manifest import Manifest, fingerprint
from .merge import finished, merge
from .options import Options, select
from .paradigms import paper_names
from .rules import Rules
from .similarity import cosine, sample_pairs, unit_centered
from .store import load_npy, write_parquet
from .vocab import load_run_vocab, vocab_fingerprint

log = logging.getLogger(__name__)

ALPHAS = np.logspace(-2, 6, 15)
_PAPER = paper_names()


def _paper_sets(base: tuple[str, ...], name: str) -> dict[str, tuple[str, ...]]:
    """`base`, then base plus each of the paper's paradigms, then base plus all of them."""
    return {name: base, **{f"{name}+{p}": (*base, p) for p in _PAPER}, f"{name}+{'+'.join(_PAPER)}": (*base, *_PAPER)}


FEATURE_SETS = {"base": ("static", "encoder"), **_paper_sets(("static", "encoder", "consensus"), "base+cross")}
"""The paper's feature sets (base, base+cross, base+cross+fc, base+cross+fa, base+cross+fc+fa)."""
FEATURE_SETS_NO_CONSENSUS = _paper_sets(("static", "encoder"), "base")
"""The same without the cross-model consensus (a single model with weights)."""
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
               valid: np.ndarray | None = None, split_words: list[str] | None = None) -> Split:
    """Word split and pair sets of one seed (METHOD.md §7).

    Args:
        words: the run vocabulary (matrix order).
        seed: `random_state` of the split and seed of the train-pair sampler.
        test_size: share of test words.
        train_pairs: number of train-train pairs to sample.
        valid: words usable in pairs (False where the static vector is missing); pairs
            touching an invalid word are flagged in `keep_train`/`keep_test`.
        split_words: the words that enter the split (default: all of `words`); paper mode
            passes the authors' common words.

    Returns:
        The split.
    """
    index = {w: i for i, w in enumerate(words)}
    train_w, test_w = train_test_split(sorted(words if split_words is None else split_words),
                                       test_size=test_size, random_state=seed)
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
    x = unit_centered(layer, split.train_idx, center=centered)
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

def _load_vectors(cfg: Config, man: Manifest, path: Path, n: int, what: str, zero_missing: bool
                  ) -> tuple[np.ndarray, np.ndarray]:
    rebuild = keys.command(cfg, "baselines")
    if not path.exists():
        raise PipelineError(f"{path}: {what} is missing; the regression needs it: run `{rebuild}` (and configure "
                            f"baselines.static / baselines.encoder)")
    man.require(path, what, rebuild)
    v = np.array(load_npy(path, what, rebuild, shape=(n, None), finite="rows"), dtype=np.float64)
    valid = np.isfinite(v).all(axis=1)
    v[~valid] = 0.0
    return cosine(v), (np.ones(n, dtype=bool) if zero_missing else valid)


def _counts_file(cfg: Config, model: str, feature: str) -> tuple[Path, str, str]:
    """(counts-cosine file of a behavioral or human feature, what it holds, its rebuild command)."""
    if feature.startswith(HUMAN):
        return (paths.norms_file(cfg, feature[len(HUMAN):], "sim_counts"),
                f"the counts-cosine matrix of the human norms '{feature[len(HUMAN):]}'",
                keys.command(cfg, "aggregate"))
    return (paths.matrix_file(cfg, model, feature, "sim_counts"), f"the {feature.upper()} counts-cosine matrix of "
            f"{model}", keys.command(cfg, "aggregate", model=model, paradigm=feature))


def extra_features(cfg: Config) -> list[str]:
    """The references beyond the paper's that become feature sets (see the module docstring);
    a paradigm beyond the paper's (``fc_scored``) only when every model with weights runs it (an
    API model with a `path` whose backend cannot score has no scored FC to offer)."""
    weighted = [m for m in cfg.models if not m.behavior_only]
    return [r for r in cfg.rsa.references
            if r.startswith(HUMAN) or (r in cfg.behave.paradigms and r not in _PAPER
                                       and all(r in cfg.paradigms_of(m) for m in weighted))]


def _load_counts_cosine(cfg: Config, model: str, paradigm: str, n: int) -> tuple[np.ndarray, np.ndarray]:

    path, what, rebuild = _counts_file(cfg, model, paradigm)
    m = load_npy(path, what, rebuild, shape=(n, n), finite="rows")
    m = np.asarray(m, dtype=np.float32)
    return m, ~np.isnan(m).all(axis=1)


def _layer_values(cfg: Config, model: str, strategy: str, n: int, split: Split) -> list[tuple]:

    h = load_hidden(cfg, model, strategy, n_words=n)
    return [pair_cosines(h[layer], split, cfg.regress.centered) for layer in range(1, h.shape[0])]


def _pairs(m: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
    tr = m[split.ii_train[split.keep_train], split.jj_train[split.keep_train]]
    te = m[split.ii_test[split.keep_test], split.jj_test[split.keep_test]]
    return tr, te


def _upstream(cfg: Config, man: Manifest, model: str, strategy: str, paradigms, models, static_path,
              encoder_path) -> str:
    base = keys.command(cfg, "baselines")
    ids = {"static": man.require(static_path, "the static baseline vectors", base),
           "encoder": man.require(encoder_path, "the encoder baseline vectors", base)}
    for p in paradigms:
        ids[p] = man.require(*_counts_file(cfg, model, p))
    ids["hidden"] = {m: man.require(paths.hidden_file(cfg, m, strategy), f"hidden states of {m}/{strategy}",
                                    keys.command(cfg, "hidden", model=m, strategy=strategy)) for m in models}
    return fingerprint(ids)


@dataclass
class _Stage:
    """What every cell of one regress invocation shares: words, rules, feature sets, and
    the lexical baselines (loaded on first use)."""
    cfg: Config
    man: Manifest
    words: list[str]
    rules: Rules
    paradigms: list[str]
    sets: dict[str, tuple[str, ...]]
    dropped_sets: list[str]
    models: list[str]
    static: np.ndarray | None = None
    encoder: np.ndarray | None = None
    static_valid: np.ndarray | None = None
    unfit_sets: list[str] = field(default_factory=list)

    @property
    def consensus(self) -> bool:
        return len(self.models) > 1

    def lexical(self) -> None:
        if self.static is not None:
            return
        cfg, n = self.cfg, len(self.words)
        zero = self.rules.regress_missing_static == "zero"
        self.static, self.static_valid = _load_vectors(cfg, self.man, paths.static_file(cfg), n,
                                                       f"the {cfg.baselines.static_name} static vectors", zero)
        self.encoder, _ = _load_vectors(cfg, self.man, paths.encoder_file(cfg), n,
                                        f"the {cfg.baselines.encoder_name} encoder vectors", True)
        if not self.static_valid.all():
            log.warning("regress: %d words have no static vector; pairs containing them are dropped",
                        int((~self.static_valid).sum()))


def run(cfg: Config, opts: Options) -> None:
    """`regress` stage: held-out-words regression for every model x strategy x layer x seed.

    Word sets follow `rules.Rules`: by default every vocabulary word enters the split and
    pairs touching a word without a static vector or a behavioral row are dropped; in
    paper mode the split is over the words with an FC and an FA row (the authors' common
    words) and a missing static vector counts as a zero vector.
    """
    force = opts.force
    sel = select(cfg, opts)
    all_models = [m.name for m in cfg.models if not m.behavior_only]
    for name in sel.models:
        if cfg.model(name).behavior_only:
            log.info("regress %s: behavior-only model (no weights): no hidden states to predict, skipped", name)
    all_sets = FEATURE_SETS if len(all_models) > 1 else FEATURE_SETS_NO_CONSENSUS
    paradigms = [p for p in _PAPER if p in cfg.behave.paradigms]
    sets = {k: v for k, v in all_sets.items() if all(f in paradigms or f not in _PAPER for f in v)}
    dropped = sorted(set(all_sets) - set(sets))
    extras = extra_features(cfg)
    if extras:
        sets = _with_extras(sets, extras)
        paradigms = paradigms + extras
    st = _Stage(cfg, Manifest(cfg.run_dir), load_run_vocab(cfg), Rules.of(cfg), paradigms, sets, dropped, all_models)
    settings = {"settings": {**asdict(cfg.regress), "sets": sets, "version": _VERSION,
                             "vocab": vocab_fingerprint(cfg), "rules": st.rules.name}}
    for strategy in sel.strategies:
        pending = {}
        for model in (m for m in sel.models if m in all_models):
            up = _upstream(cfg, st.man, model, strategy, paradigms, all_models if st.consensus else [model],
                           paths.static_file(cfg), paths.encoder_file(cfg))
            step = st.man.step(keys.regress_cell(model, strategy), settings, up, force)
            if step.done():
                log.info("regress %s/%s: complete, skipped", model, strategy)
                continue
            step.start()
            pending[model] = step
        if pending:
            _fit_strategy(st, strategy, pending)
    _merge(cfg, st.man)


def _with_extras(sets: dict[str, tuple[str, ...]], extras: list[str]) -> dict[str, tuple[str, ...]]:
    """`sets` with one set per extra feature (the consensus set, or base, plus it), placed
    before the fullest set when that one holds behavioral features, so it stays last."""
    ref = "base+cross" if "base+cross" in sets else "base"
    add = {f"{ref}+{e}": (*sets[ref], e) for e in extras}
    names = list(sets)
    last = names[-1] if any(f in _PAPER for f in sets[names[-1]]) else None
    out = {k: v for k, v in sets.items() if k != last}
    out.update(add)
    if last is not None:
        out[last] = sets[last]
    return out


def _fit_strategy(st: _Stage, strategy: str, pending: dict) -> None:
    """Fit every pending model of one strategy; models whose behavioral rows mask the same
    words share one split (and one pass over every model's layers for the consensus)."""
    cfg, words, n = st.cfg, st.words, len(st.words)
    st.lexical()
    human = {p: _load_counts_cosine(cfg, "", p, n) for p in st.paradigms if p.startswith(HUMAN)}
    behavior = {m: {p: human[p] if p in human else _load_counts_cosine(cfg, m, p, n) for p in st.paradigms}
                for m in pending}
    for p in [p for p in st.paradigms if not _fittable(st, [behavior[m][p][1] for m in pending])]:
        gone = [k for k, v in st.sets.items() if p in v]
        st.paradigms.remove(p)
        st.sets = {k: v for k, v in st.sets.items() if p not in v}
        st.unfit_sets += gone
        log.warning("regress: feature %s cannot be fitted: too few words have a row in it for %d-fold "
                    "cross-validation and a test set (regress.cv = %d, regress.test_size = %g); skipped the "
                    "set(s) %s", p, cfg.regress.cv, cfg.regress.cv, cfg.regress.test_size, ", ".join(gone))
    groups: dict[bytes, list[str]] = {}
    for model in pending:
        ok = np.ones(n, dtype=bool)
        for p in st.paradigms:
            ok &= behavior[model][p][1]
        groups.setdefault(ok.tobytes(), []).append(model)
    rows: dict[str, list[dict]] = {m: [] for m in pending}
    for mask_bytes, group in groups.items():
        beh_valid = np.frombuffer(mask_bytes, dtype=bool)
        if st.rules.common_words:
            split_words, valid = [w for w, ok in zip(words, beh_valid) if ok], st.static_valid
        else:
            split_words, valid = None, st.static_valid & beh_valid
        for seed in cfg.regress.seeds:
            split = make_split(words, seed, cfg.regress.test_size, cfg.regress.train_pairs, valid,
                               split_words=split_words)
            values = {m: _layer_values(cfg, m, strategy, n, split) for m in (st.models if st.consensus else group)}
            for model in group:
                feats = {"static": _pairs(st.static, split), "encoder": _pairs(st.encoder, split)}
                for p in st.paradigms:
                    feats[p] = _pairs(behavior[model][p][0], split)
                if st.consensus:
                    feats["consensus"] = consensus_pairs(values, model)
                rows[model] += _fit_layers(st, model, strategy, seed, split, feats, values[model])
            del values
    for model, step in pending.items():
        part = paths.result_part(cfg, "regression", model, strategy)
        write_parquet(pd.DataFrame(rows[model], columns=_COLUMNS), part)
        note = {} if st.consensus else {"consensus": "single model: sets needing consensus replaced by "
                                                     + ", ".join(s for s in st.sets if s != "base")}
        skipped = [f"{', '.join(st.dropped_sets)}: paradigm not in behave.paradigms"] if st.dropped_sets else []
        if st.unfit_sets:
            skipped.append(f"{', '.join(st.unfit_sets)}: too few words with a row to fit")
        if skipped:
            note["skipped_sets"] = "; ".join(skipped)
        step.complete([part], {"rows": len(rows[model]), "feature_sets": list(st.sets), **note})


def _fittable(st: _Stage, masks: list[np.ndarray]) -> bool:
    """Whether a feature whose rows are valid where `masks` say leaves, under every seed's
    split, at least `regress.cv` train pairs and two test pairs (what the alpha search and
    a test R² need)."""
    g = st.cfg.regress
    for mask in masks:
        valid = st.static_valid & mask
        for seed in g.seeds:
            split = make_split(st.words, seed, g.test_size, g.train_pairs, valid)
            if split.keep_train.sum() < g.cv or split.keep_test.sum() < 2:
                return False
    return True


def _fit_layers(st: _Stage, model: str, strategy: str, seed: int, split: Split, feats: dict, layers: list) -> list:
    f_tr = {k: v[0] for k, v in feats.items()}
    f_te = {k: v[1] for k, v in feats.items()}
    out = []
    for layer, (y_tr, y_te) in enumerate(layers, start=1):
        for r in fit_sets(f_tr, y_tr, f_te, y_te, st.sets, st.cfg.regress.cv):
            out.append({"model": model, "strategy": strategy, "layer": layer, "n_layers": len(layers),
                        "seed": seed, **r, "n_train": int(y_tr.size), "n_test": int(y_te.size),
                        "n_dropped": split.n_dropped})
    log.info("regress %s/%s seed %d: %d layers fitted", model, strategy, seed, len(layers))
    return out


def result_settings(cfg: Config) -> str:
    """Fingerprint of the settings the regression table was computed under (the regress
    section, the references that add feature sets, each model's paradigms, the rules, the
    vocabulary), recorded with it so that `report` can tell a table older than the config."""
    return fingerprint({"regress": asdict(cfg.regress), "references": cfg.rsa.references,
                        "rules": Rules.of(cfg).name, "vocab": vocab_fingerprint(cfg),
                        "paradigms": {m.name: cfg.paradigms_of(m) for m in cfg.models}})


def _merge(cfg: Config, man: Manifest) -> None:
    cells = [(m.name, s) for m in cfg.models if not m.behavior_only for s in cfg.hidden.strategies]
    done = finished(man, {c: keys.regress_cell(*c) for c in cells})
    sources = [paths.result_part(cfg, "regression", m, s) for m, s in done]
    current = result_settings(cfg)
    merge(man, keys.REGRESS, {"cells": done, "version": _VERSION, "settings": current},
          man.ids([p for p in sources if p.exists()]), {paths.result_table(cfg, "regression"): (sources, _COLUMNS)},
          len(done), len(cells), {"cells": len(done), "settings": current})
