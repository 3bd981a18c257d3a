"""`validity` stage: does a geometry measure meaning or the instrument? Diagnostics and a planner.

Computed for every run (paper mode too: the stage only reads and reports, it changes no
other output). Thresholds and planning rates are config keys (`[validity]`, README section
"Measurement validity").

Tables under `results/`:

- `validity_position.parquet`, the list-position profile of forced choice: model, paradigm,
  n_candidates (list length), position (1-based), n (picks; trials for scored FC), share
  (FC: share of all valid picks at that position; scored FC: mean first-pick probability),
  first_share (FC: share of first picks; scored FC: = share), share_debiased (scored FC:
  the mean after `scored.debias` with the run's own prior; NaN for FC).
- `validity_bias.parquet`, one row per model x paradigm: n_trials, n_picks, top_position,
  top_share (largest position share), top2_share (positions 1 and 2), ckld (choice KL
  divergence, below), ckld_debiased (scored FC), large (ckld > `validity.position_kl`).
- `validity_hidden.parquet`, per model x strategy x layer (1..L, as RSA): median_norm,
  max_norm, norm_ratio (max / median of the raw word-vector norms), n_outliers and
  outlier_words (norm > `validity.norm_ratio` x median, largest first, at most 5 named),
  mean_cosine (raw vectors: anisotropy), rogue_dim and rogue_share (Timkey & van Schijndel
  2021, raw vectors), centred_dim and centred_share (the RSA geometry), flagged.
- `validity_ceiling.parquet`, per model x paradigm x method: the split-half reliability
  (`reliability.parquet`) next to the behavioral geometry's RSA with the hidden layers
  (mean over layers and strategies, peak with its strategy and layer) and with the encoder
  and static vectors directly (behavior vs baseline, no hidden states involved).
- `validity_plan.parquet`, the reliability planner (`plan`).

Definitions (n words, vectors x_w; hat = scaled to unit length):

- choice KL divergence (CKLD, Choi et al. 2024): sum_i p_i log(p_i / q_i) with p the
  distribution the design implies and q the observed distribution over positions. The plan
  assigns candidates to positions at random, so without a position effect p is uniform:
  CKLD = (1/s) sum_i log((1/s) / q_i). Pick shares are smoothed by half a pick per position
  ((c_i + 1/2) / (n + s/2)) so an empty position stays finite. Per list length, averaged
  weighted by trials. 0 = no position effect; 0.1 nats is, e.g., half the positions chosen
  1.5x as often as the other half; a uniform chooser's sampling noise is about (s-1)/(2n).
- rogue_share: CC(i) = mean over word pairs u != v of hat u_i hat v_i (dimension i's
  contribution to the mean cosine, whose sum over i is mean_cosine);
  rogue_share = max_i CC(i) / sum_i CC(i), rogue_dim its argmax.
- centred_share: after subtracting the mean vector over words (as the RSA geometry does) and
  scaling to unit length, max_i mean_w hat x_{w,i}^2: the share of the geometry's squared
  length carried by one dimension (1/dim if spread evenly; near 1 when one dimension decides
  every cosine).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from . import keys, paths
from .config import PARADIGMS, Config
from .errors import PipelineError
from .hidden import load_hidden
from .logs import iter_final, list_parts
from .manifest import Manifest
from .options import Options
from .paradigms import get as get_paradigm
from .scored import PositionPrior, debias, normalized_log
from .store import write_parquet
from .vocab import load_run_vocab

log = logging.getLogger(__name__)

_VERSION = 1
TABLES = ("validity_position", "validity_bias", "validity_hidden", "validity_ceiling", "validity_plan")
_NAMED_OUTLIERS = 5


# ---------------------------------------------------------------- numerics

def choice_kl(q, smooth_n: float | None = None) -> float:
    """CKLD of an observed position distribution `q` from uniform, in nats.

    Args:
        q: counts (with `smooth_n` = their total) or probabilities over the s positions.
        smooth_n: when given, `q` are counts and get half a count per position.
    """
    q = np.asarray(q, dtype=np.float64)
    s = q.size
    if smooth_n is not None:
        q = (q + 0.5) / (smooth_n + 0.5 * s)
    q = q / q.sum()
    return float(np.mean(np.log((1.0 / s) / q)))


def spearman_brown_factor(rel: float, target: float) -> float:
    """How many times the current data a reliability `rel` needs to reach `target`
    (Spearman-Brown prophecy, f = target (1 - rel) / (rel (1 - target))); inf when rel <= 0."""
    if not np.isfinite(rel) or rel <= 0:
        return math.inf
    return target * (1 - rel) / (rel * (1 - target))


def norm_diagnostics(x: np.ndarray, ratio: float) -> dict:
    """Norm outliers and rogue dimensions of one layer's word vectors (n x dim).

    Returns:
        median_norm, max_norm, norm_ratio, outliers (indices by decreasing norm beyond `ratio` x
        median), mean_cosine, rogue_dim, rogue_share, centred_dim, centred_share.
    """
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    med = float(np.median(norms))
    big = np.flatnonzero(norms > ratio * med)
    out = {"median_norm": med, "max_norm": float(norms.max()),
           "norm_ratio": float(norms.max() / med) if med > 0 else math.inf,
           "outliers": big[np.argsort(-norms[big])].tolist()}
    n = len(x)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    cc = (unit.sum(axis=0) ** 2 - (unit ** 2).sum(axis=0)) / (n * (n - 1))
    total = float(cc.sum())
    top = int(np.argmax(cc))
    out.update(mean_cosine=total, rogue_dim=top, rogue_share=float(cc[top] / total) if total != 0 else math.nan)
    c = x - x.mean(axis=0)
    cn = np.linalg.norm(c, axis=1)
    cu = c / np.where(cn > 0, cn, 1.0)[:, None]
    share = (cu ** 2).mean(axis=0)
    out.update(centred_dim=int(np.argmax(share)), centred_share=float(share.max()))
    return out


# ---------------------------------------------------------------- position bias

def _fc_profile(directory) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """{list length: (pick counts by position, first-pick counts by position, trials)} of FC."""
    out: dict[int, list] = {}
    for batch in iter_final(directory, ["candidates", "picks"]):
        for cands, picks in zip(batch.column("candidates").to_pylist(), batch.column("picks").to_pylist()):
            s = len(cands)
            rec = out.setdefault(s, [np.zeros(s), np.zeros(s), 0])
            rec[2] += 1
            where = {c.strip().lower(): i for i, c in reversed(list(enumerate(cands)))}
            for j, p in enumerate(picks or []):
                i = where.get((p or "").strip().lower())
                if i is not None:
                    rec[0][i] += 1
                    if j == 0:
                        rec[1][i] += 1
    return {s: (a, b, n) for s, (a, b, n) in out.items()}


def _scored_profile(directory, kind: str = "mean") -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
    """{list length: (summed first-pick probability by position, the same debiased, trials)}."""
    est, batches = PositionPrior(kind), []
    for batch in iter_final(directory, ["logprobs", "probs"]):
        batch = batch.filter(pc.is_valid(batch.column("probs")))
        if batch.num_rows:
            lengths = np.asarray(pc.list_value_length(batch.column("logprobs")), dtype=np.int64)
            flat = np.asarray(pc.list_flatten(batch.column("logprobs")), dtype=np.float64)
            est.add(lengths, flat)
            batches.append((lengths, flat))
    prior = est.result()
    out: dict[int, list] = {}
    for lengths, flat in batches:
        raw, deb = np.exp(normalized_log(lengths, flat)), debias(lengths, flat, prior)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        for s in np.unique(lengths):
            idx = (starts[lengths == s][:, None] + np.arange(s)[None, :]).ravel()
            rec = out.setdefault(int(s), [np.zeros(s), np.zeros(s), 0])
            rec[0] += raw[idx].reshape(-1, s).sum(axis=0)
            rec[1] += deb[idx].reshape(-1, s).sum(axis=0)
            rec[2] += int((lengths == s).sum())
    return {s: (a, b, n) for s, (a, b, n) in out.items()}


def position_tables(cfg: Config, model: str, paradigm: str) -> tuple[list[dict], dict | None]:
    """Profile rows and the bias summary of one model's FC or scored-FC log (None: no log)."""
    directory = paths.behavior_dir(cfg, model, paradigm)
    if not directory.exists() or not list_parts(directory):
        return [], None
    scored = get_paradigm(paradigm).position_profile == "probs"
    prof = _scored_profile(directory, cfg.behave.scored_prior) if scored else _fc_profile(directory)
    if not prof:
        return [], None
    rows, kl, kl_deb, trials, picks = [], 0.0, 0.0, 0, 0
    pooled = np.zeros(max(prof))
    for s, (a, b, n) in sorted(prof.items()):
        total = float(a.sum())
        if scored:
            share, first, deb = a / n, a / n, b / n
            kl += n * choice_kl(share)
            kl_deb += n * choice_kl(deb)
        else:
            share = a / total if total else np.full(s, np.nan)
            first = b / b.sum() if b.sum() else np.full(s, np.nan)
            deb = np.full(s, np.nan)
            kl += n * choice_kl(a, smooth_n=total) if total else 0.0
        pooled[:s] += a
        trials += n
        picks += int(round(total)) if not scored else n
        rows += [{"model": model, "paradigm": paradigm, "n_candidates": s, "position": i + 1,
                  "n": float(a[i]) if not scored else n, "share": float(share[i]), "first_share": float(first[i]),
                  "share_debiased": float(deb[i])} for i in range(s)]
    pooled /= pooled.sum() if pooled.sum() else 1.0
    ckld = kl / trials
    summary = {"model": model, "paradigm": paradigm, "n_trials": trials, "n_picks": picks,
               "top_position": int(np.argmax(pooled)) + 1, "top_share": float(pooled.max()),
               "top2_share": float(pooled[:2].sum()), "ckld": ckld,
               "ckld_debiased": kl_deb / trials if scored else math.nan,
               "large": bool(ckld > cfg.validity.position_kl)}
    return rows, summary


# ---------------------------------------------------------------- hidden states

def hidden_rows(cfg: Config, model: str, strategy: str, words: list[str]) -> list[dict]:
    """`norm_diagnostics` of every analysed layer (1..L) of one model x strategy."""
    arr = load_hidden(cfg, model, strategy, n_words=len(words))
    rows = []
    n_layers = arr.shape[0] - 1
    for layer in range(1, n_layers + 1):
        d = norm_diagnostics(np.asarray(arr[layer], dtype=np.float64), cfg.validity.norm_ratio)
        out = d.pop("outliers")
        rows.append({"model": model, "strategy": strategy, "layer": layer, "n_layers": n_layers, **d,
                     "n_outliers": len(out), "outlier_words": ", ".join(words[i] for i in out[:_NAMED_OUTLIERS]),
                     "flagged": bool(out) or d["centred_share"] > cfg.validity.centred_share})
    return rows


# ---------------------------------------------------------------- reliability ceiling and planner

def ceiling_rows(cfg: Config, words: list[str]) -> list[dict]:
    """Split-half reliability beside each behavioral geometry's RSA (hidden layers, encoder, static)."""
    from .comparison import compare
    from .similarity import draw_paper_pairs

    rel_path, rsa_path = paths.result_table(cfg, "reliability"), paths.result_table(cfg, "rsa")
    if not rel_path.exists():
        return []
    rel = pd.read_parquet(rel_path)
    rsa = pd.read_parquet(rsa_path) if rsa_path.exists() else pd.DataFrame(columns=["model", "reference", "method"])
    baselines = {}
    for name, path in (("encoder", paths.encoder_file(cfg)), ("static", paths.static_file(cfg))):
        if path.exists():
            v = np.array(np.load(path), dtype=np.float64)
            valid = np.isfinite(v).all(axis=1)
            v[~valid] = 0.0
            nv = np.linalg.norm(v, axis=1)
            sim = (v / np.where(nv > 0, nv, 1)[:, None]) @ (v / np.where(nv > 0, nv, 1)[:, None]).T
            sim[~valid, :] = np.nan
            sim[:, ~valid] = np.nan
            baselines[name] = sim
    pairs = draw_paper_pairs(len(words), cfg.rsa.paper_pairs, cfg.rsa.seed, words) if "paper" in set(rel.method) \
        else None
    rows = []
    for r in rel.itertuples():
        g = rsa[(rsa.model == r.model) & (rsa.reference == r.paradigm) & (rsa.method == r.method)]
        g = g[g.rsa.notna()] if len(g) else g
        row = {"model": r.model, "paradigm": r.paradigm, "method": r.method, "r_sb": r.reliability,
               "sqrt_r_sb": r.ceiling_high, "rsa_mean": float(g.rsa.mean()) if len(g) else math.nan,
               "rsa_peak": float(g.rsa.max()) if len(g) else math.nan,
               "peak_at": (f"{g.loc[g.rsa.idxmax()].strategy} {int(g.loc[g.rsa.idxmax()].layer)}"
                           if len(g) else "")}
        mat = paths.matrix_file(cfg, r.model, r.paradigm, "sim_ppmi")
        for name in ("encoder", "static"):
            row[f"rsa_{name}"] = math.nan
            if name in baselines and mat.exists():
                row[f"rsa_{name}"] = compare(np.asarray(np.load(mat), dtype=np.float64), baselines[name], r.method,
                                             pairs=pairs)
        rows.append(row)
    return rows


def plan(cfg: Config, rel: pd.DataFrame, n_words: int) -> pd.DataFrame:
    """The reliability planner: per model x paradigm (primary RSA method), the Spearman-Brown
    projection of how much data per cue reaches `validity.target_reliability`, and its cost.

    Units per cue: FC and scored FC, candidate groups (m groups x `trials.fc_orders`; more
    data means more rotations, at most the list length, since a greedy answer to the same
    prompt repeats itself); FA, runs. GPU-hours from `validity.fc_trials_per_s` /
    `fa_trials_per_s` (the README's H100 estimate for an 8B model; scored FC at FC's rate),
    for this run's N words and for `validity.plan_words` words, assuming the factor carries
    over (units per cue, not total trials, are what Spearman-Brown scales).
    """
    v = cfg.validity
    method = "spearman" if "spearman" in set(rel.method) else rel.method.iloc[0]
    rows = []
    for r in rel[rel.method == method].itertuples():
        f = spearman_brown_factor(r.reliability, v.target_reliability)
        u = get_paradigm(r.paradigm).units(cfg, n_words)
        now, rate = u.trials_run * u.now, u.rate
        row = {"model": r.model, "paradigm": r.paradigm, "method": method, "r_sb": r.reliability,
               "target": v.target_reliability, "unit": u.key, "units_now": u.now, "factor": f}
        if math.isfinite(f):
            need = max(1, math.ceil(u.now * f - 1e-9))
            per_cue_run = need * u.trials_run
            per_cue_big = need * u.trials_plan
            row.update(units_needed=need, per_cue_needed=per_cue_run,
                       feasible=bool(need <= u.most) if u.most is not None else True,
                       trials_run=n_words * per_cue_run, trials_plan=v.plan_words * per_cue_big)
            row.update(gpu_h_run_low=row["trials_run"] / rate[1] / 3600,
                       gpu_h_run_high=row["trials_run"] / rate[0] / 3600,
                       gpu_h_plan_low=row["trials_plan"] / rate[1] / 3600,
                       gpu_h_plan_high=row["trials_plan"] / rate[0] / 3600)
        else:
            row.update(units_needed=math.nan, per_cue_needed=math.nan, feasible=False, trials_run=math.nan,
                       trials_plan=math.nan, gpu_h_run_low=math.nan, gpu_h_run_high=math.nan,
                       gpu_h_plan_low=math.nan, gpu_h_plan_high=math.nan)
        row.update(per_cue_now=now, n_words=n_words)
        rows.append(row)
    return pd.DataFrame(rows)


def _name(paradigm: str) -> str:
    return get_paradigm(paradigm).title


def _hours(h: float) -> str:
    return f"{h:,.1f}" if h >= 0.1 else f"{h:.2g}"


def plan_lines(cfg: Config, df: pd.DataFrame) -> list[str]:
    """The planner as plain sentences (report and `plan-trials`)."""
    v = cfg.validity
    out = []
    for r in df.itertuples():
        key = f"trials.{r.unit}"  # the config key that sets the units (`Units.key`)
        name = _name(r.paradigm)
        head = f"{name} ({r.model}): r_SB = {r.r_sb:.3f} ({r.method}) with {key} = {int(r.units_now)}"
        if not math.isfinite(r.factor):
            out.append(f"{head}; no amount of repetition reaches {v.target_reliability} by Spearman-Brown (the halves "
                       f"do not agree): change the design (counterbalancing, debiasing, more words) before adding "
                       f"trials.")
        elif r.factor <= 1:
            out.append(f"{head} already reaches {v.target_reliability}.")
        else:
            tail = "" if r.feasible else ("; more rotations than a list has positions, so in practice: more words "
                                          "or sampled repetitions")
            out.append(f"{head}; {v.target_reliability} needs {r.factor:.1f}x the data, {key} = {int(r.units_needed)}: "
                       f"{r.trials_run:,.0f} trials for these {r.n_words} words, and {r.trials_plan:,.0f} trials ≈ "
                       f"{_hours(r.gpu_h_plan_low)}-{_hours(r.gpu_h_plan_high)} GPU-hours (H100, 8B model) for "
                       f"{v.plan_words:,} words if the factor carries over{tail}.")
    return out


# ---------------------------------------------------------------- stage

def _inputs(cfg: Config, man: Manifest) -> dict:

    files = []
    for m in cfg.models:
        for p in PARADIGMS:
            d = paths.behavior_dir(cfg, m.name, p)
            files += list_parts(d) if d.exists() else []
        if not m.behavior_only:
            files += [f for s in cfg.hidden.strategies if (f := paths.hidden_file(cfg, m.name, s)).exists()]
    files += [f for t in ("reliability", "rsa") if (f := paths.result_table(cfg, t)).exists()]
    files += [f for f in (paths.encoder_file(cfg), paths.static_file(cfg)) if f.exists()]
    return man.ids(files)


def run(cfg: Config, opts: Options) -> None:
    """`validity` stage: write the five validity tables.

    A view of what it reads, like the report: recomputed whenever its settings or inputs
    changed (never refused), skipped when neither did.
    """
    words = load_run_vocab(cfg)
    man = Manifest(cfg.run_dir)
    step = man.step(keys.VALIDITY, {"version": _VERSION, "settings": asdict(cfg.validity),
                                    "trials": asdict(cfg.trials),
                                    "scored": [cfg.behave.scored_counts, cfg.behave.scored_prior],
                                    "models": [m.name for m in cfg.models], "strategies": cfg.hidden.strategies,
                                    "rsa": asdict(cfg.rsa)}, _inputs(cfg, man), replace_stale=True)
    if not opts.force and step.done():
        log.info("validity: inputs unchanged, skipped")
        return
    step.start()
    prof, bias, hid = [], [], []
    for m in cfg.models:
        for p in PARADIGMS:
            if p in cfg.behave.paradigms and get_paradigm(p).position_profile:
                rows, summary = position_tables(cfg, m.name, p)
                prof += rows
                bias += [summary] if summary else []
        if not m.behavior_only:
            for s in cfg.hidden.strategies:
                if paths.hidden_file(cfg, m.name, s).exists():
                    hid += hidden_rows(cfg, m.name, s, words)
    ceiling = pd.DataFrame(ceiling_rows(cfg, words))
    rel_path = paths.result_table(cfg, "reliability")
    planned = plan(cfg, pd.read_parquet(rel_path), len(words)) if rel_path.exists() else pd.DataFrame()
    tables = dict(zip(TABLES, [pd.DataFrame(prof), pd.DataFrame(bias), pd.DataFrame(hid), ceiling, planned]))
    for name, df in tables.items():
        write_parquet(df, paths.result_table(cfg, name))
    for line in sentences(cfg, tables):
        log.info("validity: %s", line)
    step.complete([paths.result_table(cfg, t) for t in TABLES],
                  {"position_bias": [f"{r['model']}/{r['paradigm']}: ckld {r['ckld']:.3f}, top2 {r['top2_share']:.3f}"
                                     for r in bias],
                   "hidden_flagged": int(sum(r["flagged"] for r in hid))})


def load(cfg: Config) -> dict[str, pd.DataFrame]:
    """The validity tables that exist and are not empty."""
    out = {}
    for name in TABLES:
        path = paths.result_table(cfg, name)
        if path.exists():
            df = pd.read_parquet(path)
            if not df.empty:
                out[name] = df
    return out


def sentences(cfg: Config, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Plain sentences for every large artifact (position bias, norm outliers, rogue dimensions)."""
    v = cfg.validity
    out = []
    bias = tables.get("validity_bias")
    if bias is not None and not bias.empty:
        for r in bias.itertuples():
            scored = get_paradigm(r.paradigm).position_profile == "probs"
            name = _name(r.paradigm)
            what = "first-pick probability" if scored else "picks"
            if r.large:
                fix = (f" Debiasing by the run's position prior brings it to {r.ckld_debiased:.3f}"
                       f"{' (the counts use it)' if cfg.behave.scored_counts == 'debiased' else ''}."
                       if scored else
                       (f" Counterbalancing (trials.fc_orders = {cfg.trials.fc_orders}) gives every candidate the "
                        f"same exposure to each position, so the bias favours no word, but position-driven picks "
                        f"still add noise, not meaning." if cfg.trials.fc_orders > 1 else
                        " Counterbalancing (trials.fc_orders) is off: the words the shuffle put first are favoured."))
                out.append(f"{name} ({r.model}) is position-biased: {r.top2_share:.1%} of its {what} fall on list "
                           f"positions 1-2 ({2 / cfg.trials.fc_candidates:.1%} if uniform; position {r.top_position} "
                           f"has {r.top_share:.1%}), "
                           f"CKLD {r.ckld:.3f} > {v.position_kl}: its geometry partly measures the trial plan's "
                           f"order, not meaning.{fix}")
    hid = tables.get("validity_hidden")
    if hid is not None and not hid.empty:
        for (model, strategy), g in hid.groupby(["model", "strategy"], sort=False):
            out_layers = g[g.n_outliers > 0]
            if len(out_layers):
                worst = g.loc[g.norm_ratio.idxmax()]
                out.append(f"Hidden {model}/{strategy}: {len(out_layers)}/{len(g)} layers have word vectors over "
                           f"{v.norm_ratio:g}x the median norm (worst: layer {int(worst.layer)}, "
                           f"{worst.norm_ratio:.1f}x, {worst.outlier_words}); such a word dominates the centred "
                           f"geometry (an attention-sink position pooled, or a rogue direction).")
            rogue = g[g.centred_share > v.centred_share]
            if len(rogue):
                worst = g.loc[g.centred_share.idxmax()]
                out.append(f"Hidden {model}/{strategy}: in {len(rogue)}/{len(g)} layers one dimension carries over "
                           f"{v.centred_share:.0%} of the centred geometry (worst: layer {int(worst.layer)}, dimension "
                           f"{int(worst.centred_dim)}, {worst.centred_share:.0%}).")
    return out


def plan_trials(cfg: Config, opts: Options) -> None:
    """`plan-trials` command: print the reliability planner from this run's split-half reliability."""
    rel_path = paths.result_table(cfg, "reliability")
    if not rel_path.exists():
        raise PipelineError(f"{rel_path}: no split-half reliability yet; run `{keys.command(cfg, 'rsa')}` "
                            f"(with rsa.split_half = true) first")
    df = plan(cfg, pd.read_parquet(rel_path), len(load_run_vocab(cfg)))
    for line in plan_lines(cfg, df):
        print(line)
