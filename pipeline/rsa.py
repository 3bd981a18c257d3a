"""RSA and NN@k overlap of hidden-state geometry against behavioral and baseline references.

For every model x strategy x layer (1..L; layer 0, the embeddings, is excluded) the hidden
geometry is the mean-centered cosine of the layer's word vectors (METHOD.md §4; column
`geometry` = ``centered``), and with ``"standardized"`` in `rsa.hidden_geometry` also the cosine
of z-scored dimensions (`similarity.standardized_cosine`). It is compared with each reference
of `rsa.references`:

- `fc`, `fa`, `fc_scored`: the same model's behavioral PPMI-cosine
  (`matrices/<model>/<paradigm>/sim_ppmi.npy`; `fc_scored` from expected counts, `scored`);
- `human:<name>`: the PPMI-cosine of human association norms (`norms/<name>/sim_ppmi.npy`,
  imported by `aggregate` from the `[[norms]]` file of that name); words without norms are
  masked;
- `static`, `encoder`: raw cosine of the baseline vectors; words whose vector is missing
  (a NaN row) are masked, i.e. every pair containing one is dropped;
- `consensus`: the cross-model consensus of the baselines stage (absent, and skipped with a
  note, when the config has a single model with weights);
- `fc:MODEL`, `fa:MODEL`: another model's behavioral PPMI-cosine, e.g. the behavior of a model
  behind an API (which has no hidden states of its own) as a reference for every open model's
  layers.

Behavior-only models (no `models[].path`) have no cells: their split-half reliability is
computed, and their behavior enters `behavior_rsa.parquet` and the `fc:`/`fa:` references.

Methods (`rsa.methods`), all computed by `comparison.compare` (per layer by `analysis`):

- `spearman` (default): Spearman on all upper-triangle pairs, average ranks for ties;
- `pearson`: Pearson on all upper-triangle pairs;
- `paper`: Pearson on `rsa.paper_pairs` pairs drawn by `similarity.draw_paper_pairs`:
  `np.random.default_rng(rsa.seed).choice` over the upper triangle of the words sorted
  alphabetically, as the authors' matrices are; the same pairs for every layer, reference
  and model (METHOD.md §6).

Word sets. By default each reference masks its own missing words (a NaN row: no static
vector, a cue without any valid response) and every pair touching one is dropped for that
reference only. In paper mode (`experiment.paper_mode`) the analysis runs, as the authors'
does, on the words common to the hidden states, the FC rows and the FA rows (hidden
centering included, and the consensus's too: each other model's hidden states are then
centered over the target's common words); static and encoder vectors then mask their
missing words within them.

Beyond the paper:

- Bootstrap CIs over words (`rsa.bootstrap` resamples, seeded by `rsa.seed`). One resample
  draws N words with replacement and keeps the set of distinct words drawn; the statistic is
  recomputed on the pairs among those words (duplicates add no pairs: a word paired with its
  own copy is a diagonal cell, which RSA excludes). The distinct set holds about 63% of the
  words, so the intervals are somewhat conservative. For speed the pairs come from a fixed
  seeded sample of at most `analysis.BOOT_MAX_PAIRS` pairs (all pairs when N is small).
  `spearman` intervals bootstrap Spearman; `pearson` and `paper` intervals bootstrap Pearson
  (so they coincide). `ci_low`/`ci_high` are the 2.5th/97.5th percentiles; NaN without bootstrap.
- Split-half reliability of each behavioral matrix (`rsa.split_half`, computed by
  `aggregate.split_half` from the same counting as the full matrix), Spearman-Brown
  corrected. The report shows it as a noise ceiling band from r_SB (an independent
  replication of the behavioral experiment) to sqrt(r_SB) (a noise-free geometry equal to
  the true behavioral one; attenuation bound).

Outputs under `results/`:

- `rsa.parquet`: model, strategy, layer, n_layers, reference, method, n_words, n_pairs, rsa,
  ci_low, ci_high, geometry;
- `nn.parquet` (NN@k overlap in its own table, because its rows have a `k` and no pair
  count): model, strategy, layer, n_layers, reference, k, n_words, overlap, geometry;
- `reliability.parquet`: model, paradigm, method, n_words, n_pairs, r_half, reliability,
  ceiling_low, ceiling_high, n_trials_a, n_trials_b;
- `behavior_rsa.parquet` (behavioral geometry compared across models, every pair of models
  with an aggregated matrix, each method): paradigm, model_a, model_b, method, n_words,
  n_pairs, rsa. Pairs touching a word either model has no row for are dropped.
- `svd_variants.parquet` (`rsa.svd_variants = true`): the paper's SVD / weighting ablation,
  every layer 0..L against 8 variants of the FC and FA geometry (`svd`);
- `behavior_norms.parquet` (with human norms among the references): each model's behavioral
  geometry (FC, FA, scored FC) against each human reference, on the pairs of words valid in
  both: model, paradigm, reference, method, n_words, n_pairs, rsa.

Each model x strategy cell is written to `results/parts/` and recorded in the manifest as
`rsa/<model>/<strategy>`; a re-run skips finished cells and the tables are rebuilt from the
parts.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from . import keys, paths, svd
from .analysis import BOOT_MAX_PAIRS, Reference, analyse_cell
from .baselines import consensus
from .comparison import METHODS, compare, nn_overlap  # noqa: F401 (the public comparison API, re-exported)
from .config import HUMAN, PARADIGMS, Config, cross_reference
from .hidden import load_hidden
from .manifest import Manifest, fingerprint
from .merge import finished, merge
from .options import Options, select
from .paradigms import get as get_paradigm
from .paradigms import paper_names
from .rules import Rules
from .similarity import cosine, draw_paper_pairs
from .store import load_npy, write_parquet
from .vocab import load_run_vocab, vocab_fingerprint

log = logging.getLogger(__name__)

_VERSION = 1
_BEHAVIORAL = PARADIGMS
_PAPER_COMMON = paper_names()
_RSA_COLUMNS = ["model", "strategy", "layer", "n_layers", "reference", "method", "n_words", "n_pairs",
                "rsa", "ci_low", "ci_high", "geometry"]
_NN_COLUMNS = ["model", "strategy", "layer", "n_layers", "reference", "k", "n_words", "overlap", "geometry"]
_REL_COLUMNS = ["model", "paradigm", "method", "n_words", "n_pairs", "r_half", "reliability",
                "ceiling_low", "ceiling_high", "n_trials_a", "n_trials_b"]
_BEH_COLUMNS = ["paradigm", "model_a", "model_b", "method", "n_words", "n_pairs", "rsa"]
_BN_COLUMNS = ["model", "paradigm", "reference", "method", "n_words", "n_pairs", "rsa"]


def _behavioral(name: str) -> bool:
    """A similarity matrix of behavior: the model's own `fc`/`fa` or another's `fc:M`/`fa:M`."""
    return name in _BEHAVIORAL or cross_reference(name) is not None


# ---------------------------------------------------------------- references

def reference_paths(cfg: Config, model: str, strategy: str) -> dict[str, Path]:
    """Files of each configured reference for one model x strategy (whether or not present)."""
    out = {}
    for name in cfg.rsa.references:
        if name in _BEHAVIORAL:
            out[name] = paths.matrix_file(cfg, model, name, "sim_ppmi")
        elif cross := cross_reference(name):
            out[name] = paths.matrix_file(cfg, cross[1], cross[0], "sim_ppmi")
        elif name == "static":
            out[name] = paths.static_file(cfg)
        elif name == "encoder":
            out[name] = paths.encoder_file(cfg)
        elif name == "consensus":
            out[name] = paths.consensus_file(cfg, model, strategy)
        elif name.startswith(HUMAN):
            out[name] = paths.norms_file(cfg, name[len(HUMAN):], "sim_ppmi")
    return out


def available_references(cfg: Config, model: str, strategy: str) -> tuple[dict[str, Path], dict[str, str]]:
    """Split the configured references into usable files and skipped ones with the reason.

    A reference that cannot exist in this config is skipped with a note (consensus with a
    single model; a baseline whose source is not configured); any other missing file is an
    error raised when it is loaded, naming the stage to run.
    """
    use, skipped = {}, {}
    for name, path in reference_paths(cfg, model, strategy).items():
        paradigm, owner = cross if (cross := cross_reference(name)) else (name, model)
        if _behavioral(name) and paradigm not in cfg.behave.paradigms:
            skipped[name] = f"behave.paradigms does not include {paradigm}"
        elif _behavioral(name) and paradigm not in cfg.paradigms_of(owner):
            skipped[name] = f"{owner} runs no {paradigm}: backend '{cfg.backend_of(cfg.model(owner))}' cannot score"
        elif path.exists():
            use[name] = path
        elif name == "consensus" and sum(not m.behavior_only for m in cfg.models) < 2:
            skipped[name] = "a single model with weights in the config: no other models to form a consensus"
        elif name == "static" and cfg.baselines.static is None:
            skipped[name] = "baselines.static is not configured"
        elif name == "encoder" and cfg.baselines.encoder is None:
            skipped[name] = "baselines.encoder is not configured"
        else:
            use[name] = path
    return use, skipped


def describe(cfg: Config, name: str, model: str = "", strategy: str = "") -> tuple[str, str]:
    """(what the file of reference `name` holds, the command that rebuilds it)."""
    if name.startswith(HUMAN):
        from .norms import describe as describe_norms

        return describe_norms(cfg, name)
    if cross := cross_reference(name):
        name, model = cross
    if name in _BEHAVIORAL:
        return (f"the {name.upper()} PPMI-cosine matrix of {model}",
                keys.command(cfg, "aggregate", model=model, paradigm=name))
    if name == "consensus":
        return (f"the cross-model consensus matrix of {model}/{strategy}",
                keys.command(cfg, "baselines", model=model, strategy=strategy))
    if name == "hidden":
        return f"hidden states of {model}/{strategy}", keys.command(cfg, "hidden", model=model, strategy=strategy)
    return f"the {name} baseline vectors", keys.command(cfg, "baselines")


def load_reference(cfg: Config, name: str, path: Path, n: int, model: str = "", strategy: str = "") -> Reference:
    """One reference's N x N similarity and valid-word mask, validated.

    Behavioral, human-norms and consensus files are similarity matrices whose masked words
    are NaN rows; static and encoder files are vectors (NaN rows: no vector), turned into raw
    cosine.
    """
    what, rebuild = describe(cfg, name, model, strategy)
    if _behavioral(name) or name == "consensus" or name.startswith(HUMAN):
        sim = np.asarray(load_npy(path, what, rebuild, shape=(n, n), finite="rows"), dtype=np.float32)
        return Reference(name, sim, ~np.isnan(sim).all(axis=1))
    v = np.array(load_npy(path, what, rebuild, shape=(n, None), finite="rows"), dtype=np.float64)
    valid = np.isfinite(v).all(axis=1)
    v[~valid] = 0.0
    return Reference(name, cosine(v), valid)


# ---------------------------------------------------------------- stage

def run(cfg: Config, opts: Options) -> None:
    """`rsa` stage: RSA, NN@k and CIs per model x strategy cell, split-half reliability per model."""
    words = load_run_vocab(cfg)
    vfp = vocab_fingerprint(cfg)
    rules = Rules.of(cfg)
    force = opts.force
    man = Manifest(cfg.run_dir)
    sel = select(cfg, opts)
    cell_settings = {k: v for k, v in asdict(cfg.rsa).items() if not k.startswith("svd_")}
    settings = {"settings": {**cell_settings, "version": _VERSION, "boot_max_pairs": BOOT_MAX_PAIRS,
                             "rules": rules.name, **({"consensus_centering": "common"} if rules.paper else {})},
                "vocab": vfp}
    shared: dict[str, Reference] = {}
    for model in sel.models:
        per_model: dict[str, Reference] = {}
        if cfg.model(model).behavior_only:
            log.info("rsa %s: behavior-only model (no weights): no hidden-state cells; its behavior is compared "
                     "across models (behavior_rsa) and serves as reference fc:%s / fa:%s", model, model, model)
        else:
            for strategy in sel.strategies:
                _cell(cfg, man, model, strategy, words, settings, force, shared, per_model)
        if cfg.rsa.split_half:
            _reliability(cfg, man, model, words, vfp, force)
        _behavior_vs_norms(cfg, man, model, words, vfp, force)
    _behavior_rsa(cfg, man, words, settings, force)
    _merge(cfg, man)
    if cfg.rsa.svd_variants:
        svd.run(cfg, man, sel.models, sel.strategies, words, vfp, force)


def _cell(cfg: Config, man: Manifest, model: str, strategy: str, words: list[str], settings: dict, force: bool,
          shared: dict, per_model: dict) -> None:
    """One model x strategy cell: skipped when done, else analysed and written as two parts.

    Static, encoder and human references are loaded once per run (`shared`), behavioral ones
    once per model (`per_model`), both keyed by content."""
    n = len(words)
    use, skipped = available_references(cfg, model, strategy)
    upstream = {"hidden": man.require(paths.hidden_file(cfg, model, strategy),
                                      *describe(cfg, "hidden", model, strategy))}
    for name, path in use.items():
        upstream[name] = man.require(path, *describe(cfg, name, model, strategy))
    step = man.step(keys.rsa_cell(model, strategy), {**settings, "skipped": skipped}, upstream, force)
    part_rsa = paths.result_part(cfg, "rsa", model, strategy)
    part_nn = paths.result_part(cfg, "nn", model, strategy)
    if step.done():
        log.info("rsa %s/%s: complete, skipped", model, strategy)
        return
    step.start()
    for name, why in skipped.items():
        log.warning("rsa %s/%s: reference '%s' skipped (%s)", model, strategy, name, why)
    hidden = load_hidden(cfg, model, strategy, n_words=n)
    refs = {}
    for name, path in use.items():
        if name == "consensus":
            refs[name] = load_reference(cfg, name, path, n, model, strategy)
            continue
        cache = per_model if name in _BEHAVIORAL else shared
        if upstream[name] not in cache:
            cache[upstream[name]] = load_reference(cfg, name, path, n, model, strategy)
        refs[name] = cache[upstream[name]]
    rows_sel, cell_words = None, words
    if Rules.of(cfg).common_words:
        rows_sel, cell_words, refs = _common(words, refs)
        if rows_sel is not None and "consensus" in refs:
            refs["consensus"] = _consensus_on(cfg, strategy, model, rows_sel)
    log.info("rsa %s/%s: %d layers x %d references, methods %s", model, strategy, hidden.shape[0] - 1,
             len(refs), ", ".join(cfg.rsa.methods))
    rows, nn_rows = [], []
    for geometry in cfg.rsa.hidden_geometry:
        got, got_nn = analyse_cell(hidden, refs, cfg.rsa.methods, paper_pairs=cfg.rsa.paper_pairs,
                                   seed=cfg.rsa.seed, nn_k=cfg.rsa.nn_k, bootstrap=cfg.rsa.bootstrap,
                                   words=cell_words, rows=rows_sel, geometry=geometry)
        rows += [{**r, "geometry": geometry} for r in got]
        nn_rows += [{**r, "geometry": geometry} for r in got_nn]
    cell = {"model": model, "strategy": strategy}
    write_parquet(pd.DataFrame([{**cell, **r} for r in rows], columns=_RSA_COLUMNS), part_rsa)
    write_parquet(pd.DataFrame([{**cell, **r} for r in nn_rows], columns=_NN_COLUMNS), part_nn)
    step.complete([part_rsa, part_nn], {"layers": int(hidden.shape[0] - 1), "references": sorted(refs),
                                        "skipped_references": skipped, "rows": len(rows), "nn_rows": len(nn_rows),
                                        "n_words": len(cell_words)})


def _common(words: list[str], refs: dict[str, Reference]) -> tuple[np.ndarray | None, list[str], dict]:
    """Paper mode: restrict every reference to the words valid in FC and FA (the authors'
    common-word intersection); None when that is every word."""
    keep = np.ones(len(words), dtype=bool)
    for name in _PAPER_COMMON:
        if name in refs:
            keep &= refs[name].valid
    if keep.all():
        return None, words, refs
    rows = np.flatnonzero(keep)
    dropped = [words[i] for i in np.flatnonzero(~keep)]
    log.warning("rsa (paper mode): %d word(s) without an FC or FA row leave every comparison: %s", len(dropped),
                ", ".join(dropped[:20]) + (" ..." if len(dropped) > 20 else ""))
    return rows, [words[i] for i in rows], {k: r.restrict(rows) for k, r in refs.items()}


def _consensus_on(cfg: Config, strategy: str, model: str, rows: np.ndarray) -> Reference:
    """Paper mode, common words fewer than N: the consensus of `model` recomputed with every
    other model's hidden states centered over those words only (the authors' per-target
    common words), not over all words as the baselines stage centers them."""
    log.info("rsa %s/%s (paper mode): consensus recomputed, centered over the %d common words", model, strategy,
             len(rows))
    sim = consensus(cfg, strategy, model, center_rows=rows)[np.ix_(rows, rows)]
    return Reference("consensus", sim, np.ones(len(rows), dtype=bool))


def _reliability(cfg: Config, man: Manifest, model: str, words: list[str], vfp: str, force: bool) -> None:
    from .aggregate import split_half
    from .logs import list_parts

    key = keys.reliability(model)
    paradigms = [p for p in _BEHAVIORAL if p in cfg.paradigms_of(model)]
    settings = {"methods": cfg.rsa.methods, "paper_pairs": cfg.rsa.paper_pairs, "seed": cfg.rsa.seed,
                "vocab": vfp, "version": _VERSION, "rules": Rules.of(cfg).name, "paradigms": paradigms,
                **({"na_answers": True} if Rules.of(cfg).paper else {})}
    for p in paradigms:
        settings.update(get_paradigm(p).split_settings(cfg))
    step = man.step(key, settings, {p: man.ids(list_parts(paths.behavior_dir(cfg, model, p))) for p in paradigms},
                    force)
    part = paths.result_part(cfg, "reliability", model)
    if step.done():
        return
    step.start()
    rows = []
    pairs = _paper_pairs(cfg, words)
    for paradigm in paradigms:
        got = split_half(cfg, model, paradigm, words, pairs)
        if not got:
            log.warning("rsa %s: no final trials in %s; no split-half reliability for %s", model,
                        paths.behavior_dir(cfg, model, paradigm), paradigm.upper())
        rows += got
    write_parquet(pd.DataFrame(rows, columns=_REL_COLUMNS), part)
    step.complete([part], {"rows": len(rows)})


def _behavior_rsa(cfg: Config, man: Manifest, words: list[str], settings: dict, force: bool) -> None:
    """`behavior_rsa.parquet`: every pair of models' FC (and FA) PPMI-cosine, compared with
    each RSA method over the words both have a row for. Needs no weights, so it is how models
    behind an API are compared with each other and with the open ones."""
    from itertools import combinations

    found = {(p, m.name): path for p in _BEHAVIORAL for m in cfg.models if p in cfg.paradigms_of(m)
             and (path := paths.matrix_file(cfg, m.name, p, "sim_ppmi")).exists()}
    per_paradigm = {p: [m for q, m in found if q == p] for p in _BEHAVIORAL}
    if all(len(v) < 2 for v in per_paradigm.values()):
        return
    upstream = {f"{p}/{m}": man.require(path, *describe(cfg, p, m)) for (p, m), path in found.items()}
    out = paths.result_table(cfg, "behavior_rsa")
    step = man.step(keys.BEHAVIOR_RSA, settings, upstream, force)
    if step.done():
        log.info("rsa: behavior_rsa complete, skipped")
        return
    step.start()
    n = len(words)
    pairs = _paper_pairs(cfg, words)
    rows = []
    for paradigm, models in per_paradigm.items():
        refs = {m: load_reference(cfg, paradigm, found[paradigm, m], n, m) for m in models}
        for a, b in combinations(models, 2):
            for method, k, n_pairs, value in _compare_on_common(refs[a], refs[b], cfg.rsa.methods, pairs):
                rows.append({"paradigm": paradigm, "model_a": a, "model_b": b, "method": method, "n_words": k,
                             "n_pairs": n_pairs, "rsa": value})
        del refs
    write_parquet(pd.DataFrame(rows, columns=_BEH_COLUMNS), out)
    step.complete([out], {"pairs": len(rows), "models": sorted({m for _, m in found})})
    log.info("rsa: behavioral geometry compared across %d models (%d rows) in %s", len({m for _, m in found}),
             len(rows), out)


def _behavior_vs_norms(cfg: Config, man: Manifest, model: str, words: list[str], vfp: str, force: bool) -> None:
    """One model's behavioral PPMI-cosine matrices against every human reference, each pair
    of matrices on the words valid in both (`rsa.methods`), as part `behavior_norms/<model>`."""
    humans = [r for r in cfg.rsa.references if r.startswith(HUMAN)]
    paradigms = [p for p in _BEHAVIORAL if p in cfg.paradigms_of(model)]
    part = paths.result_part(cfg, "behavior_norms", model)
    if not humans or not paradigms:
        return
    files = {name: paths.matrix_file(cfg, model, name, "sim_ppmi") for name in paradigms}
    files.update({name: paths.norms_file(cfg, name[len(HUMAN):], "sim_ppmi") for name in humans})
    upstream = {name: man.require(path, *describe(cfg, name, model)) for name, path in files.items()}
    step = man.step(keys.behavior_norms(model), {"methods": cfg.rsa.methods, "paper_pairs": cfg.rsa.paper_pairs,
                                                    "seed": cfg.rsa.seed, "vocab": vfp, "version": _VERSION},
                    upstream, force)
    if step.done():
        return
    step.start()
    n = len(words)
    refs = {name: load_reference(cfg, name, path, n, model) for name, path in files.items()}
    methods = [m for m in METHODS if m in cfg.rsa.methods]
    pairs = _paper_pairs(cfg, words)
    rows = []
    for p in paradigms:
        for h in humans:
            for method, k, n_pairs, value in _compare_on_common(refs[p], refs[h], methods, pairs):
                rows.append({"model": model, "paradigm": p, "reference": h, "method": method, "n_words": k,
                             "n_pairs": n_pairs, "rsa": value})
    write_parquet(pd.DataFrame(rows, columns=_BN_COLUMNS), part)
    step.complete([part], {"rows": len(rows)})


def _paper_pairs(cfg: Config, words: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """The 'paper' method's pairs (alphabetical order), drawn once per table; None without it."""
    if "paper" not in cfg.rsa.methods:
        return None
    return draw_paper_pairs(len(words), cfg.rsa.paper_pairs, cfg.rsa.seed, words)


def _compare_on_common(x: Reference, y: Reference, methods, pairs) -> list[tuple[str, int, int, float]]:
    """Two similarity matrices compared on the words valid in both, with each method ('paper'
    on `pairs`, the table's `_paper_pairs`).

    Returns:
        (method, n_words, n_pairs, rsa) per method; rsa is NaN below 3 common words.
    """
    valid = x.valid & y.valid
    k = int(valid.sum())
    sx, sy = (np.where(np.outer(valid, valid), ref.sim, np.nan) for ref in (x, y))
    out = []
    for method in methods:
        n_pairs = int((valid[pairs[0]] & valid[pairs[1]]).sum()) if method == "paper" else k * (k - 1) // 2
        value = compare(sx, sy, method, pairs=pairs) if k > 2 else np.nan
        out.append((method, k, n_pairs, value))
    return out


def result_settings(cfg: Config) -> str:
    """Fingerprint of the settings the merged tables were computed under (the rsa section,
    each model's paradigms, the rules, the vocabulary), recorded with them so that `report`
    can tell tables older than the config."""
    return fingerprint({"rsa": asdict(cfg.rsa), "rules": Rules.of(cfg).name, "vocab": vocab_fingerprint(cfg),
                        "paradigms": {m.name: cfg.paradigms_of(m) for m in cfg.models}})


def _merge(cfg: Config, man: Manifest) -> None:
    """Rebuild the result tables from every finished cell part of the configured cells.

    Skipped when the cells, their settings and the tables are what the last merge recorded.
    """
    cells = [(m.name, s) for m in cfg.models if not m.behavior_only for s in cfg.hidden.strategies]
    done = finished(man, {c: keys.rsa_cell(*c) for c in cells})
    sources = {"rsa": [paths.result_part(cfg, "rsa", m, s) for m, s in done],
               "nn": [paths.result_part(cfg, "nn", m, s) for m, s in done],
               "reliability": [p for m in cfg.models if (p := paths.result_part(cfg, "reliability", m.name)).exists()]}
    if any(r.startswith(HUMAN) for r in cfg.rsa.references):
        sources["behavior_norms"] = [p for m in cfg.models
                                     if (p := paths.result_part(cfg, "behavior_norms", m.name)).exists()]
    columns = {"rsa": _RSA_COLUMNS, "nn": _NN_COLUMNS, "reliability": _REL_COLUMNS, "behavior_norms": _BN_COLUMNS}
    current = result_settings(cfg)
    merge(man, keys.RSA, {"cells": done, "version": _VERSION, "settings": current},
          {k: man.ids([p for p in v if p.exists()]) for k, v in sources.items()},
          {paths.result_table(cfg, t): (sources[t], columns[t]) for t in columns if t in sources},
          len(done), len(cells), {"cells": len(done), "settings": current})
