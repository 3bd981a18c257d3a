"""A small synthetic run directory in the documented upstream formats, for the analysis
stages (rsa, regress, report, export): vocab.txt, trial logs (scored FC ones too when the
config has fc_scored), aggregated matrices, hidden stacks, baselines and consensus, with a
shared latent geometry so the analyses have signal; and human norms in SWOW's CSV layout
(`write_swow`) drawn from the same geometry."""

from __future__ import annotations

import zlib

import numpy as np
import pyarrow as pa

from pipeline import paths
from pipeline.aggregate import aggregate_one
from pipeline.logs import SCORED_SCHEMA, write_part
from pipeline.manifest import Manifest
from pipeline.options import Options
from pipeline.similarity import centered_cosine
from pipeline.trials import fc_group_sizes

WORDS = ["dog", "cat", "house", "tree", "water", "music", "money", "car", "bread", "river",
         "doctor", "school", "window", "garden", "city", "horse", "paper", "king", "ship", "milk",
         "chair", "table", "apple", "mountain", "church", "friend", "night", "road", "fire", "book"]


def prepare(cfg):
    """Run the vocab and trials stages of `cfg` (what behave needs); returns `cfg`."""
    from pipeline import trials, vocab

    vocab.run(cfg, Options())
    trials.run(cfg, Options())
    return cfg


def make_config_at(tmp):
    """`conftest.make_config` for fixtures wider than one test (module-scoped run dirs)."""
    from pipeline.config import from_dict

    def _make(**sections):
        (tmp / "words.txt").write_text("\n".join(WORDS) + "\n")
        raw = {"experiment": {"name": "t", "data_dir": str(tmp / "data")},
               "vocab": {"source": str(tmp / "words.txt"), "size": 20}, "behave": {"backend": "fake"}}
        for key, value in sections.items():
            raw[key] = {**raw[key], **value} if isinstance(value, dict) and isinstance(raw.get(key), dict) else value
        return from_dict(raw, source="test.toml")
    return _make


def config(make_config, models=("m1", "m2"), n_words: int = 30, **sections):
    """A config for a synthetic run: every analysis knob small, overridable per section.

    A model is a name (a model with weights) or a `models[]` table, e.g. ``{"name": "gpt"}``
    for a behavior-only one (no path: logs and matrices, no hidden states)."""
    base = {
        "models": [m if isinstance(m, dict) else {"name": m, "path": "unused"} for m in models],
        "vocab": {"size": n_words},
        "trials": {"fc_candidates": 4, "fa_runs": 6},
        "hidden": {"strategies": ["meaning", "task_fc"]},
        "baselines": {"static": "package:static", "static_name": "glove", "encoder": "package:enc",
                      "encoder_name": "minilm"},
        "rsa": {"methods": ["spearman", "pearson", "paper"], "paper_pairs": 200, "nn_k": [3, 5],
                "bootstrap": 20},
        "regress": {"seeds": [0, 1], "train_pairs": 150, "cv": 3},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return make_config(**base)


def _log_row(trial_id, cue_idx, cue, picks, *, run=0, final=True, status="ok", candidates=()):
    return {"trial_id": trial_id, "cue_idx": cue_idx, "cue": cue, "candidates": list(candidates), "run": run,
            "attempt": 0 if final else 1, "attempt_kind": "main", "raw_output": "output: " + ", ".join(picks),
            "picks": list(picks), "extracted": list(picks), "status": status, "final": final, "seed": 0,
            "prompt_sha": "x", "n_prompt_tokens": 10, "n_output_tokens": 4, "latency_s": 0.01}


def _scored_row(trial_id, cue_idx, cue, candidates, logprobs):
    lp = np.asarray(logprobs, dtype=np.float64)
    p = np.exp(lp - lp.max())
    return {"trial_id": trial_id, "cue_idx": cue_idx, "cue": cue, "candidates": list(candidates),
            "logprobs": lp.tolist(), "probs": (p / p.sum()).tolist(), "n_tokens": [2] * len(candidates),
            "status": "ok", "final": True, "prompt_sha": "x", "n_prompt_tokens": 100,
            "n_output_tokens": 2 * len(candidates), "latency_s": 0.01}


def _write_logs(cfg, model: str, words: list[str], z: np.ndarray, rng) -> None:
    n = len(words)
    aff = z @ z.T
    k = cfg.trials.fc_candidates
    m = len(fc_group_sizes(n, k))
    rows, scored = [], []
    srng = np.random.default_rng(zlib.crc32(model.encode()))
    for c in range(n):
        others = np.array([j for j in range(n) if j != c])
        perm = rng.permutation(others)
        for g, cand in enumerate(np.array_split(perm, m)):
            score = aff[c, cand] + rng.gumbel(size=cand.size)
            picks = [words[j] for j in cand[np.argsort(-score)[:2]]]
            if g == 0:
                rows.append(_log_row(c * m + g, c, words[c], ["??"], final=False, status="unparseable",
                                     candidates=[words[j] for j in cand]))
            rows.append(_log_row(c * m + g, c, words[c], picks, candidates=[words[j] for j in cand]))
            scored.append(_scored_row(c * m + g, c, words[c], [words[j] for j in cand],
                                      aff[c, cand] - 3 + 0.5 * srng.standard_normal(cand.size)))
    write_part(paths.behavior_dir(cfg, model, "fc"), pa.Table.from_pylist(rows))
    if "fc_scored" in cfg.paradigms_of(model):
        write_part(paths.behavior_dir(cfg, model, "fc_scored"), pa.Table.from_pylist(scored, schema=SCORED_SCHEMA))
    rows = []
    for c in range(n):
        p = np.exp(2 * aff[c])
        p[c] = 0
        for r in range(cfg.trials.fa_runs):
            idx = rng.choice(n, size=4, replace=False, p=p / p.sum())
            picks = [words[j] for j in idx] + [f"zz{(c + r) % 7}"]
            if r == 1:
                picks[-1] = words[c]
            rows.append(_log_row(c * cfg.trials.fa_runs + r, c, words[c], picks, run=r))
    write_part(paths.behavior_dir(cfg, model, "fa"), pa.Table.from_pylist(rows))


def build(cfg, n_layers: int = 4, dim: int = 12, seed: int = 0, missing_static=(5,)) -> dict:
    """Write a complete synthetic run for `cfg` (models, strategies and vocab size from it).

    Returns:
        {"words", "z" (latent N x 4), "hidden" {(model, strategy): stack}, "static", "encoder"}.
    """
    rng = np.random.default_rng(seed)
    n = cfg.vocab.size
    words = WORDS[:n]
    path = paths.vocab_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(words) + "\n")
    z = rng.standard_normal((n, 4))
    hidden = {}
    for mi, model in enumerate(m.name for m in cfg.models):
        _write_logs(cfg, model, words, z, rng)
        for p in ("fc", "fa", *(["fc_scored"] if "fc_scored" in cfg.paradigms_of(model) else [])):
            aggregate_one(cfg, model, p, words)
        for strategy in cfg.hidden.strategies if not cfg.model(model).behavior_only else ():
            offset = 3 * rng.standard_normal(dim)
            stack = np.empty((n_layers + 1, n, dim), dtype=np.dtype(cfg.hidden.store_dtype))
            for layer in range(n_layers + 1):
                mix = rng.standard_normal((4, dim))
                noise = (0.3 + 0.4 * layer / n_layers + 0.2 * mi) * rng.standard_normal((n, dim))
                stack[layer] = z @ mix + noise + offset
            out = paths.hidden_file(cfg, model, strategy)
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, stack)
            hidden[model, strategy] = stack
    base = paths.baselines_dir(cfg)
    (base / "consensus").mkdir(parents=True, exist_ok=True)
    static = (z @ rng.standard_normal((4, 8)) + 0.8 * rng.standard_normal((n, 8))).astype(np.float32)
    static[list(missing_static)] = np.nan
    encoder = (z @ rng.standard_normal((4, 6)) + 1.2 * rng.standard_normal((n, 6))).astype(np.float32)
    np.save(base / f"{cfg.baselines.static_name}.npy", static)
    np.save(base / f"{cfg.baselines.encoder_name}.npy", encoder)
    models = [m.name for m in cfg.models if not m.behavior_only]
    if len(models) > 1:
        for model in models:
            for strategy in cfg.hidden.strategies:
                mats = [centered_cosine(hidden[o, strategy][layer].astype(np.float32))
                        for o in models if o != model for layer in range(1, n_layers + 1)]
                out = base / "consensus" / model / f"{strategy}.npy"
                out.parent.mkdir(parents=True, exist_ok=True)
                np.save(out, np.mean(mats, axis=0).astype(np.float32))
    return {"words": words, "z": z, "hidden": hidden, "static": static, "encoder": encoder}


def write_swow(path, words: list[str], z: np.ndarray, seed: int = 1, missing=(3, 11), participants: int = 12,
               outside=("zebra", "quasar")) -> list[str]:
    """Human norms in SWOW's CSV layout (R's write.csv: quoted strings, unquoted NA, a row-name
    column first) from the latent geometry `z`: each cue's responses are drawn by affinity from
    the other words and a few words outside the vocabulary; R2/R3 are sometimes missing (NA,
    "No more responses"). Cues `missing` (indices) get no rows, cues `outside` are not in the
    vocabulary. Returns the words that have norms."""
    rng = np.random.default_rng(seed)
    n = len(words)
    aff = z @ z.T
    lines = ['"","id","participantID","age","gender","nativeLanguage","country","education","created_at","cue",'
             '"R1","R2","R3"']
    extra = ["thing", "stuff", "nature"]
    row = 0
    cues = [(i, w) for i, w in enumerate(words) if i not in set(missing)] + [(None, w) for w in outside]
    for i, cue in cues:
        for _ in range(participants):
            if i is None:
                resp = list(rng.choice(extra, size=3))
            else:
                p = np.exp(1.5 * aff[i])
                p[i] = 0
                resp = [words[j] for j in rng.choice(n, size=3, replace=False, p=p / p.sum())]
                if rng.random() < 0.2:
                    resp[2] = str(rng.choice(extra))
            cells = [f'"{r}"' for r in resp]
            u = rng.random()
            if u < 0.15:
                cells[1:] = ["NA", '"No more responses"']
            elif u < 0.3:
                cells[2] = "NA"
            row += 1
            lines.append(f'"{row}",{row},{1000 + row},30,"Fe","United States","United States",3,'
                         f'"2018-01-01 10:00:00","{cue}",' + ",".join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [w for i, w in enumerate(words) if i not in set(missing)]


def record_behave(cfg, compliance=(0.9, 0.8)) -> None:
    """Manifest summaries shaped like the behave stage's (for the report's compliance table)."""
    man = Manifest(cfg.run_dir)
    for model in (m.name for m in cfg.models):
        for paradigm, c in zip(("fc", "fa"), compliance):
            man.complete(f"behave/{model}/{paradigm}", "synthetic",
                         {"n_trials": 100, "status": {"ok": int(100 * c)}, "compliance": c})
