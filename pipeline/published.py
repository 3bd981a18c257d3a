"""The paper's published results, for laying a run's own numbers beside them.

`pipeline/published/` ships the authors' per-layer RSA, NN@k, regression summaries and SVD /
weighting ablation (see
its README for the source and the CC BY 4.0 attribution). A model of a run matches a
paper model when its name or its `path` (a Hugging Face id or a folder named like one) is
one of that model's names; `match` says which. All published RSA values are Pearson
correlations on 500,000 sampled pairs, i.e. the pipeline's `paper` method.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

DATA = Path(__file__).resolve().parent / "published"
METHOD = "paper"

PAPER_MODELS: dict[str, tuple[str, ...]] = {
    "Falcon3-10B-Instruct": ("Falcon3-10B-Instruct", "tiiuae/Falcon3-10B-Instruct"),
    "gemma-2-9b-it": ("gemma-2-9b-it", "google/gemma-2-9b-it"),
    "Llama-3.1-8B-Instruct": ("Llama-3.1-8B-Instruct", "Meta-Llama-3.1-8B-Instruct",
                              "meta-llama/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct"),
    "Mistral-7B-Instruct-v0.2": ("Mistral-7B-Instruct-v0.2", "mistralai/Mistral-7B-Instruct-v0.2"),
    "Mistral-Nemo-Instruct-v1": ("Mistral-Nemo-Instruct-v1", "Mistral-Nemo-Instruct-2407",
                                 "mistralai/Mistral-Nemo-Instruct-2407"),
    "phi-4": ("phi-4", "microsoft/phi-4"),
    "Qwen2.5-7B-Instruct": ("Qwen2.5-7B-Instruct", "Qwen/Qwen2.5-7B-Instruct"),
    "rnj-1-instruct": ("rnj-1-instruct", "EssentialAI/rnj-1-instruct"),
}
"""Paper model alias -> the names it goes by (alias, HF id, the project's config name)."""

STRATEGIES = {"template": "meaning", "forced_choice": "task_fc", "free_association": "task_fa",
              "averaged": "averaged"}
_RSA_REFS = {"pearson_fc_PPMI": "fc", "pearson_fa_PPMI": "fa", "pearson_fasttext": "static",
             "pearson_bert": "encoder", "pearson_crossmodel": "consensus"}
_NN_REFS = {"tournament_PPMI": "fc", "fa_PPMI": "fa", "fasttext": "static", "bert": "encoder",
            "crossmodel": "consensus"}
_REG_SETS = {"cross": "base+cross", "cross_fc": "base+cross+fc", "cross_fa": "base+cross+fa",
             "full": "base+cross+fc+fa"}


def _names(text: str) -> set[str]:
    p = str(text).rstrip("/")
    return {p.lower(), p.rsplit("/", 1)[-1].lower()}


def match(models) -> dict[str, str]:
    """Run model name -> paper alias, for the models of a run that are paper models.

    Args:
        models: `ModelCfg` entries (name and path are used).
    """
    known = {n.lower(): alias for alias, names in PAPER_MODELS.items() for n in names}
    known.update({n.rsplit("/", 1)[-1].lower(): alias for alias, names in PAPER_MODELS.items() for n in names})
    out = {}
    for m in models:
        for key in _names(m.name) | _names(m.path):
            if key in known:
                out[m.name] = known[key]
                break
    return out


@functools.cache
def rsa() -> pd.DataFrame:
    """Published per-layer RSA, long form: paper_model, strategy, layer, reference, rsa."""
    d = pd.read_csv(DATA / "rsa_layerwise_pairs500000.csv")
    d = d.rename(columns={"model": "paper_model"})
    d["strategy"] = d.prompt.map(STRATEGIES)
    long = d.melt(id_vars=["paper_model", "strategy", "layer"], value_vars=list(_RSA_REFS),
                  var_name="reference", value_name="rsa")
    long["reference"] = long.reference.map(_RSA_REFS)
    return long


@functools.cache
def nn() -> pd.DataFrame:
    """Published NN@k: paper_model, strategy, k, reference, mean (over layers), max, best_layer."""
    d = pd.read_csv(DATA / "nn_overlap_per_k.csv")
    rows = []
    for r in d.itertuples(index=False):
        for col, ref in _NN_REFS.items():
            rows.append({"paper_model": r.model, "strategy": STRATEGIES[r.prompt], "k": int(r.k), "reference": ref,
                         "mean": getattr(r, f"nn_{col}_mean"), "max": getattr(r, f"nn_{col}_max"),
                         "best_layer": getattr(r, f"nn_{col}_best_layer")})
    return pd.DataFrame(rows)


@functools.cache
def regression() -> pd.DataFrame:
    """Published regression summary: paper_model, strategy, feature_set, mean_r2, peak_r2, best_layer."""
    d = pd.read_csv(DATA / "regression_summary.csv")
    rows = []
    for r in d.itertuples(index=False):
        for col, name in _REG_SETS.items():
            rows.append({"paper_model": r.model, "strategy": STRATEGIES[r.prompt], "feature_set": name,
                         "mean_r2": getattr(r, f"mean_r2_{col}"), "peak_r2": getattr(r, f"peak_r2_{col}"),
                         "best_layer": int(r.best_layer)})
    return pd.DataFrame(rows)


_SVD_TASKS = {"ForcedChoice": "fc", "FreeAssociation": "fa"}


@functools.cache
def svd_variants() -> pd.DataFrame:
    """Published SVD / weighting ablation (layer 0 included): paper_model, strategy, paradigm,
    variant, layer, rsa, n_words, n_pairs. Its Task (FC) strategy was never run (METHOD.md §6)."""
    frames = [pd.read_csv(p) for p in sorted((DATA / "svd_variants").glob("*.csv"))]
    d = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"paper_model": d.model, "strategy": d.prompt.map(STRATEGIES),
                         "paradigm": d.task.map(_SVD_TASKS), "variant": d.variant, "layer": d.layer.astype(int),
                         "rsa": d.pearson, "n_words": d.n_common_words, "n_pairs": d.n_pairs})
