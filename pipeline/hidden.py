"""`hidden` stage: layerwise hidden-state vectors of every vocabulary word (METHOD.md §4).

For each model and extraction strategy, each word gets one vector per layer (layer 0 =
embedding output, then every block), stored ``(L+1) x N x dim`` in vocabulary order at
`hidden/<model>/<strategy>.npy`, as float32 by default (`hidden.store_dtype`: every pooled
value as computed; ``float16`` halves the size and refuses values beyond its range instead of
clipping them):

- ``meaning``, ``task_fc``, ``task_fa``: one prompt per word (`prompts.hidden_prompt`).
- ``averaged``: the mean over up to `hidden.max_sentences` corpus sentences per word
  (`hidden.sentences`, built by the `sentences` stage or supplied; see `sentences.load_sentences`).

Texts are raw (no chat template) and tokenized with the tokenizer's default special tokens;
outside paper mode a text that starts with a non-special token gets the sink guard
(`hidden.sink_guard`, `pooling.guard_tokens`: the model's BOS, else `hidden.sink_prefix`) in
front, so no word is pooled at position 0, the attention sink. A word's vector in one text
is the mean over the tokens whose character span overlaps the word's last occurrence
(`rules.Rules.locate`: by default case-insensitive on word boundaries of any script; in
paper mode the authors' case-sensitive ``str.rfind``, which can land inside a longer word,
e.g. "art" in "start"), or over all non-special tokens (by id; default rules: never position
0 either) when the word is not found. A word without any sentence (``averaged``) is
represented by the meaning template by default and by the bare word in paper mode, as the
authors did.

The paper runs one prompt per forward pass. Here prompts run in right-padded batches
with an attention mask: with right padding every real token keeps its position and
attends only to real tokens, so the pooled vectors equal the one-at-a-time ones up to
float rounding (tested). Finished word blocks go into a ``.partial`` memory-mapped .npy
with a progress file beside it, so an interrupted run continues at the next block; the
file is renamed into place when complete.

Word location and pooling live in `pooling`, sentence files and harvesting in `sentences`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from . import keys, paths, sentences
from .config import Config, ModelCfg
from .errors import PipelineError
from .manifest import Manifest, StageLock, fingerprint
from .options import Options, select
from .pooling import Pooler, load_model, resolve_device
from .prompts import HIDDEN_TEMPLATES, PROMPTS_DIR, hidden_prompt
from .rules import Rules
from .sentences import load_sentences
from .store import atomic_write_bytes, load_npy, sha256_file
from .vocab import load_run_vocab, vocab_fingerprint

log = logging.getLogger(__name__)

_VERSION = 2
_BLOCK_WORDS = 128
_FP16_MAX = float(np.finfo(np.float16).max)
STORE_DTYPES = {"float32": np.float32, "float16": np.float16}


# ---------------------------------------------------------------- stage

def run(cfg: Config, opts: Options) -> None:
    """Extract hidden states for every model x strategy of the config (or those `opts` picks).

    Completed outputs are skipped; an interrupted extraction continues at its next word
    block; a finished one whose file is missing or damaged is extracted again. Models are
    loaded only when some strategy still has work.
    """
    words, todo, sentences = pending(cfg, opts)
    force = opts.force
    for name in dict.fromkeys(n for n, _, _ in todo):
        tok, model = load_model(cfg.model(name), cfg.hidden.dtype, cfg.hidden.device)
        pooler = make_pooler(cfg, tok, model)
        for _, strategy, fp in (cell for cell in todo if cell[0] == name):
            extract(cfg, name, strategy, words, pooler, fp, sentences if strategy == "averaged" else None,
                    force=force)


def make_pooler(cfg: Config, tok, model) -> Pooler:
    """The run's pooler: its batch size, rules and sink guard (`Rules.sink_guard`)."""
    h = cfg.hidden
    rules = Rules.of(cfg)
    return Pooler(tok, model, h.batch_size, rules, sink_guard=rules.sink_guard(h.sink_guard),
                  sink_prefix=h.sink_prefix)


def pending(cfg: Config, opts: Options) -> tuple[list[str], list[tuple[str, str, str]], list[list[str]] | None]:
    """The run's words, the (model, strategy, fingerprint) cells still to extract, and the
    sentences per word when the averaged strategy is selected (the `sentences` stage runs first
    if the file is missing,
    since its fingerprint covers the sentence file).

    Shared by the local stage and the Ray fan-out, so both skip exactly the same work;
    complete cells are logged and left out.
    """
    sel = select(cfg, opts)
    models, strategies = sel.models, sel.strategies
    words = load_run_vocab(cfg)
    resolve_device(cfg.hidden.device)
    sentences = sentences_for(cfg, words) if "averaged" in strategies else None
    vfp = vocab_fingerprint(cfg)
    man = Manifest(cfg.run_dir)
    force = opts.force
    todo = []
    for name in models:
        mcfg = cfg.model(name)
        if mcfg.behavior_only:
            log.info("hidden %s: behavior-only model (no models[].path, answers from %s): no hidden states, "
                     "skipped", name, mcfg.base_url or cfg.backend_of(mcfg))
            continue
        for strategy in strategies:
            fp = _fingerprint(cfg, mcfg, strategy, vfp)
            if man.step(keys.hidden(name, strategy), fp, force=force).done():
                log.info("hidden %s/%s: complete, skipping", name, strategy)
                continue
            todo.append((name, strategy, fp))
    return words, todo, sentences


def sentences_for(cfg: Config, words: list[str]) -> list[list[str]]:
    """Sentences per word from `hidden.sentences`. When `hidden.harvest` names sources, the
    `sentences` stage builds the file first, or checks that the one there was harvested for
    this vocabulary and these settings (a file shared by experiments must not serve a
    vocabulary it was not harvested for; README "Scaling up")."""
    h = cfg.hidden
    path = Path(h.sentences)
    if h.harvest:
        sentences.build(cfg)
    elif not path.exists():
        raise sentences.missing_file_error(cfg)
    return load_sentences(path, words, h.max_sentences, Rules.of(cfg))


def _fingerprint(cfg: Config, mcfg: ModelCfg, strategy: str, vocab_fp: str) -> str:

    h = cfg.hidden
    rules = Rules.of(cfg)
    guard = rules.sink_guard(h.sink_guard)
    inputs = {"version": _VERSION, "vocab": vocab_fp, "model": mcfg.path, "revision": mcfg.revision,
              "strategy": strategy, "dtype": h.dtype, "rules": rules.name, "store_dtype": h.store_dtype,
              "sink_guard": guard, **({"sink_prefix": h.sink_prefix} if guard in ("auto", "prefix") else {}),
              "template": sha256_file(PROMPTS_DIR / f"{HIDDEN_TEMPLATES.get(strategy, 'hidden_meaning')}.txt")}
    if strategy == "averaged":
        inputs.update({"sentences": sha256_file(h.sentences), "max_sentences": h.max_sentences})
    if mcfg.fixes_mistral_regex("hidden"):
        inputs["fix_mistral_regex"] = True
    return fingerprint(inputs)


def _texts(strategy: str, words: list[str], sentences: list[list[str]] | None,
           rules: Rules | None = None) -> tuple[list[list[str]], list[str]]:
    """Texts per word and the words without sentences that fell back to
    `Rules.averaged_fallback` (the meaning template, or the bare word in paper mode)."""
    if strategy != "averaged":
        return [[hidden_prompt(strategy, w)] for w in words], []
    bare = (rules or Rules()).averaged_fallback == "word"
    texts, fallback = [], []
    for w, sents in zip(words, sentences):
        if sents:
            texts.append(sents)
        else:
            texts.append([w if bare else hidden_prompt("meaning", w)])
            fallback.append(w)
    return texts, fallback


def extract(cfg: Config, model_name: str, strategy: str, words: list[str], pooler: Pooler, fp: str,
            sentences: list[list[str]] | None = None, force: bool = False) -> dict:
    """Extract one strategy for one model into `paths.hidden_file`, resumably.

    Takes a lock on the output, so a second run of the same cell is refused instead of
    racing on the partial file. Words with no sentence (``averaged``) use
    `Rules.averaged_fallback`; their names and number go into the manifest summary and the
    sidecar json.

    Args:
        force: replace an extraction made with other settings (`--force`).

    Returns:
        The summary recorded in the manifest.

    Raises:
        PipelineError: another run holds the cell, or the model produced NaN or inf.
    """
    out = paths.hidden_file(cfg, model_name, strategy)
    man = Manifest(cfg.run_dir)
    step = man.step(keys.hidden(model_name, strategy), fp, force=force)
    with StageLock(out.with_name(f".{out.stem}.lock"), f"hidden states of {model_name}/{strategy}"):
        _remove_stale_temps(out)
        if step.done(quiet=True):
            log.info("hidden %s/%s: completed by another run meanwhile, skipping", model_name, strategy)
            return man.summary(step.key) or {}
        return _extract(cfg, step, model_name, strategy, words, pooler, sentences)


def _remove_stale_temps(out: Path) -> None:
    """Delete the temp files (`store.atomic_write`'s ``.<name>.tmp-<pid>``) that a killed
    extraction of this cell left beside its output, its progress file and its sidecar. Called
    under the cell's lock, so no live writer of these files exists."""
    names = (out.name, f"{out.name}.progress.json", paths.sidecar(out).name)
    stale = [f for n in names for f in out.parent.glob(f".{n}.tmp-*")] if out.parent.is_dir() else []
    for f in stale:
        f.unlink(missing_ok=True)
    if stale:
        log.info("hidden: removed %d temp file(s) left by a killed run: %s", len(stale),
                 ", ".join(f.name for f in stale[:3]))


def _extract(cfg, step, model_name, strategy, words, pooler, sentences) -> dict:
    import torch

    out = paths.hidden_file(cfg, model_name, strategy)
    partial = out.with_name(out.name + ".partial")
    progress_path = out.with_name(out.name + ".progress.json")
    fp = step.fp
    step.start()
    rules = Rules.of(cfg)
    texts, fallback = _texts(strategy, words, sentences, rules)
    if fallback:
        log.warning("hidden %s/%s: %d words have no sentence in %s and use %s instead: %s",
                    model_name, strategy, len(fallback), cfg.hidden.sentences,
                    "the bare word" if rules.averaged_fallback == "word" else "the meaning template",
                    ", ".join(fallback[:20]) + (" ..." if len(fallback) > 20 else ""))
    store = STORE_DTYPES[cfg.hidden.store_dtype]
    done, n_layers, dim = _resume_point(partial, progress_path, fp, len(words))
    if n_layers is None:
        probe = pooler.encode([words[0]], [words[0]])
        _, vec = next(pooler.pooled(probe))
        n_layers, dim = vec.shape[0], vec.shape[2]
        out.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=store, shape=(n_layers, len(words), dim)).flush()
        _save_progress(progress_path, {"fingerprint": fp, "done": 0, "shape": [n_layers, len(words), dim],
                                       "not_found": 0, "texts": 0, "guarded": 0})
        done = 0
    elif done:
        log.info("hidden %s/%s: resuming at word %d of %d", model_name, strategy, done, len(words))
    state = json.loads(progress_path.read_text())
    mm = np.load(partial, mmap_mode="r+")
    t0 = time.perf_counter()
    for i0 in range(done, len(words), _BLOCK_WORDS):
        i1 = min(i0 + _BLOCK_WORDS, len(words))
        owners, flat_texts, flat_words = [], [], []
        for j in range(i0, i1):
            owners += [j - i0] * len(texts[j])
            flat_texts += texts[j]
            flat_words += [words[j]] * len(texts[j])
        before, guarded_before = pooler.not_found, pooler.guarded
        encoded = pooler.encode(flat_texts, flat_words)
        sums = torch.zeros((n_layers, i1 - i0, dim), dtype=torch.float32)
        owners_t = torch.tensor(owners)
        for idx, vec in pooler.pooled(encoded):
            sums.index_add_(1, owners_t[idx], vec)
        n_per_word = torch.bincount(owners_t, minlength=i1 - i0).to(torch.float32)
        block = (sums / n_per_word[None, :, None]).numpy()
        if not np.isfinite(block).all():
            bad = sorted({words[i0 + int(j)] for j in np.flatnonzero(~np.isfinite(block).all(axis=(0, 2)))})
            raise PipelineError(f"hidden {model_name}/{strategy}: the model produced NaN or inf hidden states for "
                                f"{', '.join(bad[:10])}{' ...' if len(bad) > 10 else ''} (hidden.dtype = "
                                f"{cfg.hidden.dtype}); try hidden.dtype = \"float32\", or check the model files")
        if store is np.float16:
            _check_fp16(block, words[i0:i1], model_name, strategy)
        mm[:, i0:i1, :] = block.astype(store)
        mm.flush()
        state.update({"done": i1, "not_found": state["not_found"] + pooler.not_found - before,
                      "texts": state["texts"] + len(flat_texts),
                      "guarded": state.get("guarded", 0) + pooler.guarded - guarded_before})
        _save_progress(progress_path, state)
        log.info("hidden %s/%s: %d/%d words (%.1f s)", model_name, strategy, i1, len(words), time.perf_counter() - t0)
    del mm
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    summary = {"layers": n_layers, "dim": dim, "words": len(words), "texts": state["texts"],
               "word_not_found": state["not_found"], "fallback_words": len(fallback),
               "fallback_word_list": fallback[:50], "rules": rules.name, "dtype": cfg.hidden.dtype,
               "store_dtype": cfg.hidden.store_dtype, "sink_guard": pooler.guard_name,
               "guarded_texts": state.get("guarded", 0), "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_bytes(paths.sidecar(out), json.dumps({**summary, "fallback_word_list": fallback,
                                                             "vocabulary": words}, indent=1).encode())
    os.replace(partial, out)
    progress_path.unlink(missing_ok=True)
    if state["not_found"]:
        log.warning("hidden %s/%s: in %d texts the word was not found; their vectors average all tokens",
                    model_name, strategy, state["not_found"])
    step.complete([out, paths.sidecar(out)], summary)
    return summary


def _check_fp16(block: np.ndarray, words: list[str], model: str, strategy: str) -> None:
    """Refuse a block that float16 cannot hold (nothing is clipped silently)."""
    big = np.abs(block) > _FP16_MAX
    if big.any():
        bad = sorted({words[int(j)] for j in np.flatnonzero(big.any(axis=(0, 2)))})
        raise PipelineError(f"hidden {model}/{strategy}: {int(big.sum())} values exceed float16's range "
                            f"(+-{_FP16_MAX:g}; largest {float(np.abs(block).max()):.4g}, words "
                            f"{', '.join(bad[:10])}); float16 storage would change them. Set "
                            f"hidden.store_dtype = \"float32\" (the default) and run again")


def _save_progress(path: Path, state: dict) -> None:
    atomic_write_bytes(path, json.dumps(state).encode())


def _resume_point(partial: Path, progress: Path, fp: str, n_words: int) -> tuple[int, int | None, int | None]:
    """Words already done in a partial file made from the same inputs; else start over."""
    if not (partial.exists() and progress.exists()):
        return 0, None, None
    try:
        state = json.loads(progress.read_text())
        arr = np.load(partial, mmap_mode="r")
    except (ValueError, OSError, json.JSONDecodeError):
        log.warning("%s: unreadable partial extraction, starting over", partial)
        return 0, None, None
    n_layers, words, dim = arr.shape
    if state.get("fingerprint") != fp or words != n_words or list(arr.shape) != state.get("shape"):
        log.info("%s: partial extraction from other inputs, starting over", partial)
        return 0, None, None
    return int(state.get("done", 0)), n_layers, dim


def load_hidden(cfg: Config, model: str, strategy: str, mmap: bool = True, n_words: int | None = None) -> np.ndarray:
    """The (L+1) x N x dim stack (float32, or float16 under `hidden.store_dtype`) of one model
    and strategy, validated.

    Args:
        n_words: expected N (the run's vocabulary size); not checked when None.

    Raises:
        PipelineError: missing, unreadable, wrong shape or dtype, not finite, or not the file
            the hidden stage wrote; the message names the command that rebuilds it.
    """
    path = paths.hidden_file(cfg, model, strategy)
    rebuild = keys.command(cfg, "hidden", model=model, strategy=strategy)
    Manifest(cfg.run_dir).require(path, f"hidden states of {model}/{strategy}", rebuild)
    arr = load_npy(path, f"hidden states of {model}/{strategy}", rebuild, shape=(None, n_words, None),
                   mmap=mmap)
    if arr.dtype not in (np.float32, np.float16):
        raise PipelineError(f"{path}: hidden states of {model}/{strategy} have dtype {arr.dtype}, expected float32 or "
                            f"float16; rebuild it with `{rebuild}`")
    if arr.shape[0] < 2:
        raise PipelineError(f"{path}: hidden states of {model}/{strategy} have {arr.shape[0]} layer(s), expected the "
                            f"embeddings plus at least one block; rebuild it with `{rebuild}`")
    return arr
