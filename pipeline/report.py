"""`report` stage: figures (PNG, drawn by `figures`) and `report.md` from the result tables.

Reads `results/rsa.parquet`, `nn.parquet`, `reliability.parquet`, `regression.parquet` and
the behave summaries in the manifest, and writes under `report/`:

- `rsa_by_layer.png`: RSA by layer, one panel per model x strategy, one line per reference,
  bootstrap CI bands, and the split-half noise ceiling of FC, FA and scored FC as horizontal bands
  (from r_SB, an independent replication, to sqrt(r_SB), a noise-free geometry); for a paper
  model the published curves dashed, and then the run's `paper` method when it has it
  (`overlay_method`; otherwise `report.md` says the comparison is not like-for-like);
- `rsa_by_depth.png`: the same against relative depth layer/L, averaged over models (each
  model's curve interpolated onto a common grid; band = ±1 SD over models);
- `regression_by_layer.png`: held-out test R² by layer for the nested feature sets;
- `nn_overlap.png`: NN@k overlap against k (log scale), mean over models and layers, with
  the chance level k/(N-1);
- `svd_variants.png` (with `rsa.svd_variants`): the paper's SVD / weighting ablation by layer
  0..L, one line per variant, the published values dashed beside a paper model's;
- `validity.png` (with the `validity` tables): the list-position profile of FC and scored
  FC (scored FC also after position-prior debiasing) against uniform, and the largest
  word-vector norm over the median per hidden layer and strategy; the "Validity" section
  names each large artifact in a sentence, puts the split-half reliability beside each
  behavioral RSA and prints the reliability planner (`validity`);
- `report.md`: paper-style tables (METHOD.md §8: mean and peak RSA, FC vs FA, compliance,
  noise ceilings, NN@k, regression summary with FC/FA gains), the behavioral geometry of
  every model compared with every other (`behavior_rsa.parquet`; the only comparison a
  behavior-only model behind an API has besides the `fc:MODEL`/`fa:MODEL` references) and a
  headline block; with
  scored FC, its agreement with generated FC and its RSA beside FC's; with human norms, their
  coverage and each model's behavioral geometry against them (`behavior_norms.parquet`).

The report is a view of the results, so it is rebuilt whenever they change (no --force
needed) and skipped when they have not.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pandas as pd

from . import keys, paths, published
from .config import HUMAN, PARADIGMS, Config, ReleasedModelCfg
from .errors import PipelineError
from .figures import (
    METHOD_LABELS,
    fig_nn,
    fig_regression,
    fig_rsa_by_depth,
    fig_rsa_by_layer,
    fig_svd,
    fig_validity,
    pyplot,
    ref_order,
    svd_variant_order,
)
from .manifest import Manifest
from .merge import summaries
from .options import Options
from .paradigms import get as get_paradigm
from .paradigms import paper_names
from .store import atomic_write_bytes

log = logging.getLogger(__name__)

FIGURES = ("rsa_by_layer.png", "rsa_by_depth.png", "regression_by_layer.png", "nn_overlap.png", "validity.png")
SVD_FIGURE = "svd_variants.png"
_TABLES = ("rsa", "nn", "reliability", "regression", "behavior_rsa", "behavior_norms", "svd_variants")
_VERSION = 3


# ---------------------------------------------------------------- inputs

def load_results(cfg: Config) -> dict[str, pd.DataFrame]:
    """The result tables that exist (missing or empty ones are left out); hidden-state rows
    of the paper's centered geometry only (`rsa.hidden_geometry` variants stay in results/).

    Raises:
        PipelineError: a table was changed since its stage wrote it, cannot be read, or lacks
            its columns (truncated, or another table copied over it); the message names the
            stage that writes it again.
    """
    from .regress import _COLUMNS as regression
    from .rsa import _BEH_COLUMNS, _BN_COLUMNS, _NN_COLUMNS, _REL_COLUMNS, _RSA_COLUMNS
    from .svd import COLUMNS as svd_variants

    columns = {"rsa": _RSA_COLUMNS, "nn": _NN_COLUMNS, "reliability": _REL_COLUMNS, "regression": regression,
               "behavior_rsa": _BEH_COLUMNS, "behavior_norms": _BN_COLUMNS, "svd_variants": svd_variants}
    man = Manifest(cfg.run_dir)
    out = {}
    for name in _TABLES:
        path = paths.result_table(cfg, name)
        if path.exists():
            rebuild = keys.command(cfg, keys.REGRESS if name == "regression" else keys.RSA)
            man.require(path, f"the {name} results table", rebuild)
            try:
                df = pd.read_parquet(path)
            except (OSError, ValueError) as e:
                raise PipelineError(f"{path}: unreadable {name} results table ({str(e).splitlines()[0][:200]}); "
                                    f"rebuild it with `{rebuild}`") from None
            missing = [c for c in columns[name] if c not in df.columns]
            if missing:
                raise PipelineError(f"{path}: not a {name} results table (no column {', '.join(missing[:4])}); "
                                    f"rebuild it with `{rebuild}`")
            if "geometry" in df:
                df = df[df.geometry == "centered"]
            if not df.empty:
                out[name] = df
    return out


def primary_method(cfg: Config, rsa: pd.DataFrame) -> str:
    """Spearman when computed (the pipeline's default), else the first configured method present."""
    present = set(rsa.method)
    for m in ["spearman", *cfg.rsa.methods, *sorted(present)]:
        if m in present:
            return m
    raise ValueError("no RSA rows")


def overlay_method(cfg: Config, rsa: pd.DataFrame) -> str:
    """The method of the RSA-by-layer figure: `paper` when a model of the run is one of the
    paper's and the run has that method, so the solid curves are the statistic of the dashed
    published ones (Pearson on 500,000 sampled pairs); else `primary_method`."""
    if published.match(cfg.models) and published.METHOD in set(rsa.method):
        return published.METHOD
    return primary_method(cfg, rsa)


def compliance(cfg: Config) -> pd.DataFrame:
    """Behave summaries from the manifest: model, paradigm, n_trials, compliance (and extras)."""
    found = summaries(Manifest(cfg.run_dir), {(m.name, p): keys.behave(m.name, p) for m in cfg.models
                                              for p in PARADIGMS})
    rows = []
    for (model, p), summary in found.items():
        if summary.get("compliance") is not None:
            row = {"model": model, "paradigm": p, "n_trials": summary.get("n_trials"),
                   "compliance": summary.get("compliance"), "first_try_ok": summary.get("first_try_ok"),
                   "full_compliance": summary.get("full_compliance"),
                   "mean_associates": summary.get("mean_associates")}
            if get_paradigm(p).scoring:
                row["candidate_mass"] = summary.get("mass")
            rows.append(row)
    return pd.DataFrame(rows)


def norms_coverage(cfg: Config) -> pd.DataFrame:
    """Per `[[norms]]` entry: how many vocabulary words have norms (from its import record)."""
    man = Manifest(cfg.run_dir)
    rows = []
    for n in cfg.norms:
        s = man.summary(keys.norms(n.name))
        if s:
            rows.append({"reference": f"{HUMAN}{n.name}", "format": s.get("format"),
                         "words with norms": s.get("covered"),
                         "vocabulary": (s.get("covered") or 0) + (s.get("masked_rows") or 0),
                         "coverage": s.get("coverage"), "responses counted": _count(s.get("picks")),
                         "missing (first 10)": ", ".join((s.get("missing_words") or [])[:10]) or "–"})
    return pd.DataFrame(rows, dtype=object)


def _count(v):
    """A count as an int when it is whole (weighted norms sum to floats), else as it is."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def sentences_section(cfg: Config) -> list[str]:
    """The averaged strategy's sentences: source, rules and the words below `hidden.max_sentences`
    (from the `sentences` stage record)."""
    s = Manifest(cfg.run_dir).summary(keys.SENTENCES) if "averaged" in cfg.hidden.strategies else None
    if not s:
        return []
    how = (f"harvested from {s.get('units_scanned')} of {s.get('units')} corpus units ({s.get('documents'):,} "
           f"documents; {s.get('ended')}); rules: {s.get('rules_text')}" if s.get("source") == "harvest"
           else "supplied (not harvested by this run)")
    lines = ["", "## Sentences (averaged strategy)", "",
             f"`{s.get('file')}`: {how}. {s['words_at_cap']} of {s['words']} words have {s['max_sentences']} "
             f"sentences, {s['words_below_cap']} fewer ({s['words_without_sentences']} none, represented by "
             f"the fallback text), mean {s['mean_sentences']}."]
    if s["below_cap"]:
        below = pd.DataFrame(s["below_cap"][:30], columns=["word", "sentences"])
        first = ", first 30" if len(s["below_cap"]) > 30 else ""
        lines += ["", f"Words below {s['max_sentences']} (fewest first{first}):", "", md_table(below)]
    return lines


# ---------------------------------------------------------------- summaries

def rsa_summary(rsa: pd.DataFrame, method: str) -> pd.DataFrame:
    """Per model x strategy x reference: mean over layers, peak value and its layer."""
    d = rsa[(rsa.method == method) & rsa.rsa.notna()]
    rows = []
    for (model, strategy, ref), g in d.groupby(["model", "strategy", "reference"], sort=False):
        peak = g.loc[g.rsa.idxmax()]
        rows.append({"model": model, "strategy": strategy, "reference": ref, "mean": g.rsa.mean(),
                     "peak": peak.rsa, "peak_layer": int(peak.layer), "n_layers": int(peak.n_layers)})
    return pd.DataFrame(rows)


def regression_summary(reg: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per model x strategy: mean over layers of test R² per feature set (seeds averaged
    first), the peak layer of the fullest set, and the FC/FA gains at that layer.

    Gains follow METHOD.md §7: R²(+Cross+FC) − R²(+Cross) at each cell's peak layer (over
    the baseline when there is no consensus); the same for each set beyond the paper's
    (scored FC, human norms: column ``<feature>_gain_peak``). Also returns the set names used.
    """
    by_layer = (reg[reg.r2_test.notna()].groupby(["model", "strategy", "layer", "feature_set"], sort=False)
                .r2_test.mean().unstack())
    sets = list(dict.fromkeys(reg.feature_set))
    cross = "base+cross" if "base+cross" in sets else "base"
    paper = paper_names()
    with_p = {p: f"{cross}+{p}" if f"{cross}+{p}" in sets else None for p in paper}
    full = sets[-1]
    extra = {x[len(cross) + 1:]: x for x in sets
             if x.startswith(f"{cross}+") and x[len(cross) + 1:] not in (*paper, "+".join(paper))}
    rows = []
    for (model, strategy), g in by_layer.groupby(level=["model", "strategy"], sort=False):
        g = g.droplevel(["model", "strategy"])
        if g[full].isna().all():
            continue
        peak = int(g[full].idxmax())
        row = {"model": model, "strategy": strategy, **{s: g[s].mean() for s in sets}, "peak_layer": peak,
               "n_layers": int(g.index.max()), "peak_r2": g.loc[peak, full]}
        for p, name in with_p.items():
            row[f"{p}_gain_peak"] = g.loc[peak, name] - g.loc[peak, cross] if name else np.nan
        for p, name in with_p.items():
            row[f"{p}_gain_mean"] = (g[name] - g[cross]).mean() if name else np.nan
        for feature, name in extra.items():
            row[f"{feature}_gain_peak"] = g.loc[peak, name] - g.loc[peak, cross]
        rows.append(row)
    return pd.DataFrame(rows), {"sets": sets, "reference": cross, **with_p, "full": full, "extra": extra}


def headline(cfg: Config) -> dict:
    """The few numbers the demo prints: compliance, best-layer RSA of FC and FA, regression gains.

    Returns:
        Ordered {label: text}; a label whose source is missing says so instead of a number.
    """
    res = load_results(cfg)
    out = {}
    comp = compliance(cfg)
    for p in paper_names():
        c = comp[comp.paradigm == p] if not comp.empty else comp
        out[f"{get_paradigm(p).short} compliance"] = (
            ", ".join(f"{r.compliance:.1%} ({r.model})" for r in c.itertuples())
            if not c.empty else "n/a (no behave summary in the manifest)")
    for p in PARADIGMS:
        out.update(get_paradigm(p).report_headline(cfg))
    if "rsa" in res:
        method = primary_method(cfg, res["rsa"])
        d = res["rsa"][(res["rsa"].method == method) & res["rsa"].rsa.notna()]
        extra = [r for r in ref_order(d.reference)
                 if (r in PARADIGMS and r not in paper_names()) or r.startswith(HUMAN)]
        for p in [*paper_names(), *extra]:
            label = p if p.startswith(HUMAN) else get_paradigm(p).short
            g = d[d.reference == p]
            if g.empty:
                out[f"best-layer RSA {label}"] = "n/a (reference not computed)"
                continue
            best = g.loc[g.rsa.idxmax()]
            ci = (f", 95% CI [{best.ci_low:.3f}, {best.ci_high:.3f}]" if np.isfinite(best.ci_low) else "")
            out[f"best-layer RSA {label}"] = (f"{best.rsa:.3f} {method} ({best.model}/{best.strategy}, layer "
                                              f"{int(best.layer)}/{int(best.n_layers)}{ci})")
    else:
        out["best-layer RSA"] = "n/a (run the rsa stage)"
    if "regression" in res:
        summary, names = regression_summary(res["regression"])
        ref = names["reference"]
        for p in paper_names():
            if names[p]:
                out[f"regression R² gain {get_paradigm(p).short}"] = (
                    f"{summary[f'{p}_gain_peak'].mean():+.4f} over {ref} at each cell's peak layer "
                    f"(mean over layers {summary[f'{p}_gain_mean'].mean():+.4f})")
        out["regression R² full model"] = (f"{summary[names['full']].mean():.3f} mean over layers "
                                           f"({ref}: {summary[ref].mean():.3f})")
    else:
        out["regression R²"] = "n/a (run the regress stage)"
    out.update(_validity_headline(cfg))
    return out


def _validity_headline(cfg: Config) -> dict:
    """One headline line: position bias, reliability and hidden-norm outliers in a few figures."""
    from . import validity

    v = validity.load(cfg)
    if not v:
        return {}
    parts = []
    bias = v.get("validity_bias")
    if bias is not None:
        for r in bias.itertuples():
            par = get_paradigm(r.paradigm)
            deb = f" ({r.ckld_debiased:.2f} debiased)" if par.position_profile == "probs" else ""
            name = par.short
            parts.append(f"{name} positions 1-2 {r.top2_share:.0%}, CKLD {r.ckld:.2f}{deb}")
    ceil = v.get("validity_ceiling")
    if ceil is not None:
        c = ceil[ceil.method == ("spearman" if "spearman" in set(ceil.method) else ceil.method.iloc[0])]
        parts.append("r_SB " + ", ".join(f"{get_paradigm(r.paradigm).short} {r.r_sb:.2f}"
                                         for r in c.drop_duplicates("paradigm").itertuples()))
    hid = v.get("validity_hidden")
    if hid is not None:
        worst = hid.loc[hid.norm_ratio.idxmax()]
        parts.append(f"largest norm/median {worst.norm_ratio:.1f}x ({worst.strategy}, layer {int(worst.layer)})")
    return {"validity": "; ".join(parts) + " (section Validity)"}


def _validity_section(cfg: Config) -> list[str]:
    """Markdown: the artifacts named in sentences, position bias, reliability ceiling, hidden norms, planner."""
    from . import validity

    v = validity.load(cfg)
    if not v:
        return []
    vc = cfg.validity
    lines = ["", "## Validity", "",
             "Does a geometry measure meaning or the instrument? List-position bias of forced choice (choice KL "
             f"divergence from uniform, CKLD, named when > {vc.position_kl} nats), word vectors far beyond the median "
             f"norm (> {vc.norm_ratio:g}x: an attention-sink position pooled, a rogue direction) and the split-half "
             "reliability beside each behavioral RSA (README \"Measurement validity\"). Design: "
             f"`trials.fc_orders = {cfg.trials.fc_orders}`, `trials.fa_runs = {cfg.trials.fa_runs}`, scored FC counts "
             f"`{cfg.behave.scored_counts}`.", ""]
    named = validity.sentences(cfg, v)
    lines += [f"- {t}" for t in named] or ["- No artifact beyond the thresholds."]
    if "validity_bias" in v:
        b = v["validity_bias"][["model", "paradigm", "n_trials", "top_position", "top_share", "top2_share", "ckld",
                                "ckld_debiased"]]
        lines += ["", "**Position bias** (share of picks, or of first-pick probability, by list position: "
                      "`results/validity_position.parquet`)", "", md_table(b)]
    if "validity_ceiling" in v:
        c = v["validity_ceiling"].rename(columns={"r_sb": "r_SB", "sqrt_r_sb": "sqrt(r_SB)",
                                                   "rsa_mean": "RSA hidden mean", "rsa_peak": "RSA hidden peak",
                                                   "peak_at": "peak at",
                                                   "rsa_encoder": f"RSA {cfg.baselines.encoder_name}",
                                                   "rsa_static": f"RSA {cfg.baselines.static_name}"})
        lines += ["", "**Reliability beside RSA**: a behavioral geometry cannot correlate with anything beyond "
                      "sqrt(r_SB); RSA hidden = against the hidden layers (all strategies), the baselines directly "
                      "against the behavioral matrix.", "", md_table(c)]
    if "validity_hidden" in v:
        h = v["validity_hidden"]
        rows = []
        for (model, strategy), g in h.groupby(["model", "strategy"], sort=False):
            w, r = g.loc[g.norm_ratio.idxmax()], g.loc[g.centred_share.idxmax()]
            rows.append({"model": model, "strategy": strategy, "max norm/median": w.norm_ratio,
                         "at layer": int(w.layer), "outlier words": w.outlier_words,
                         "layers with outliers": f"{int((g.n_outliers > 0).sum())}/{len(g)}",
                         "top-dim share (centred)": r.centred_share, "top-dim layer": int(r.layer),
                         "rogue CC share (raw)": g.rogue_share.max()})
        lines += ["", "**Hidden-state norms and rogue dimensions** (per layer: "
                      "`results/validity_hidden.parquet`)", "", md_table(pd.DataFrame(rows))]
    if "validity_plan" in v:
        lines += ["", f"**Reliability planner** (Spearman-Brown to r_SB = {vc.target_reliability}; "
                      "`python -m pipeline plan-trials --config ...`)", ""]
        lines += [f"- {t}" for t in validity.plan_lines(cfg, v["validity_plan"])]
    return lines


# ---------------------------------------------------------------- markdown

def md_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """`df` as a Markdown table, floats as `floatfmt` and non-finite values as "–"."""
    def fmt(v):
        if isinstance(v, (float, np.floating)):
            return "–" if not np.isfinite(v) else format(v, floatfmt)
        return str(v)

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    sep = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _order(cfg: Config, df: pd.DataFrame) -> tuple[list[str], list[str]]:
    models = [m.name for m in cfg.models if m.name in set(df.model)] or sorted(set(df.model))
    strategies = [s for s in cfg.hidden.strategies if s in set(df.strategy)] or sorted(set(df.strategy))
    return models, strategies


def _markdown(cfg: Config, res: dict[str, pd.DataFrame], figures: list[str]) -> str:
    lines = [f"# Report: {cfg.experiment.name}", "",
             f"Config `{cfg.source}`; generated {time.strftime('%Y-%m-%d %H:%M')} from `results/`. "
             "Hidden geometry = mean-centered cosine per layer (layers 1..L); behavioral references = "
             "PPMI-cosine; regression features = counts-cosine (METHOD.md §6-§7).", "", "## Headline", ""]
    lines += [f"- **{k}**: {v}" for k, v in headline(cfg).items()]
    comp = compliance(cfg)
    lines += ["", "## Behavioral compliance", ""]
    if comp.empty:
        lines.append("No behave summaries in the manifest.")
    else:
        cols = [c for c in comp.columns if comp[c].notna().any()]
        lines.append(md_table(comp[cols]))
    lines += _behavior_section(cfg, res)
    lines += sentences_section(cfg)
    if "rsa" in res:
        rsa = res["rsa"]
        models, strategies = _order(cfg, rsa)
        for method in [m for m in ("spearman", "pearson", "paper") if m in set(rsa.method)]:
            s = rsa_summary(rsa, method)
            wide = s.pivot_table(index=["model", "strategy"], columns="reference", values="mean", sort=False)
            wide = wide[ref_order(wide.columns)].reset_index()
            by_strategy = s.groupby(["strategy", "reference"], sort=False)["mean"].mean().unstack()
            by_strategy = by_strategy[ref_order(by_strategy.columns)].reset_index()
            by_strategy.insert(0, "model", "mean over models")
            table = pd.concat([wide, by_strategy], ignore_index=True) if len(models) > 1 else wide
            lines += ["", f"## RSA, mean over layers ({METHOD_LABELS.get(method, method)})", "", md_table(table)]
        method = primary_method(cfg, rsa)
        s = rsa_summary(rsa, method)
        paper = paper_names()
        peak = s[s.reference.isin(paper)].copy()
        peak["value"] = [f"{r.peak:.3f} @ {r.peak_layer}/{r.n_layers}" for r in peak.itertuples()]
        peak = peak.pivot_table(index=["model", "strategy"], columns="reference", values="value",
                                aggfunc="first", sort=False).reset_index()
        a, b = paper
        sa, sb = get_paradigm(a).short, get_paradigm(b).short
        lines += ["", f"## Peak RSA, {sa} and {sb} ({METHOD_LABELS.get(method, method)}, value @ layer/L)", "",
                  md_table(peak)]
        fcfa = s[s.reference.isin(paper)].pivot_table(index=["model", "strategy"], columns="reference",
                                                      values="mean", sort=False)
        if set(paper) <= set(fcfa.columns):
            fcfa[f"{a} − {b}"] = fcfa[a] - fcfa[b]
            wins = int((fcfa[f"{a} − {b}"] > 0).sum())
            lines += ["", f"## {sa} vs {sb}", "",
                      f"{sa} > {sb} (mean over layers, {method}) in **{wins}/{len(fcfa)}** model × strategy cells.",
                      "", md_table(fcfa.reset_index())]
    for p in PARADIGMS:
        lines += get_paradigm(p).report_section(cfg, res)
    lines += _validity_section(cfg)
    lines += _norms_section(cfg, res)
    if "reliability" in res:
        rel = res["reliability"][["model", "paradigm", "method", "n_trials_a", "n_trials_b", "r_half",
                                  "reliability", "ceiling_high"]]
        lines += ["", "## Split-half reliability (noise ceiling)", "",
                  "Halves: FC by candidate-group parity, FA by run parity; each half's PPMI-cosine, "
                  "correlated with the same method and Spearman-Brown corrected. The figures show the "
                  "band from r_SB to sqrt(r_SB).", "",
                  md_table(rel.rename(columns={"reliability": "r_SB", "ceiling_high": "sqrt(r_SB)"}))]
    if "nn" in res:
        nn = res["nn"]
        t = nn.groupby(["strategy", "k", "reference"], sort=False).overlap.mean().unstack()
        t = t[ref_order(t.columns)].reset_index()
        lines += ["", "## NN@k overlap (mean over models and layers)", "", md_table(t)]
    if "regression" in res:
        summary, names = regression_summary(res["regression"])
        ref = names["reference"]
        gains = ["fc_gain_peak", "fa_gain_peak", *(f"{f}_gain_peak" for f in names["extra"])]
        cols = ["model", "strategy", *names["sets"], "peak_layer", "peak_r2", *gains]
        mean_row = summary[names["sets"] + ["peak_r2", *gains]].mean()
        table = pd.concat([summary[cols], pd.DataFrame([{"model": "mean", "strategy": "", "peak_layer": "",
                                                           **mean_row.to_dict()}])], ignore_index=True)
        seeds = sorted(res["regression"].seed.unique())
        note = "" if ref == "base+cross" else (" No consensus feature (a single model): gains are over the "
                                               "lexical baseline.")
        lines += ["", "## Held-out-words regression (test R²)", "",
                  f"Mean over layers (seeds {', '.join(map(str, seeds))} averaged first) per feature set; peak layer "
                  f"by `{names['full']}`; gains at that layer over `{ref}`.{note}", "", md_table(table, ".4f")]
    if "svd_variants" in res:
        lines += svd_section(cfg, res["svd_variants"])
    lines += ["", "## This run vs published", ""] + vs_published(cfg, res)
    if figures:
        lines += ["", "## Figures", ""] + [f"![{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def behavior_matrix(beh: pd.DataFrame, rel: pd.DataFrame | None, paradigm: str, method: str,
                    models: list[str]) -> pd.DataFrame:
    """Model x model RSA of behavioral geometries (symmetric), split-half r_SB on the diagonal."""
    m = pd.DataFrame(np.nan, index=models, columns=models)
    for r in beh[(beh.paradigm == paradigm) & (beh.method == method)].itertuples():
        if r.model_a in m.index and r.model_b in m.index:
            m.loc[r.model_a, r.model_b] = m.loc[r.model_b, r.model_a] = r.rsa
    if rel is not None:
        for r in rel[(rel.paradigm == paradigm) & (rel.method == method)].itertuples():
            if r.model in m.index:
                m.loc[r.model, r.model] = r.reliability
    return m


def _behavior_section(cfg: Config, res: dict[str, pd.DataFrame]) -> list[str]:
    """Markdown: which models are behavior-only, and every model's behavioral geometry against every other's."""
    api = [m.name for m in cfg.models if m.behavior_only and not isinstance(m, ReleasedModelCfg)]
    imported = [m.name for m in cfg.models if isinstance(m, ReleasedModelCfg)]
    lines = []
    if api:
        lines += ["", f"Behavior-only models (no weights, answered through an API): {', '.join(api)}. They have no "
                      f"hidden-state, consensus or regression rows; their behavior is compared below and enters the "
                      f"RSA tables as the references `fc:MODEL` / `fa:MODEL` where rsa.references lists them."]
    if imported:
        lines += ["", f"Released models (the authors' published trials, imported by the `released` stage; no weights "
                      f"here): {', '.join(imported)}. They have no hidden-state, consensus or regression rows; their "
                      f"behavior is compared below and enters the RSA tables as `fc:MODEL` / `fa:MODEL` where "
                      f"rsa.references lists them."]
    if "behavior_rsa" not in res:
        return lines
    beh, rel = res["behavior_rsa"], res.get("reliability")
    method = primary_method(cfg, beh)
    models = [m.name for m in cfg.models if m.name in set(beh.model_a) | set(beh.model_b)]
    label = {m: f"{m} (API)" if m in api else f"{m} (released)" if m in imported else m for m in models}
    lines += ["", f"## Behavioral geometry across models ({METHOD_LABELS.get(method, method)})", "",
              "RSA between two models' behavioral PPMI-cosine matrices over the words both answered for; the "
              "diagonal is the model's own split-half reliability r_SB (its noise ceiling; – when not computed). "
              "All methods: `results/behavior_rsa.parquet`."]
    for paradigm in [p for p in paper_names() if p in set(beh.paradigm)]:
        m = behavior_matrix(beh, rel, paradigm, method, models).rename(index=label, columns=label)
        lines += ["", f"**{get_paradigm(paradigm).short}**", "", md_table(m.rename_axis("model").reset_index())]
    return lines


def _norms_section(cfg: Config, res: dict[str, pd.DataFrame]) -> list[str]:
    """Human norms: coverage, each model's behavior against them, hidden layers against them."""
    cov = norms_coverage(cfg)
    humans = [r for r in cfg.rsa.references if r.startswith(HUMAN)]
    if cov.empty and not humans:
        return []
    lines = ["", "## Human association norms", "",
             "Each `[[norms]]` file, restricted to the vocabulary's cues, goes through the same counts → PPMI → "
             "cosine as the models' behavior. Words without norms are masked (left out of every pair with this "
             "reference), never counted as zero rows."]
    if not cov.empty:
        lines += ["", "Coverage:", "", md_table(cov)]
    bn = res.get("behavior_norms")
    if bn is not None:
        method = "spearman" if "spearman" in set(bn.method) else bn.method.iloc[0]
        d = bn[bn.method == method]
        wide = d.pivot_table(index=["model", "paradigm"], columns="reference", values="rsa", sort=False)
        n = d.pivot_table(index=["model", "paradigm"], columns="reference", values="n_words", sort=False)
        wide.columns = [f"{c} ({METHOD_LABELS.get(method, method)})" for c in wide.columns]
        for c in n.columns:
            wide[f"{c} words"] = n[c].astype(int)
        lines += ["", "Each model's behavioral geometry (PPMI-cosine) against the human one, on the words both "
                      "have:", "", md_table(wide.reset_index())]
    rsa = res.get("rsa")
    if rsa is not None and any(r in set(rsa.reference) for r in humans):
        method = primary_method(cfg, rsa)
        summ = rsa_summary(rsa, method)
        summ = summ[summ.reference.isin(humans)].copy()
        summ["peak"] = [f"{r.peak:.3f} @ {r.peak_layer}/{r.n_layers}" for r in summ.itertuples()]
        lines += ["", f"Hidden layers against the human geometry ({METHOD_LABELS.get(method, method)}, mean over "
                      "layers and peak):", "",
                  md_table(summ[["model", "strategy", "reference", "mean", "peak"]])]
    return lines


def svd_section(cfg: Config, svd: pd.DataFrame) -> list[str]:
    """The SVD / weighting ablation (`svd`): mean over layers 0..L per variant, the clipped
    dimensions, and the published values beside a paper model's."""
    variants = svd_variant_order(svd.variant)
    wide = (svd.groupby(["model", "strategy", "paradigm", "variant"], sort=False).rsa.mean()
            .unstack("variant")[variants].reset_index())
    lines = ["", "## SVD / weighting ablation (Pearson r, sampled pairs, mean over layers 0..L)", "",
             "Hidden centered cosine of every layer, the embeddings included, against the FC and FA geometry "
             "as count or PPMI rows, raw or through TruncatedSVD, each then cosine (METHOD.md §6 \"Ablation\"). "
             f"Words: {int(svd.n_words.iloc[0])} common to hidden, FC and FA; {int(svd.n_pairs.iloc[0]):,} pairs.",
             "", md_table(wide)]
    clipped = svd[svd.dims.notna() & (svd.dims != svd.dims_used)]
    if not clipped.empty:
        pairs = sorted({(int(d), int(u)) for d, u in zip(clipped.dims, clipped.dims_used)})
        lines += ["", "SVD dimensions beyond the matrix size are clipped to min(rows, columns) − 1: "
                      + ", ".join(f"{d} → {u}" for d, u in pairs)
                      + "; variants clipped to the same size are the same computation."]
    matched = published.match(cfg.models)
    if matched:
        pub = published.svd_variants()
        rows = []
        for (model, strategy, paradigm, variant), g in svd.groupby(["model", "strategy", "paradigm", "variant"],
                                                                  sort=False):
            theirs = pub[(pub.paper_model == matched.get(model)) & (pub.strategy == strategy)
                         & (pub.paradigm == paradigm) & (pub.variant == variant)]
            if not theirs.empty:
                rows.append({"model": model, "strategy": strategy, "paradigm": paradigm, "variant": variant,
                             "this run": g.rsa.mean(), "published": theirs.rsa.mean(),
                             "difference": g.rsa.mean() - theirs.rsa.mean()})
        lines += ["", "Beside the published ablation (the paper never ran it for the Task (FC) strategy; "
                      "`pipeline/published/svd_variants/`, CC BY 4.0):", "",
                  md_table(pd.DataFrame(rows)) if rows else "No matching model x strategy cells."]
    return lines


def vs_published(cfg: Config, res: dict[str, pd.DataFrame]) -> list[str]:
    """Markdown lines comparing the run's models that are paper models with the published
    numbers (`pipeline.published`), or one line saying no model matches."""
    matched = published.match(cfg.models)
    if not matched:
        return [f"No model of this run is one of the paper's models ({', '.join(published.PAPER_MODELS)}), so "
                f"there are no published numbers to compare with."]
    lines = [f"Models matched to the paper: {', '.join(f'{k} = {v}' for k, v in matched.items())}. Published: "
             "Schiekiera et al. (ICML 2026), their released result files (`pipeline/published/`, CC BY 4.0). "
             "Differences are this run minus published."]
    if "rsa" in res:
        rsa = res["rsa"]
        method = published.METHOD if published.METHOD in set(rsa.method) else primary_method(cfg, rsa)
        note = "" if method == published.METHOD else (f" This run has no `paper`-method RSA, so its {method} values "
                                                      f"are shown; add \"paper\" to rsa.methods for a like-for-like "
                                                      f"comparison.")
        mine = rsa_summary(rsa, method)
        mine = mine[mine.model.isin(list(matched))]
        pub = published.rsa()
        rows = []
        for r in mine.itertuples(index=False):
            g = pub[(pub.paper_model == matched[r.model]) & (pub.strategy == r.strategy)
                    & (pub.reference == r.reference)]
            if g.empty:
                continue
            peak = g.loc[g.rsa.idxmax()]
            rows.append({"model": r.model, "strategy": r.strategy, "reference": r.reference, "this run": r.mean,
                         "published": g.rsa.mean(), "difference": r.mean - g.rsa.mean(),
                         "peak (this run)": f"{r.peak:.3f} @ {r.peak_layer}/{r.n_layers}",
                         "peak (published)": f"{peak.rsa:.3f} @ {int(peak.layer)}/{int(g.layer.max())}"})
        if method == published.METHOD:
            lines += ["", "The RSA-by-layer figure draws this run's `paper` RSA (solid) beside the published curves "
                          "(dashed): the same statistic, Pearson on 500,000 sampled pairs."]
        else:
            lines += ["", f"The RSA-by-layer figure draws this run's {METHOD_LABELS.get(method, method)} (solid) "
                          f"beside the published Pearson on 500,000 sampled pairs (dashed): not like-for-like; add "
                          f"\"paper\" to rsa.methods to compare the same statistic."]
        lines += ["", f"### RSA, mean over layers ({METHOD_LABELS.get(method, method)} here; published: Pearson on "
                      f"500,000 pairs){note}", ""]
        lines.append(md_table(pd.DataFrame(rows)) if rows else "No matching model x strategy x reference cells.")
    if "nn" in res:
        nn = res["nn"][res["nn"].model.isin(list(matched))]
        pub = published.nn()
        t = nn.groupby(["model", "strategy", "reference", "k"], sort=False).overlap.mean().reset_index()
        rows = []
        for r in t.itertuples(index=False):
            g = pub[(pub.paper_model == matched[r.model]) & (pub.strategy == r.strategy)
                    & (pub.reference == r.reference) & (pub.k == r.k)]
            if not g.empty:
                rows.append({"model": r.model, "strategy": r.strategy, "reference": r.reference, "k": int(r.k),
                             "this run": r.overlap, "published": g["mean"].iloc[0],
                             "difference": r.overlap - g["mean"].iloc[0]})
        if rows:
            lines += ["", "### NN@k overlap, mean over layers", "", md_table(pd.DataFrame(rows))]
    if "regression" in res:
        summary, names = regression_summary(res["regression"])
        summary = summary[summary.model.isin(list(matched))]
        pub = published.regression()
        rows = []
        for r in summary.to_dict("records"):
            for s in names["sets"]:
                g = pub[(pub.paper_model == matched[r["model"]]) & (pub.strategy == r["strategy"])
                        & (pub.feature_set == s)]
                if not g.empty:
                    rows.append({"model": r["model"], "strategy": r["strategy"], "feature set": s,
                                 "this run": r[s], "published": g.mean_r2.iloc[0],
                                 "difference": r[s] - g.mean_r2.iloc[0]})
        if rows:
            lines += ["", "### Regression, mean test R² over layers", "", md_table(pd.DataFrame(rows), ".4f")]
        elif not summary.empty:
            lines += ["", f"Regression: not comparable: the published feature sets "
                          f"({', '.join(sorted(set(pub.feature_set)))}) all include the cross-model consensus, "
                          f"and this run's ({', '.join(names['sets'])}) do not (it needs two or more models "
                          f"with weights)."]
    return lines


# ---------------------------------------------------------------- stage

def _check_up_to_date(cfg: Config, man: Manifest) -> None:
    """Refuse result tables merged under other settings than the config's (a reference added,
    e.g. ``human:<name>``, after rsa ran): the report would silently lack them.

    Raises:
        PipelineError: names the table and the command that brings it up to date.
    """
    from . import regress, rsa

    for stage, table, settings in ((keys.RSA, "rsa", rsa.result_settings),
                                   (keys.REGRESS, "regression", regress.result_settings)):
        recorded = (man.summary(stage) or {}).get("settings")
        if recorded is not None and paths.result_table(cfg, table).exists() and recorded != settings(cfg):
            raise PipelineError(f"{paths.result_table(cfg, table)} was computed with other settings than "
                                f"{cfg.source} has now (e.g. rsa.references, a [[norms]] entry, the {stage} "
                                f"section); bring it up to date with `{keys.command(cfg, stage, force=True)}`"
                                f"{' (then regress)' if stage == keys.RSA else ''}, then run report again")


def run(cfg: Config, opts: Options) -> None:
    """`report` stage: figures and report.md (rebuilt when the results change); refuses
    result tables older than the config's settings (`_check_up_to_date`)."""
    res = load_results(cfg)
    if not res:
        raise PipelineError(f"{paths.results_dir(cfg)}: no results to report; run `{keys.command(cfg, keys.RSA)}` "
                            f"(and regress) first")
    out = paths.report_dir(cfg)
    man = Manifest(cfg.run_dir)
    _check_up_to_date(cfg, man)
    from .validity import TABLES as VALIDITY

    step = man.step(keys.REPORT, {"version": _VERSION, "models": [m.name for m in cfg.models],
                               "strategies": cfg.hidden.strategies},
                    {"results": man.ids(paths.result_table(cfg, t) for t in (*_TABLES, *VALIDITY)),
                     "compliance": compliance(cfg).to_dict("records"),
                     **{k: v for p in PARADIGMS for k, v in get_paradigm(p).report_inputs(cfg).items()},
                     **({"norms": norms_coverage(cfg).to_dict("records")} if cfg.norms else {})}, replace_stale=True)
    if not opts.force and step.done():
        log.info("report: results unchanged, skipped")
        return
    step.start()
    plt = pyplot()
    figures = []
    if "rsa" in res:
        rsa = res["rsa"]
        models, strategies = _order(cfg, rsa)
        method = primary_method(cfg, rsa)
        layer_method = overlay_method(cfg, rsa)
        overlay = fig_rsa_by_layer(plt, rsa, res.get("reliability"), layer_method, models, strategies,
                                    out / FIGURES[0], published.match(cfg.models))
        fig_rsa_by_depth(plt, rsa, method, strategies, out / FIGURES[1])
        figures += FIGURES[:2]
    if "regression" in res:
        models, strategies = _order(cfg, res["regression"])
        fig_regression(plt, res["regression"], models, strategies, out / FIGURES[2])
        figures.append(FIGURES[2])
    if "nn" in res:
        _, strategies = _order(cfg, res["nn"])
        fig_nn(plt, res["nn"], strategies, out / FIGURES[3])
        figures.append(FIGURES[3])
    svd_curves = 0
    if "svd_variants" in res:
        models, strategies = _order(cfg, res["svd_variants"])
        svd_curves = fig_svd(plt, res["svd_variants"], models, strategies, out / SVD_FIGURE,
                              published.match(cfg.models))
        figures.append(SVD_FIGURE)
    from . import validity

    if fig_validity(plt, validity.load(cfg), out / FIGURES[4], cfg.validity.norm_ratio):
        figures.append(FIGURES[4])
    atomic_write_bytes(out / "report.md", _markdown(cfg, res, list(figures)).encode())
    step.complete([out / "report.md", *(out / f for f in figures)],
                  {"figures": list(figures), "headline": headline(cfg),
                   "published_curves": overlay if "rsa" in res else 0,
                   "rsa_by_layer_method": layer_method if "rsa" in res else None,
                   "published_svd_curves": svd_curves})
    log.info("report: %s", out / "report.md")
