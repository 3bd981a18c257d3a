"""`aggregate` stage: trial logs -> cue x response counts, PPMI and cosine similarity.

For each model and paradigm, the final attempt of every trial contributes its responses
(FC: the valid picks; FA: the parsed associates) to a sparse cue x response count matrix
(METHOD.md §2-§3). Scored FC (`fc_scored`) contributes expected counts: each candidate its
probability as the first pick after the list-position prior is divided out (`behave.scored_counts =
"debiased"`, the default outside paper mode), as it is (``"expected"``), or its `fc_picks` most
probable candidates once each (``"top"``); see `scored`. Human association norms
(`norms`) enter the same matrices through `norms.import_norms`.

Rows are the run's vocabulary in its committed order (every word, even one that never got
a response); columns are the open vocabulary of cleaned responses, sorted. PPMI and the
row cosines come from `similarity`, so every stage computes them the same way.

The logs of the paper's scale (1.565M FC trials, 3.1M FA associates per model) are read
batch by batch: each batch's responses are cleaned and dictionary-encoded with pyarrow,
mapped to a growing column dictionary and appended as integer (row, column) codes, which
are summed into a sparse matrix whenever they pile up. Memory is bounded by the sparse
counts, never by the number of log rows.

Outputs, under `matrices/<model>/<paradigm>/`:
    counts.npz, ppmi.npz   sparse (scipy CSR) cue x response matrices
    sim_ppmi.npy           float32 N x N cosine of PPMI rows (RSA and NN@k use this)
    sim_counts.npy         float32 N x N cosine of count rows (the regression uses this);
                           in both, the row and column of a cue without any usable
                           response are NaN (masked downstream, never a zero row)
    rows.txt, cols.txt     the row words (vocabulary order) and the column strings
    stats.json             trials, responses, what was dropped and why, empty rows (fc_scored:
                           also its agreement with generated FC, `scored.agreement`)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from . import keys, paths
from .comparison import METHODS, compare
from .config import Config, ReleasedModelCfg
from .counts import OUTPUT_FILES, Counter, masked_similarity, write_outputs
from .errors import PipelineError
from .logs import iter_final, list_parts
from .manifest import Manifest, fingerprint
from .norms import import_norms
from .options import Options, model_paradigms, select
from .paradigms import get as get_paradigm
from .rules import Rules
from .similarity import ppmi
from .vocab import load_run_vocab

log = logging.getLogger(__name__)

_VERSION = 1


def run(cfg: Config, opts: Options) -> None:
    """Aggregate every (model, paradigm) log of the config, or the ones `opts` selects.

    A pair whose logs have not been written yet fails with the command that writes them.
    A pair already aggregated from the same log parts is skipped; new or changed parts
    (a resumed or extended behave run) trigger a recomputation.
    """
    sel = select(cfg, opts)
    words = load_run_vocab(cfg)
    for model in sel.models:
        for paradigm in model_paradigms(cfg, model, sel.paradigms, "aggregate"):
            aggregate_one(cfg, model, paradigm, words, force=opts.force)
    if opts.model is None and opts.paradigm is None:
        for norms_cfg in cfg.norms:
            import_norms(cfg, norms_cfg, words, force=opts.force)


def settings(cfg: Config, words: list[str], paradigm: str) -> dict:
    """What an aggregation depends on besides the trial logs themselves."""
    rules, par = Rules.of(cfg), get_paradigm(paradigm)
    out = {"vocab": fingerprint(words), "paradigm": paradigm, "version": _VERSION, "rules": rules.name}
    if rules.paper and par.na_answers:
        out["na_answers"] = True  # whole answers read as missing (Rules.missing_answers): older paper FA is stale
    out.update(par.count_settings(cfg))
    return out


def aggregate_one(cfg: Config, model: str, paradigm: str, words: list[str], force: bool = False) -> dict:
    """Aggregate one model's log of one paradigm (manifest-aware).

    Skipped when the log parts are the ones last aggregated and every output is intact;
    recomputed when parts were added, replaced or an output was lost. A log that behave
    recorded complete but that has lost parts since is refused with the behave command
    that redoes exactly those trials.

    Returns:
        The stats dict written to `stats.json` (also the manifest summary).
    """
    par = get_paradigm(paradigm)
    src = paths.behavior_dir(cfg, model, paradigm)
    out = paths.matrices_dir(cfg, model, paradigm)
    stage = "released" if any(m.name == model and isinstance(m, ReleasedModelCfg) for m in cfg.models) else "behave"
    behave_cmd = keys.command(cfg, stage, model=model, paradigm=paradigm)
    parts = list_parts(src) if src.exists() else []
    if not parts:
        raise PipelineError(f"{src}: no trial log parts for model '{model}', paradigm '{paradigm}'; run "
                            f"`{behave_cmd}` first")
    man = Manifest(cfg.run_dir)
    key = keys.aggregate(model, paradigm)
    behave = man.stage(keys.behave(model, paradigm))
    if behave and behave.get("complete"):
        lost = [rel for rel in (behave.get("outputs") or {}) if not (cfg.run_dir / rel).exists()]
        if lost:
            raise PipelineError(f"{src}: {len(lost)} trial log part(s) that behave recorded as complete are gone "
                                f"({', '.join(Path(r).name for r in lost[:3])}{' ...' if len(lost) > 3 else ''}); "
                                f"run `{behave_cmd}` to redo exactly their trials, then aggregate again")
    fed = [p for f in par.feeds for p in list_parts(paths.behavior_dir(cfg, model, f))]
    step = man.step(key, settings(cfg, words, paradigm), man.ids(parts + fed), force)
    if step.done():
        log.info("aggregate %s/%s: complete, skipping (%s)", model, paradigm, out)
        return json.loads((out / "stats.json").read_text())
    if not (behave and behave.get("complete")):
        log.warning("aggregate %s/%s: the behave stage has not completed for this log; aggregating the "
                    "%d parts written so far", model, paradigm, len(parts))
    step.start()
    t0 = time.perf_counter()
    counts, cols, stats = count_matrix(src, words, paradigm, Rules.of(cfg), scored=par.count_options(cfg))
    stats.update({"model": model, "paradigm": paradigm, "parts": len(parts),
                  "behave_complete": bool(behave and behave.get("complete"))})
    stats.update(par.extra_stats(cfg, model))
    t1 = time.perf_counter()
    write_outputs(out, words, counts, cols, stats, par.similarity_of(counts, stats))
    t2 = time.perf_counter()
    log.info("aggregate %s/%s: %d trials, %d responses in %d columns, %d empty rows, %d masked (%.1f s)", model,
             paradigm, stats["trials"], stats["picks"], stats["responses"], stats["empty_rows"],
             stats["masked_rows"], t2 - t0)
    if stats["masked_rows"]:
        log.warning("aggregate %s/%s: %d cue(s) without any valid response are masked (NaN similarity rows, "
                    "left out of every comparison with this matrix): %s", model, paradigm, stats["masked_rows"],
                    ", ".join(stats["masked_row_words"][:20]) + (" ..." if stats["masked_rows"] > 20 else ""))
    summary = {k: v for k, v in stats.items() if k != "row_valid" and not k.startswith("_")}
    step.complete([out / f for f in OUTPUT_FILES],
                  {**summary, "empty_row_words": stats["empty_row_words"][:20],
                   "masked_row_words": stats["masked_row_words"][:20],
                   "count_seconds": round(t1 - t0, 2), "matrix_seconds": round(t2 - t1, 2)})
    return stats


def count_matrix(src: str | Path, words: list[str], paradigm: str, rules: Rules | None = None,
                 select=None, scored: tuple = ("expected", 2)) -> tuple[sp.csr_matrix, list[str], dict]:
    """Stream the final attempts of a log into a cue x response count matrix.

    Cleaning (METHOD.md §2 "Clean", §3 "Counting rules"): lowercase and strip; drop empty
    strings, "na", "nan" and strings without a letter or digit; drop responses equal to
    the cue (FA cue repeats; an FC pick never equals its cue). Duplicates within a trial
    are kept and positions are not weighted. In paper mode a response that pandas' CSV
    reader would read as missing (`rules.PANDAS_NA_STRINGS`, as stored) is dropped first,
    and so is every associate of an FA answer that is such a string as a whole
    (`Rules.missing_answers`: the raw answer ``None`` gives no ``none``).

    Which rows are usable (``row_valid`` in the stats, `rules.Rules`): by default a cue
    with at least one counted response; in paper mode, as the authors' matrices have rows,
    every FC cue with a trial and every FA cue with a valid response (cue repeats
    included). Unusable rows become NaN in the similarity matrices.

    Args:
        src: the `behavior/<model>/<paradigm>/` directory.
        words: the run's vocabulary; `cue_idx` indexes it and must agree with `cue`.
        paradigm: a registered paradigm (`Paradigm.count` streams its rows).
        rules: the run's rules (default rules when None).
        select: optional function of a record batch (columns trial_id, run, cue_idx) returning a
            boolean mask of the trials to count (split halves); default all.
        scored: the paradigm's count options (`Paradigm.count_options`); for ``fc_scored``,
            (`behave.scored_counts`, `trials.fc_picks`[, `behave.scored_prior`]): ``expected``
            adds each candidate's first-pick probability, ``debiased`` the same after the
            position prior estimated from the counted trials is divided out
            (`scored.PositionPrior`; the stats keep it as ``position_prior``), ``top`` counts the fc_picks most
            probable candidates as picks. Trials without a distribution (not finite) count
            nothing (`dropped_trials`).

    Returns:
        (counts, cols, stats): int64 CSR (float64 for expected counts) of shape N x len(cols)
        with rows in vocabulary order and columns sorted; the column strings; counts of what
        was kept and dropped.

    Raises:
        PipelineError: a corrupt part, or a cue that disagrees with the vocabulary. (A
            trial final in two parts counts once: `logs.iter_final` keeps the first.)
    """
    return get_paradigm(paradigm).count(src, words, rules or Rules(), select, scored)


def count_picks(src: str | Path, words: list[str], paradigm: str, rules: Rules, select=None
                ) -> tuple[sp.csr_matrix, list[str], dict]:
    """`count_matrix` of a generated paradigm: each final row's `picks`, once each."""
    counter = Counter(words, paradigm, rules, src)
    columns = ["cue_idx", "cue", "picks"] + (["trial_id", "run"] if select is not None else [])
    if rules.paper and get_paradigm(paradigm).na_answers:
        columns.append("raw_output")
    for batch in iter_final(src, columns):
        if select is not None and batch.num_rows:
            batch = batch.filter(pa.array(np.asarray(select(batch), dtype=bool)))
        if batch.num_rows:
            counter.add(batch)
    return counter.result()


def split_half(cfg: Config, model: str, paradigm: str, words: list[str], pairs=None) -> list[dict]:
    """Split-half reliability of one behavioral PPMI-cosine matrix, one row per `rsa.methods`.

    Each half is counted by `count_matrix` (the same cleaning, NA strings and row masking as
    the full matrix), its PPMI-cosine correlated with the other half's and Spearman-Brown
    corrected, 2r/(1+r). FC halves: the parity of the candidate group,
    ``trial_id mod m`` with m groups per cue (`trials`: ``trial_id = cue_idx * m + group``),
    for FC and scored FC alike. FA halves: the parity of the run.

    Args:
        pairs: the 'paper' method's pairs when the caller drew them for its table
            (`similarity.draw_paper_pairs`); drawn here when None.

    Returns:
        Rows of `reliability.parquet`; empty when the behavior log has no final rows.
    """
    directory = paths.behavior_dir(cfg, model, paradigm)
    n = len(words)
    rules, par = Rules.of(cfg), get_paradigm(paradigm)
    sims, sizes = [], []
    for h in (0, 1):
        counts, _, stats = count_matrix(directory, words, paradigm, rules, select=par.halves(cfg, n, h),
                                        scored=par.count_options(cfg))
        sim = par.similarity_of(counts, stats)
        sims.append(masked_similarity(ppmi(counts), stats["row_valid"]) if sim is None else sim("ppmi"))
        sizes.append(stats["trials"])
    if not sum(sizes):
        return []
    rows = []
    for method in [m for m in METHODS if m in cfg.rsa.methods]:
        r = compare(sims[0], sims[1], method, n_pairs=cfg.rsa.paper_pairs, seed=cfg.rsa.seed, words=words,
                    pairs=pairs)
        rel = 2 * r / (1 + r) if np.isfinite(r) and r > -1 else np.nan
        n_pairs = min(cfg.rsa.paper_pairs, n * (n - 1) // 2) if method == "paper" else n * (n - 1) // 2
        rows.append({"model": model, "paradigm": paradigm, "method": method, "n_words": n, "n_pairs": n_pairs,
                     "r_half": r, "reliability": rel, "ceiling_low": rel,
                     "ceiling_high": float(np.sqrt(rel)) if np.isfinite(rel) and rel >= 0 else np.nan,
                     "n_trials_a": sizes[0], "n_trials_b": sizes[1]})
    return rows


def load_matrices(cfg: Config, model: str, paradigm: str) -> dict:
    """Read one aggregated output back (for downstream stages and exports).

    Returns:
        dict with ``counts``, ``ppmi`` (CSR), ``sim_ppmi``, ``sim_counts`` (N x N float32
        memory maps), ``rows``, ``cols`` (lists) and ``stats``.

    Raises:
        PipelineError: the stage has not produced this model and paradigm yet.
    """
    d = paths.matrices_dir(cfg, model, paradigm)
    missing = [f for f in OUTPUT_FILES if not (d / f).exists()]
    if missing:
        raise PipelineError(f"{d}: {', '.join(missing)} missing; run "
                            f"`{keys.command(cfg, 'aggregate', model=model, paradigm=paradigm)}`")
    return {
        "counts": sp.load_npz(d / "counts.npz").tocsr(),
        "ppmi": sp.load_npz(d / "ppmi.npz").tocsr(),
        "sim_ppmi": np.load(d / "sim_ppmi.npy", mmap_mode="r"),
        "sim_counts": np.load(d / "sim_counts.npy", mmap_mode="r"),
        "rows": (d / "rows.txt").read_text(encoding="utf-8").splitlines(),
        "cols": (d / "cols.txt").read_text(encoding="utf-8").splitlines(),
        "stats": json.loads((d / "stats.json").read_text()),
    }
