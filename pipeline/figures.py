"""Figures of the `report` stage (PNG, matplotlib), and the display conventions they share
with `report.md`: the order, labels and colors of the references and the RSA method labels.

Each `fig_*` function draws one figure from a result table and writes it atomically; the
report stage decides which to draw and names the files.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd

from . import published
from .config import PARADIGMS
from .paradigms import get as get_paradigm
from .paradigms import paper_names
from .store import atomic_write_bytes

REF_ORDER = [*PARADIGMS, "static", "encoder", "consensus"]
_CROSS_COLORS = ("#d62728", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#843c39")
METHOD_LABELS = {"spearman": "Spearman ρ", "pearson": "Pearson r", "paper": "Pearson r, sampled pairs (paper)"}
R2_FLOOR = -0.25


class _Styles(dict):
    """Labels or colors of the references, extended on first use to names that come from the
    config: another model's behavior (`fc:MODEL`, `fa:MODEL`) and human norms (`human:NAME`),
    so every reference a result table holds can be drawn."""

    def __init__(self, base: dict, make):
        super().__init__(base)
        self._make = make

    def __missing__(self, ref: str):
        value = self[ref] = self._make(ref, len(self) - len(REF_ORDER))
        return value


def _label(ref: str, i: int) -> str:
    kind, _, name = ref.partition(":")
    return f"human norms: {name}" if kind == "human" else f"{kind.upper()} of {name} (behavior)"


REF_LABELS = _Styles({**{p: get_paradigm(p).label for p in PARADIGMS},
                      "static": "static vectors", "encoder": "encoder", "consensus": "cross-model consensus"}, _label)
REF_COLORS = _Styles({**{p: get_paradigm(p).color for p in PARADIGMS}, "static": "#2ca02c",
                      "encoder": "#9467bd", "consensus": "#7f7f7f"},
                     lambda ref, i: _CROSS_COLORS[i % len(_CROSS_COLORS)])


def ref_order(names) -> list[str]:
    """References in display order: the registered paradigms (the paper's first), static,
    encoder and consensus, then the ones named in the config (other models' behavior `fc:M`,
    `fa:M`; human norms `human:NAME`)."""
    names = set(names)
    cross = sorted((r for r in names if r not in REF_ORDER),
                   key=lambda r: (r.partition(":")[2], REF_ORDER.index(r.partition(":")[0])
                                  if r.partition(":")[0] in REF_ORDER else len(REF_ORDER), r))
    return [r for r in REF_ORDER if r in names] + cross


def _refs(df: pd.DataFrame) -> list[str]:
    return ref_order(df.reference)


def svd_variant_order(names) -> list[str]:
    """The SVD ablation's variants present in `names`, in the order of `svd.variant_names`."""
    from .svd import variant_names

    dims = sorted({int(v[3:].split("_")[0]) for v in names if v.startswith("svd")})
    return [v for v in variant_names(dims) if v in set(names)]


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), with the report's font sizes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "legend.fontsize": 9,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _save(fig, path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    import matplotlib.pyplot as plt

    plt.close(fig)


def _grid(plt, n_rows: int, n_cols: int, w: float = 3.6, h: float = 2.7):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(w * n_cols + 0.6, h * n_rows + 0.9), squeeze=False,
                             sharey=True)
    return fig, axes


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _grid_cell(ax, title: str, last_row: bool, first_col: bool, xlabel: str, ylabel: str) -> None:
    """Title and integer layer axis of one cell of a model × strategy grid; axis labels only
    on the outer cells, since the grid shares them."""
    ax.set_title(title)
    _integer_x(ax)
    if last_row:
        ax.set_xlabel(xlabel)
    if first_col:
        ax.set_ylabel(ylabel)


def _legend(fig, handles_labels: dict, ncol: int | None = None) -> None:
    if handles_labels:
        fig.legend(list(handles_labels.values()), list(handles_labels), loc="upper center",
                   ncol=ncol or min(len(handles_labels), 5), frameon=False, bbox_to_anchor=(0.5, 1.0))


def fig_rsa_by_layer(plt, rsa: pd.DataFrame, rel: pd.DataFrame | None, method: str, models, strategies, path,
                      matched: dict[str, str] | None = None) -> int:
    """Returns the number of published curves drawn (dashed) beside this run's."""
    d = rsa[rsa.method == method]
    fig, axes = _grid(plt, len(models), len(strategies))
    handles = {}
    drawn = 0
    pub = published.rsa() if matched else None
    for i, model in enumerate(models):
        for j, strategy in enumerate(strategies):
            ax = axes[i, j]
            cell = d[(d.model == model) & (d.strategy == strategy)]
            for ref in _refs(cell):
                g = cell[cell.reference == ref].sort_values("layer")
                (line,) = ax.plot(g.layer, g.rsa, color=REF_COLORS[ref], lw=1.6)
                handles.setdefault(REF_LABELS[ref], line)
                if g.ci_low.notna().any():
                    ax.fill_between(g.layer, g.ci_low, g.ci_high, color=REF_COLORS[ref], alpha=0.18, lw=0)
                if rel is not None and ref in PARADIGMS:
                    r = rel[(rel.model == model) & (rel.paradigm == ref) & (rel.method == method)]
                    if not r.empty and np.isfinite(r.ceiling_high.iloc[0]):
                        lo, hi = r.ceiling_low.iloc[0], r.ceiling_high.iloc[0]
                        ax.axhspan(lo, hi, color=REF_COLORS[ref], alpha=0.07, lw=0)
                        for y in (lo, hi):
                            edge = ax.axhline(y, color=REF_COLORS[ref], lw=0.9, ls="--")
                        handles.setdefault(f"{REF_LABELS[ref].partition(' (')[0]} noise ceiling (split-half)", edge)
            if matched and model in matched:
                theirs = pub[(pub.paper_model == matched[model]) & (pub.strategy == strategy)]
                for ref in _refs(cell):
                    g = theirs[theirs.reference == ref].sort_values("layer")
                    if g.empty:
                        continue
                    (line,) = ax.plot(g.layer, g.rsa, color=REF_COLORS[ref], lw=1.2, ls="--")
                    handles.setdefault("published (paper: Pearson, 500k pairs), dashed", line)
                    drawn += 1
            ax.axhline(0, color="black", lw=0.5)
            _grid_cell(ax, f"{model} · {strategy}", i == len(models) - 1, j == 0, "layer",
                       f"RSA ({METHOD_LABELS.get(method, method)})")
    _legend(fig, handles, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    _save(fig, path)
    return drawn


def fig_validity(plt, v: dict[str, pd.DataFrame], path, threshold: float) -> bool:
    """Position profiles (one panel per model x paradigm) and norm ratio by layer (one per model)."""
    prof, hid = v.get("validity_position"), v.get("validity_hidden")
    panels = [] if prof is None else list(prof.groupby(["model", "paradigm"], sort=False))
    models = [] if hid is None else list(hid.groupby("model", sort=False))
    if not panels and not models:
        return False
    n = len(panels) + len(models)
    fig, axes = plt.subplots(1, n, figsize=(3.8 * n + 0.6, 3.2), squeeze=False)
    for ax, ((model, paradigm), g) in zip(axes[0], panels):
        scored = get_paradigm(paradigm).position_profile == "probs"
        s = int(g.n_candidates.max()) if scored else int(g.groupby("n_candidates").n.sum().idxmax())
        g = g[g.n_candidates == s].sort_values("position")
        label = "mean first-pick probability" if scored else "share of picks"
        ax.bar(g.position, g.share, color=REF_COLORS[paradigm], alpha=0.8, label=label)
        if g.share_debiased.notna().any():
            ax.plot(g.position, g.share_debiased, color="black", marker="o", ms=3, lw=1.2, label="after debiasing")
        ax.axhline(1 / s, color="grey", ls="--", lw=1, label="uniform")
        ax.set_title(f"{model} · {REF_LABELS[paradigm].partition(' (')[0]} ({s} candidates)")
        ax.set_xlabel("list position")
        ax.set_ylabel("share")
        _integer_x(ax)
        ax.legend(frameon=False, fontsize=8)
    for ax, (model, g) in zip(axes[0][len(panels):], models):
        for strategy, h in g.groupby("strategy", sort=False):
            h = h.sort_values("layer")
            ax.plot(h.layer, h.norm_ratio, marker="o", ms=3, lw=1.4, label=strategy)
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"{threshold:g}x (outlier)")
        ax.set_yscale("log")
        ax.set_title(f"{model} · largest / median word-vector norm")
        ax.set_xlabel("layer")
        _integer_x(ax)
        ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return True


def fig_rsa_by_depth(plt, rsa: pd.DataFrame, method: str, strategies, path):
    d = rsa[rsa.method == method]
    grid = np.linspace(0, 1, 21)[1:]
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.0 * len(strategies) + 0.6, 3.4), squeeze=False,
                             sharey=True)
    handles = {}
    for j, strategy in enumerate(strategies):
        ax = axes[0, j]
        cell = d[d.strategy == strategy]
        for ref in _refs(cell):
            curves = []
            for _, g in cell[cell.reference == ref].groupby("model"):
                g = g.sort_values("layer")
                curves.append(np.interp(grid, g.layer / g.n_layers, g.rsa))
            curves = np.array(curves)
            mean = curves.mean(axis=0)
            (line,) = ax.plot(grid, mean, color=REF_COLORS[ref], lw=1.8)
            handles.setdefault(REF_LABELS[ref], line)
            if len(curves) > 1:
                sd = curves.std(axis=0)
                ax.fill_between(grid, mean - sd, mean + sd, color=REF_COLORS[ref], alpha=0.15, lw=0)
        n_models = cell.model.nunique()
        ax.set_title(f"{strategy} (mean of {n_models} model{'s' if n_models != 1 else ''})")
        ax.set_xlabel("relative depth (layer / L)")
        ax.set_xlim(0, 1)
        ax.axhline(0, color="black", lw=0.5)
        if j == 0:
            ax.set_ylabel(f"RSA ({METHOD_LABELS.get(method, method)})")
    _legend(fig, handles)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    _save(fig, path)


def fig_regression(plt, reg: pd.DataFrame, models, strategies, path):
    sets = list(dict.fromkeys(reg.feature_set))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(sets)))
    fig, axes = _grid(plt, len(models), len(strategies))
    handles = {}
    for i, model in enumerate(models):
        for j, strategy in enumerate(strategies):
            ax = axes[i, j]
            cell = reg[(reg.model == model) & (reg.strategy == strategy)]
            for s, color in zip(sets, colors):
                g = cell[cell.feature_set == s].groupby("layer").r2_test.agg(["mean", "min", "max"])
                if g.empty:
                    continue
                lw = 2.2 if s == sets[-1] else 1.3
                (line,) = ax.plot(g.index, g["mean"], color=color, lw=lw)
                handles.setdefault(s, line)
                if cell.seed.nunique() > 1 and s == sets[-1]:
                    band = ax.fill_between(g.index, g["min"], g["max"], color=color, alpha=0.2, lw=0)
                    handles.setdefault(f"{s}: range over seeds", band)
            _grid_cell(ax, f"{model} · {strategy}", i == len(models) - 1, j == 0, "layer", "held-out test R²")
    low = reg.groupby(["model", "strategy", "layer", "feature_set"]).r2_test.min().min()
    if low < R2_FLOOR:
        high = reg.groupby(["model", "strategy", "layer", "feature_set"]).r2_test.max().max()
        axes[0, 0].set_ylim(R2_FLOOR, min(1.0, high) + 0.05)
        fig.text(0.99, 0.005, f"y axis clipped at {R2_FLOOR} (lowest R² {low:.2f})", ha="right", va="bottom",
                 fontsize=8, color="0.4")
    _legend(fig, handles)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.55 / fig.get_figheight()))
    _save(fig, path)


def fig_nn(plt, nn: pd.DataFrame, strategies, path):
    fig, axes = plt.subplots(1, len(strategies), figsize=(4.0 * len(strategies) + 0.6, 3.4), squeeze=False,
                             sharey=True)
    handles = {}
    for j, strategy in enumerate(strategies):
        ax = axes[0, j]
        cell = nn[nn.strategy == strategy]
        for ref in _refs(cell):
            g = cell[cell.reference == ref].groupby("k").overlap.mean()
            (line,) = ax.plot(g.index, g.values, marker="o", ms=4, color=REF_COLORS[ref], lw=1.6)
            handles.setdefault(REF_LABELS[ref], line)
        ks = sorted(cell.k.unique())
        n_words = int(cell.n_words.max())
        (chance,) = ax.plot(ks, [k / (n_words - 1) for k in ks], color="0.5", lw=1, ls=":")
        handles.setdefault("chance, k / (N - 1)", chance)
        ax.set_xscale("log")
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.minorticks_off()
        ax.set_title(f"{strategy} (mean over layers and models)")
        ax.set_xlabel("k (neighbours)")
        if j == 0:
            ax.set_ylabel("NN@k overlap")
    _legend(fig, handles)
    fig.tight_layout(rect=(0, 0, 1, 0.88))
    _save(fig, path)


def fig_svd(plt, svd: pd.DataFrame, models, strategies, path, matched: dict[str, str]) -> int:
    """Ablation by layer (0..L): one panel per model x paradigm x strategy, one line per
    variant, the published values dashed beside a paper model's. Returns the dashed curves drawn."""
    variants = svd_variant_order(svd.variant)
    colors = dict(zip(variants, _plt_colors(len(variants))))
    rows = [(m, p) for m in models for p in paper_names() if ((svd.model == m) & (svd.paradigm == p)).any()]
    fig, axes = _grid(plt, len(rows), len(strategies))
    pub = published.svd_variants() if matched else None
    handles, drawn = {}, 0
    for i, (model, paradigm) in enumerate(rows):
        for j, strategy in enumerate(strategies):
            ax = axes[i, j]
            cell = svd[(svd.model == model) & (svd.paradigm == paradigm) & (svd.strategy == strategy)]
            for v in variants:
                g = cell[cell.variant == v].sort_values("layer")
                if not g.empty:
                    (line,) = ax.plot(g.layer, g.rsa, color=colors[v], lw=1.5)
                    handles.setdefault(v, line)
                if model in matched:
                    t = pub[(pub.paper_model == matched[model]) & (pub.strategy == strategy)
                            & (pub.paradigm == paradigm) & (pub.variant == v)].sort_values("layer")
                    if not t.empty:
                        (line,) = ax.plot(t.layer, t.rsa, color=colors[v], lw=1.0, ls="--")
                        handles.setdefault("published (paper), dashed", line)
                        drawn += 1
            ax.axhline(0, color="black", lw=0.5)
            _grid_cell(ax, f"{model} · {get_paradigm(paradigm).short} · {strategy}", i == len(rows) - 1, j == 0,
                       "layer (0 = embeddings)", "RSA (Pearson r, sampled pairs)")
    _legend(fig, handles, ncol=5)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.7 / fig.get_figheight()))
    _save(fig, path)
    return drawn


def _plt_colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return [cmap(i % 10) for i in range(n)]
