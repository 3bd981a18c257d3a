"""`hidden` stage: layerwise hidden-state vectors of every vocabulary word (METHOD.md §4).

For each model and extraction strategy, each word gets one vector per layer (layer 0 =
embedding output, then every block), stored as float16 ``(L+1) x N x dim`` in vocabulary
order at `hidden/<model>/<strategy>.npy`:

- ``meaning``, ``task_fc``, ``task_fa``: one prompt per word (`prompts.hidden_prompt`).
- ``averaged``: the mean over up to `hidden.max_sentences` corpus sentences per word
  (`hidden.sentences`, one sentence per line; see `load_sentences`).

Texts are raw (no chat template) and tokenized with the tokenizer's default special tokens.
A word's vector in one text is the mean over the tokens whose character span overlaps the
word's last occurrence (`rules.Rules.locate`: by default case-insensitive on word
boundaries of any script; in paper mode the authors' case-sensitive ``str.rfind``, which can
land inside a longer word, e.g. "art" in "start"), or over all non-special tokens when the
word is not found. A word without any sentence (``averaged``) is represented by the
meaning template by default and by the bare word in paper mode, as the authors did.

The paper runs one prompt per forward pass. Here prompts run in right-padded batches
with an attention mask: with right padding every real token keeps its position and
attends only to real tokens, so the pooled vectors equal the one-at-a-time ones up to
float rounding (tested). Finished word blocks go into a ``.partial`` memory-mapped .npy
with a progress file beside it, so an interrupted run continues at the next block; the
file is renamed into place when complete.

Sentence harvesting (`harvest`) builds the sentence file from local text:

    python -m pipeline.hidden harvest --vocab vocab.txt --corpus wordnet --out FILE --max 50
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import paths
from .config import Config, ModelCfg
from .errors import PipelineError
from .manifest import Manifest, StageLock, atomic_write_bytes, fingerprint, sha256_file
from .rules import Rules

log = logging.getLogger(__name__)

_VERSION = 1
_BLOCK_WORDS = 128
_MIN_PREFIX = 4
_FP16_MAX = float(np.finfo(np.float16).max)
_WORDNET_DIRS = (Path("/usr/share/wordnet"), Path("/usr/share/wordnet/dict"),
                 Path(sys.prefix) / "nltk_data" / "corpora" / "wordnet")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")


# ---------------------------------------------------------------- word location

def locate_word(text: str, word: str, rules: Rules | None = None) -> tuple[int, int] | None:
    """Character span of the occurrence of `word` whose tokens represent it (`Rules.locate`).

    Returns:
        (start, end) of the last occurrence, or None when the word does not occur.
    """
    return (rules or Rules()).locate(text, word)


def word_token_indices(offsets: list[tuple[int, int]], special: list[int],
                       span: tuple[int, int] | None, zero_width: bool = False) -> tuple[list[int], bool]:
    """Token positions to mean-pool for a word.

    Args:
        offsets: per-token (start, end) character offsets from a fast tokenizer.
        special: per-token special-tokens mask (1 = BOS/EOS/pad/...).
        span: the word's character span, or None when it was not found.
        zero_width: also count tokens with an empty span (the authors' code does).

    Returns:
        (indices, found): the non-special tokens overlapping `span`; when `span` is None or
        no token overlaps it, all non-special tokens and found = False (the paper's fallback).
    """
    real = [i for i, ((a, b), s) in enumerate(zip(offsets, special)) if not s and (b > a or zero_width)]
    if span is not None:
        s, e = span
        hit = [i for i in real if offsets[i][0] < e and offsets[i][1] > s]
        if hit:
            return hit, True
    return real, False


# ---------------------------------------------------------------- sentences

def sentence_tokens(sentence: str, rules: Rules | None = None) -> set[str]:
    """The match rule of harvesting (METHOD.md §1 step 8, `Rules.sentence_tokens`): a sentence
    matches a word when one of these lowercase tokens equals it."""
    return (rules or Rules()).sentence_tokens(sentence)


def load_sentences(path: str | Path, words: list[str], max_per_word: int,
                   rules: Rules | None = None) -> list[list[str]]:
    """The first `max_per_word` sentences of each word, in file order.

    A plain line is a sentence; it belongs to every vocabulary word it matches (the
    harvesting rule, `sentence_tokens`). A line ``word<TAB>sentence`` belongs to that word
    only, so a file of pre-assigned sentences (such as the authors' C4 sentences, one
    ``word, sentence`` row each) can be used as is after converting it to TSV.

    Args:
        path: UTF-8 text file.
        words: the run's vocabulary.
        max_per_word: cap per word.

    Returns:
        One list of sentences per vocabulary word (possibly empty).
    """
    index = {w.lower(): i for i, w in enumerate(words)}
    out: list[list[str]] = [[] for _ in words]
    full = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if "\t" in line:
                w, sent = line.split("\t", 1)
                i = index.get(w.strip().lower())
                targets = [] if i is None else [i]
            else:
                sent = line
                targets = [index[t] for t in sentence_tokens(line, rules) if t in index]
            for i in targets:
                if len(out[i]) < max_per_word:
                    out[i].append(sent)
                    full += len(out[i]) == max_per_word
            if full == len(words):
                break
    return out


def wordnet_sentences(root: str | Path | None = None) -> Iterator[str]:
    """Glosses and example sentences of WordNet 3.0 (the text after ``|`` of each synset).

    A gloss reads ``definition; "example one"; "example two"``: the definition and each
    example are yielded separately, in file order (noun, verb, adj, adv).
    """
    root = Path(root) if root else next((d for d in _WORDNET_DIRS if (d / "data.noun").exists()), None)
    if root is None:
        raise PipelineError("WordNet data files (data.noun, ...) not found under /usr/share/wordnet; install "
                            "the Debian package wordnet-base (apt-get install wordnet-base) or pass "
                            "another corpus to harvest")
    for pos in ("noun", "verb", "adj", "adv"):
        with open(root / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(" ") or "|" not in line:
                    continue
                gloss = line.split("|", 1)[1].strip()
                for piece in re.split(r';\s*"', gloss):
                    piece = piece.strip().strip(';').strip().strip('"').strip()
                    if piece:
                        yield piece


def text_sentences(path: str | Path) -> Iterator[str]:
    """Sentences of a plain-text corpus: each line a document, split after . ! ? before a
    capital or digit (a simple, deterministic splitter; the paper used NLTK punkt on C4)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            for s in _SENTENCE_END.split(line.strip()):
                s = s.strip()
                if s:
                    yield s


def harvest(words: list[str], corpora: Iterable[str], out: str | Path, max_per_word: int = 50,
            min_tokens: int = 5, max_tokens: int = 100, rules: Rules | None = None) -> dict:
    """Collect up to `max_per_word` sentences per word from local corpora (METHOD.md §1 step 8).

    Sentences of `min_tokens`..`max_tokens` whitespace tokens are scanned in corpus order; a
    sentence is kept when it matches (`sentence_tokens`) a word that still has fewer than
    `max_per_word` sentences, and it counts for every word it matches. `load_sentences` on
    the output therefore gives each word exactly the sentences harvested for it.

    Args:
        words: vocabulary.
        corpora: ``wordnet`` (WordNet glosses and examples) or paths of text files.
        out: output file, one sentence per line (written atomically).
        max_per_word, min_tokens, max_tokens: the paper's 50, 5 and 100.

    Returns:
        Summary: sentences written, words without any sentence, words below the cap.
    """
    index = {w.lower(): i for i, w in enumerate(words)}
    counts = np.zeros(len(words), dtype=np.int64)
    kept: list[str] = []
    seen: set[str] = set()
    for spec in corpora:
        if spec == "wordnet":
            source = wordnet_sentences()
        elif Path(spec).is_file():
            source = text_sentences(spec)
        else:
            raise PipelineError(f"harvest corpus '{spec}' is neither 'wordnet' nor an existing text file; fix "
                                f"hidden.harvest or the --corpus argument")
        for sent in source:
            sent = " ".join(sent.split())
            if not min_tokens <= len(sent.split()) <= max_tokens or sent in seen:
                continue
            hits = [index[t] for t in sentence_tokens(sent, rules) if t in index]
            open_hits = [i for i in hits if counts[i] < max_per_word]
            if not open_hits:
                continue
            counts[open_hits] += 1
            seen.add(sent)
            kept.append(sent)
            if counts.min() >= max_per_word:
                break
    atomic_write_bytes(out, "".join(s + "\n" for s in kept).encode("utf-8"))
    missing = [words[i] for i in np.flatnonzero(counts == 0)]
    return {"sentences": len(kept), "words": len(words), "words_without_sentences": missing,
            "words_below_cap": int((counts < max_per_word).sum())}


# ---------------------------------------------------------------- model

def _torch_dtype(name: str):
    import torch

    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32, "auto": "auto"}
    if name not in table:
        raise PipelineError(f"hidden.dtype = {name!r} is not one of {', '.join(table)}")
    return table[name]


def resolve_device(name: str, key: str = "hidden.device") -> str:
    """The torch device for `name` (``auto``: CUDA when available), checked to exist.

    Raises:
        PipelineError: a CUDA device is asked for where torch sees none, or the name is not a
            device torch knows.
    """
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise PipelineError(f"{key} = {name!r} is not a torch device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PipelineError(f"{key} = {name!r} but this machine has no usable CUDA device (torch "
                                f"{torch.__version__}); set {key} = 'auto' or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PipelineError(f"{key} = {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible; "
                                f"pick one of cuda:0..cuda:{torch.cuda.device_count() - 1} or 'auto'")
    return name


def load_model(mcfg: ModelCfg, dtype: str = "bfloat16", device: str = "auto"):
    """Tokenizer (fast, for offsets) and base model returning hidden states.

    Raises:
        PipelineError: the model cannot be loaded offline, or its tokenizer has no fast
            (offset-mapping) version.
    """
    import torch
    from transformers import AutoModel, AutoTokenizer

    from .resources import resolve

    path = resolve(mcfg.path)
    kw = {"revision": mcfg.revision} if mcfg.revision else {}
    try:
        tok_kw = {"fix_mistral_regex": True} if mcfg.fix_mistral_regex else {}
        tok = AutoTokenizer.from_pretrained(path, **kw, **tok_kw)
        model = AutoModel.from_pretrained(path, dtype=_torch_dtype(dtype), **kw)
    except (OSError, ValueError) as e:
        raise PipelineError(f"model '{mcfg.name}': cannot load '{path}' ({str(e).splitlines()[0]}); download it "
                            f"into the Hugging Face cache or a local folder and set models[].path, then run "
                            f"again (runs are offline)") from None
    if not getattr(tok, "is_fast", False):
        raise PipelineError(f"model '{mcfg.name}': the tokenizer at '{path}' has no fast version, and word "
                            f"pooling needs character offsets; install `tokenizers` or convert the tokenizer")
    model.to(resolve_device(device)).eval()
    torch.set_grad_enabled(False)
    return tok, model


class Pooler:
    """Batched forward passes that mean-pool each text's word tokens at every layer.

    Template prompts share a long token prefix (the task prompts: about 190 of 200
    tokens). When all texts of a call share at least `_MIN_PREFIX` leading tokens, the
    prefix runs once and each batch runs only its suffixes on a copy of the prefix's KV
    cache: causal attention makes the prefix states independent of what follows, so this
    is the same computation reordered. The first shared batch is checked against a full
    forward pass; a model whose cache does not support this falls back to full passes.
    """

    def __init__(self, tok, model, batch_size: int = 16, rules: Rules | None = None, share_prefix: bool = True):
        self.tok = tok
        self.model = model
        self.batch_size = batch_size
        self.rules = rules or Rules()
        self.share_prefix = share_prefix
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        self.max_len = getattr(model.config, "max_position_embeddings", None)
        self.not_found = 0
        self.forward_calls = 0
        self._prefix: tuple[tuple[int, ...], object, object] | None = None
        self._checked = False

    @property
    def device(self):
        return next(self.model.parameters()).device

    def encode(self, texts: list[str], words: list[str]) -> list[tuple[list[int], list[int]]]:
        """Token ids and the positions to pool, per text."""
        enc = self.tok(texts, add_special_tokens=True, return_offsets_mapping=True,
                       return_special_tokens_mask=True, truncation=False)
        out = []
        for k, (text, word) in enumerate(zip(texts, words)):
            ids = enc["input_ids"][k]
            if self.max_len and len(ids) > self.max_len:
                raise PipelineError(f"a text for word '{word}' has {len(ids)} tokens, more than the model's "
                                    f"{self.max_len}; shorten the sentences in hidden.sentences")
            sel, found = word_token_indices(enc["offset_mapping"][k], enc["special_tokens_mask"][k],
                                            self.rules.locate(text, word), self.rules.pool_zero_width)
            if not sel:
                raise PipelineError(f"a text for word '{word}' has no non-special tokens: {text!r}")
            self.not_found += not found
            out.append((ids, sel))
        return out

    def pooled(self, encoded: list[tuple[list[int], list[int]]]) -> Iterator[tuple[np.ndarray, "object"]]:
        """Yield (positions in `encoded`, float32 tensor (L+1) x B x dim) batch by batch.

        Texts are sorted by length so that batches carry little padding.
        """
        order = np.argsort([-len(ids) for ids, _ in encoded], kind="stable")
        p = self._common_prefix([ids for ids, _ in encoded]) if self.share_prefix else 0
        for b0 in range(0, len(order), self.batch_size):
            idx = order[b0:b0 + self.batch_size]
            items = [encoded[i] for i in idx]
            if p:
                vec = self._forward_shared(items, p)
                if vec is None:
                    p = 0
            if not p:
                vec = self._forward(items)
            yield idx, vec

    def _common_prefix(self, seqs: list[list[int]]) -> int:
        if len(seqs) < 2:
            return 0
        p = min(len(s) for s in seqs) - 1
        first = np.asarray(seqs[0][:p])
        for s in seqs[1:]:
            diff = np.flatnonzero(first[:p] != np.asarray(s[:p]))
            if diff.size:
                p = int(diff[0])
            if p < _MIN_PREFIX:
                return 0
        return p

    def _batch(self, items, start: int = 0):
        import torch

        t = max(len(ids) for ids, _ in items) - start
        ids = torch.full((len(items), t), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(items), t), dtype=torch.long)
        weights = torch.zeros((len(items), t + start), dtype=torch.float32)
        for r, (tokens, sel) in enumerate(items):
            ids[r, :len(tokens) - start] = torch.tensor(tokens[start:])
            mask[r, :len(tokens) - start] = 1
            weights[r, sel] = 1.0 / len(sel)
        return ids, mask, weights

    @staticmethod
    def _pool(weights, hidden_states):
        import torch

        keep = (weights > 0).unsqueeze(-1)
        return torch.stack([torch.einsum("bt,btd->bd", weights, torch.where(keep, h.float(), 0.0))
                            for h in hidden_states])

    def _forward(self, items):
        ids, mask, weights = self._batch(items)
        dev = self.device
        out = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), output_hidden_states=True,
                         use_cache=False)
        self.forward_calls += 1
        return self._pool(weights.to(dev), out.hidden_states).cpu()

    def _forward_shared(self, items, p: int):
        """Pooled vectors with the first `p` tokens served from a cached prefix pass, or
        None when the model's cache cannot be shared (checked once against `_forward`)."""
        import copy

        import torch

        dev = self.device
        key = tuple(items[0][0][:p])
        try:
            if self._prefix is None or self._prefix[0] != key:
                out = self.model(input_ids=torch.tensor([key], device=dev), output_hidden_states=True,
                                 use_cache=True)
                self.forward_calls += 1
                self._prefix = (key, out.past_key_values, torch.stack([h[0].float() for h in out.hidden_states]))
            _, cache, prefix_h = self._prefix
            ids, mask, weights = self._batch(items, start=p)
            cache = copy.deepcopy(cache)
            cache.batch_repeat_interleave(len(items))
            full_mask = torch.cat([torch.ones((len(items), p), dtype=torch.long), mask], dim=1)
            out = self.model(input_ids=ids.to(dev), attention_mask=full_mask.to(dev), past_key_values=cache,
                             use_cache=True, output_hidden_states=True)
            self.forward_calls += 1
        except (TypeError, AttributeError, RuntimeError, ValueError) as e:
            log.warning("hidden: prefix sharing failed for this model (%s); using full forward passes", e)
            self.share_prefix = False
            return None
        weights = weights.to(dev)
        vec = self._pool(weights[:, p:], out.hidden_states)
        vec += torch.einsum("bp,lpd->lbd", weights[:, :p], prefix_h)
        vec = vec.cpu()
        if not self._checked:
            ref = self._forward(items[:1])
            err = float((vec[:, :1] - ref).abs().max() / ref.abs().max().clamp_min(1e-12))
            tol = 1e-3 if next(self.model.parameters()).dtype == torch.float32 else 3e-2
            if err > tol:
                log.warning("hidden: prefix-shared pass differs from a full pass by %.2g (relative); using full "
                            "forward passes", err)
                self.share_prefix = False
                return None
            self._checked = True
        return vec


# ---------------------------------------------------------------- stage

def run(cfg: Config, opts) -> None:
    """Extract hidden states for every model x strategy of the config (or those `opts` picks).

    Completed outputs are skipped; an interrupted extraction continues at its next word
    block; a finished one whose file is missing or damaged is extracted again. Models are
    loaded only when some strategy still has work.
    """
    if getattr(opts, "engine", "local") == "ray":
        from .distributed import run_hidden
        return run_hidden(cfg, opts)
    words, todo, sentences = pending(cfg, opts)
    for name in dict.fromkeys(n for n, _, _ in todo):
        tok, model = load_model(cfg.model(name), cfg.hidden.dtype, cfg.hidden.device)
        pooler = Pooler(tok, model, cfg.hidden.batch_size, Rules.of(cfg))
        for _, strategy, fp in (cell for cell in todo if cell[0] == name):
            extract(cfg, name, strategy, words, pooler, fp, sentences if strategy == "averaged" else None)


def pending(cfg: Config, opts) -> tuple[list[str], list[tuple[str, str, str]], list[list[str]] | None]:
    """The run's words, the (model, strategy, fingerprint) cells still to extract, and the
    sentences per word when the averaged strategy is selected (harvested first if missing,
    since its fingerprint covers the sentence file).

    Shared by the local stage and the Ray fan-out, so both skip exactly the same work;
    complete cells are logged and left out.
    """
    from .vocab import load_run_vocab, vocab_fingerprint

    models = [opts.model] if getattr(opts, "model", None) else [m.name for m in cfg.models]
    strategies = list(cfg.hidden.strategies)
    if getattr(opts, "strategy", None):
        if opts.strategy not in strategies:
            raise PipelineError(f"--strategy {opts.strategy}: not in hidden.strategies of {cfg.source} "
                                f"({', '.join(strategies)})")
        strategies = [opts.strategy]
    words = load_run_vocab(cfg)
    resolve_device(cfg.hidden.device)
    sentences = sentences_for(cfg, words) if "averaged" in strategies else None
    vfp = vocab_fingerprint(cfg)
    man = Manifest(cfg.run_dir)
    force = bool(getattr(opts, "force", False))
    todo = []
    for name in models:
        mcfg = cfg.model(name)
        for strategy in strategies:
            fp = _fingerprint(cfg, mcfg, strategy, vfp)
            if man.check(stage_key(name, strategy), fp, force):
                log.info("hidden %s/%s: complete, skipping", name, strategy)
                continue
            todo.append((name, strategy, fp))
    return words, todo, sentences


def stage_key(model: str, strategy: str) -> str:
    """Manifest key of one model x strategy extraction."""
    return f"hidden/{model}/{strategy}"


def rebuild_command(cfg: Config, model: str, strategy: str) -> str:
    """The command that (re)writes `hidden/<model>/<strategy>.npy`."""
    return f"python -m pipeline hidden --config {cfg.source} --model {model} --strategy {strategy}"


def sentences_for(cfg: Config, words: list[str]) -> list[list[str]]:
    h = cfg.hidden
    path = Path(h.sentences)
    if not path.exists():
        if not h.harvest:
            raise PipelineError(
                f"hidden.sentences = {h.sentences}: file not found; the 'averaged' strategy needs up to "
                f"{h.max_sentences} sentences per word, one per line. Supply it (the paper uses 50 C4 sentences "
                f"per word), build it with `python -m pipeline.hidden harvest --vocab {paths.vocab_file(cfg)} "
                f"--corpus FILE... --out {h.sentences} --max {h.max_sentences}`, or set hidden.harvest = "
                f"[\"wordnet\"] to harvest WordNet glosses automatically")
        t0 = time.perf_counter()
        summary = harvest(words, h.harvest, path, h.max_sentences, rules=Rules.of(cfg))
        log.info("hidden: harvested %d sentences from %s into %s (%.1f s); %d words have none", summary["sentences"],
                 ", ".join(h.harvest), path, time.perf_counter() - t0, len(summary["words_without_sentences"]))
    return load_sentences(path, words, h.max_sentences, Rules.of(cfg))


def _fingerprint(cfg: Config, mcfg: ModelCfg, strategy: str, vocab_fp: str) -> str:
    from .prompts import HIDDEN_TEMPLATES, PROMPTS_DIR

    h = cfg.hidden
    inputs = {"version": _VERSION, "vocab": vocab_fp, "model": mcfg.path, "revision": mcfg.revision,
              "strategy": strategy, "dtype": h.dtype, "rules": Rules.of(cfg).name,
              "template": sha256_file(PROMPTS_DIR / f"{HIDDEN_TEMPLATES['meaning' if strategy == 'averaged' else strategy]}.txt")}
    if strategy == "averaged":
        inputs.update({"sentences": sha256_file(h.sentences), "max_sentences": h.max_sentences})
    return fingerprint(inputs)


def _texts(strategy: str, words: list[str], sentences: list[list[str]] | None,
           rules: Rules | None = None) -> tuple[list[list[str]], list[str]]:
    """Texts per word and the words without sentences that fell back to
    `Rules.averaged_fallback` (the meaning template, or the bare word in paper mode)."""
    from .prompts import hidden_prompt

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
            sentences: list[list[str]] | None = None) -> dict:
    """Extract one strategy for one model into `paths.hidden_file`, resumably.

    Takes a lock on the output, so a second run of the same cell is refused instead of
    racing on the partial file. Words with no sentence (``averaged``) use
    `Rules.averaged_fallback`; their names and number go into the manifest summary and the
    sidecar json.

    Returns:
        The summary recorded in the manifest.

    Raises:
        PipelineError: another run holds the cell, or the model produced NaN or inf.
    """
    out = paths.hidden_file(cfg, model_name, strategy)
    key = stage_key(model_name, strategy)
    man = Manifest(cfg.run_dir)
    with StageLock(out.with_name(f".{out.stem}.lock"), f"hidden states of {model_name}/{strategy}"):
        if man.check(key, fp):
            log.info("hidden %s/%s: completed by another run meanwhile, skipping", model_name, strategy)
            return man.summary(key) or {}
        return _extract(cfg, man, key, model_name, strategy, words, pooler, fp, sentences)


def _extract(cfg, man, key, model_name, strategy, words, pooler, fp, sentences) -> dict:
    import torch

    out = paths.hidden_file(cfg, model_name, strategy)
    partial = out.with_name(out.name + ".partial")
    progress_path = out.with_name(out.name + ".progress.json")
    man.start(key, fp)
    rules = Rules.of(cfg)
    texts, fallback = _texts(strategy, words, sentences, rules)
    if fallback:
        log.warning("hidden %s/%s: %d words have no sentence in %s and use %s instead: %s",
                    model_name, strategy, len(fallback), cfg.hidden.sentences,
                    "the bare word" if rules.averaged_fallback == "word" else "the meaning template",
                    ", ".join(fallback[:20]) + (" ..." if len(fallback) > 20 else ""))
    done, n_layers, dim = _resume_point(partial, progress_path, fp, len(words))
    if n_layers is None:
        probe = pooler.encode([words[0]], [words[0]])
        _, vec = next(pooler.pooled(probe))
        n_layers, dim = vec.shape[0], vec.shape[2]
        out.parent.mkdir(parents=True, exist_ok=True)
        np.lib.format.open_memmap(partial, mode="w+", dtype=np.float16, shape=(n_layers, len(words), dim)).flush()
        _save_progress(progress_path, {"fingerprint": fp, "done": 0, "shape": [n_layers, len(words), dim],
                                       "not_found": 0, "texts": 0})
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
        before = pooler.not_found
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
        big = np.abs(block) > _FP16_MAX
        if big.any():
            state["clipped"] = state.get("clipped", 0) + int(big.sum())
            np.clip(block, -_FP16_MAX, _FP16_MAX, out=block)
        mm[:, i0:i1, :] = block.astype(np.float16)
        mm.flush()
        state.update({"done": i1, "not_found": state["not_found"] + pooler.not_found - before,
                      "texts": state["texts"] + len(flat_texts)})
        _save_progress(progress_path, state)
        log.info("hidden %s/%s: %d/%d words (%.1f s)", model_name, strategy, i1, len(words), time.perf_counter() - t0)
    del mm
    with open(partial, "rb") as f:
        os.fsync(f.fileno())
    summary = {"layers": n_layers, "dim": dim, "words": len(words), "texts": state["texts"],
               "word_not_found": state["not_found"], "clipped_fp16": state.get("clipped", 0),
               "fallback_words": len(fallback),
               "fallback_word_list": fallback[:50], "rules": rules.name, "dtype": cfg.hidden.dtype}
    atomic_write_bytes(out.with_suffix(".json"), json.dumps({**summary, "fallback_word_list": fallback,
                                                             "vocabulary": words}, indent=1).encode())
    os.replace(partial, out)
    progress_path.unlink(missing_ok=True)
    if state.get("clipped"):
        log.warning("hidden %s/%s: %d values beyond the float16 range were clipped to +-%g", model_name, strategy,
                    state["clipped"], _FP16_MAX)
    if state["not_found"]:
        log.warning("hidden %s/%s: in %d texts the word was not found; their vectors average all tokens",
                    model_name, strategy, state["not_found"])
    man.complete(key, fp, summary, outputs=[out, out.with_suffix(".json")])
    return summary


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
    """The (L+1) x N x dim float16 stack of one model and strategy, validated.

    Args:
        n_words: expected N (the run's vocabulary size); not checked when None.

    Raises:
        PipelineError: missing, unreadable, wrong shape or dtype, not finite, or not the file
            the hidden stage wrote; the message names the command that rebuilds it.
    """
    from .store import load_npy

    path = paths.hidden_file(cfg, model, strategy)
    rebuild = rebuild_command(cfg, model, strategy)
    Manifest(cfg.run_dir).require(path, f"hidden states of {model}/{strategy}", rebuild)
    arr = load_npy(path, f"hidden states of {model}/{strategy}", rebuild, shape=(None, n_words, None),
                   dtype=np.float16, mmap=mmap)
    if arr.shape[0] < 2:
        raise PipelineError(f"{path}: hidden states of {model}/{strategy} have {arr.shape[0]} layer(s), expected the "
                            f"embeddings plus at least one block; rebuild it with `{rebuild}`")
    return arr


# ---------------------------------------------------------------- CLI

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.hidden")
    sub = p.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("harvest", help="collect sentences per word from local corpora")
    h.add_argument("--vocab", required=True, help="word list (one per line, or CSV with a 'word' column)")
    h.add_argument("--corpus", required=True, nargs="+", help="'wordnet' and/or text files (one document per line)")
    h.add_argument("--out", required=True)
    h.add_argument("--max", type=int, default=50, help="sentences per word (the paper: 50)")
    args = p.parse_args(argv)
    from .vocab import load_words

    try:
        words = load_words(args.vocab)
        summary = harvest(words, args.corpus, args.out, args.max)
    except PipelineError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = summary["words_without_sentences"]
    print(f"{summary['sentences']} sentences for {summary['words']} words -> {args.out}; "
          f"{summary['words_below_cap']} words below {args.max}; {len(missing)} without any"
          + (f": {', '.join(missing[:30])}" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
