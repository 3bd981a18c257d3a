"""Word vectors from a causal LM: where the word is, which tokens represent it, batched pooling.

A word's vector in one text is the mean, at every layer, over the tokens whose character
span overlaps the word's occurrence chosen by `rules.Rules.locate` (or over all non-special
tokens when the word is not found, the paper's fallback). Special tokens are recognised by id
(`tokenizer.all_special_ids`, as the authors did), so a literal ``<|endoftext|>`` inside a
text is never pooled; the default rules also skip the special-tokens mask and position 0.

Sink guard (`hidden.sink_guard`, default mode only): a text that does not start with a
special token gets the model's BOS (or a fixed neutral prefix, `hidden.sink_prefix`) in front
of it, so no word token sits at position 0, the attention sink whose hidden state has a norm
tens of times the others' (SmolLM2 from layer 12 on). Texts run in right-padded batches
with an attention mask: every real token keeps its position and attends only to real
tokens, so pooled vectors equal one-prompt-at-a-time ones up to float rounding. The hidden
stage and the encoder baseline both use this module.
"""

from __future__ import annotations

import logging
from typing import Iterator

import numpy as np

from .config import ModelCfg
from .errors import PipelineError
from .resources import resolve
from .rules import Rules

log = logging.getLogger(__name__)

MIN_PREFIX = 4


# ---------------------------------------------------------------- word location

def locate_word(text: str, word: str, rules: Rules | None = None) -> tuple[int, int] | None:
    """Character span of the occurrence of `word` whose tokens represent it (`Rules.locate`).

    Returns:
        (start, end) of the last occurrence, or None when the word does not occur.
    """
    return (rules or Rules()).locate(text, word)


def word_token_indices(offsets: list[tuple[int, int]], special: list[int],
                       span: tuple[int, int] | None, zero_width: bool = False,
                       skip_first: bool = False) -> tuple[list[int], bool]:
    """Token positions to mean-pool for a word.

    Args:
        offsets: per-token (start, end) character offsets from a fast tokenizer.
        special: per-token flags, 1 = never pooled (`special_flags`: BOS/EOS/pad/..., by id).
        span: the word's character span, or None when it was not found.
        zero_width: also count tokens with an empty span (the authors' code does).
        skip_first: leave position 0, the attention sink, out of the whole-text fallback
            while any other token remains (default rules; the authors pool it).

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
    if skip_first and len(real) > 1 and real[0] == 0:
        real = real[1:]
    return real, False


def special_flags(ids: list[int], mask: list[int], special_ids, rules: Rules | None = None) -> list[int]:
    """Per-token 1 where a token is never pooled.

    Paper rules: the authors' test, id in `tokenizer.all_special_ids` (a literal
    ``<|endoftext|>`` typed inside a text is excluded, which `special_tokens_mask` misses).
    Default rules: that, or the tokenizer's special-tokens mask.
    """
    ids_special = [int(t in special_ids) for t in ids]
    if (rules or Rules()).paper:
        return ids_special
    return [int(a or b) for a, b in zip(ids_special, mask)]


def guard_tokens(tok, mode: str, prefix: str = "\n") -> tuple[list[int], str]:
    """Token ids put before a text that starts with a non-special token, and their name.

    Args:
        tok: the model's tokenizer.
        mode: ``bos`` (the tokenizer's BOS), ``prefix`` (`prefix` tokenized without special
            tokens), ``auto`` (BOS where the tokenizer defines one, else the prefix) or ``none``.
        prefix: the neutral text of ``prefix`` mode.

    Raises:
        PipelineError: ``bos`` for a tokenizer without a BOS token, or a prefix with no tokens.
    """
    if mode == "none":
        return [], "none"
    bos = getattr(tok, "bos_token_id", None)
    if mode == "bos" or (mode == "auto" and bos is not None):
        if bos is None:
            raise PipelineError("hidden.sink_guard = \"bos\" but this model's tokenizer defines no BOS token; use "
                                "\"auto\" or \"prefix\" (a fixed neutral text, hidden.sink_prefix)")
        return [int(bos)], f"bos {tok.convert_ids_to_tokens(int(bos))!r}"
    ids = tok(prefix, add_special_tokens=False)["input_ids"]
    if not ids:
        raise PipelineError(f"hidden.sink_prefix = {prefix!r} has no tokens; give it a short neutral text, "
                            f"e.g. \"\\n\"")
    return list(ids), f"prefix {prefix!r}"


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
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError(f"{key} = {name!r} but this machine has no usable MPS (Apple silicon) device (torch "
                            f"{torch.__version__}); set {key} = 'auto' or 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise PipelineError(f"{key} = {name!r}: hidden states are computed on 'cpu', 'cuda' (or 'cuda:N') or 'mps', "
                            f"not on a {dev.type!r} device{' (it holds no data)' if dev.type == 'meta' else ''}; "
                            f"set {key} = 'auto' or 'cpu'")
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
    from safetensors import SafetensorError
    from transformers import AutoModel, AutoTokenizer

    path = resolve(mcfg.path)
    kw = {"revision": mcfg.revision} if mcfg.revision else {}
    try:
        tok_kw = {"fix_mistral_regex": True} if mcfg.fixes_mistral_regex("hidden") else {}
        tok = AutoTokenizer.from_pretrained(path, **kw, **tok_kw)
        model = AutoModel.from_pretrained(path, dtype=_torch_dtype(dtype), **kw)
    except SafetensorError as e:
        raise PipelineError(f"model '{mcfg.name}': cannot load '{path}': a model.safetensors file there is damaged "
                            f"or truncated ({str(e).splitlines()[0]}); download the weights again") from None
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
    tokens). When all texts of a call share at least `MIN_PREFIX` leading tokens, the
    prefix runs once and each batch runs only its suffixes on a copy of the prefix's KV
    cache: causal attention makes the prefix states independent of what follows, so this
    is the same computation reordered. The first shared batch is checked against a full
    forward pass; a model whose cache does not support this falls back to full passes.
    """

    def __init__(self, tok, model, batch_size: int = 16, rules: Rules | None = None, share_prefix: bool = True,
                 sink_guard: str = "none", sink_prefix: str = "\n"):
        self.tok = tok
        self.model = model
        self.batch_size = batch_size
        self.rules = rules or Rules()
        self.share_prefix = share_prefix
        self.guard, self.guard_name = guard_tokens(tok, sink_guard, sink_prefix)
        self.guarded = 0
        self.special_ids = frozenset(int(t) for t in tok.all_special_ids)
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
        """Token ids and the positions to pool, per text (the sink guard's tokens in front of
        a text that does not start with a special token)."""
        enc = self.tok(texts, add_special_tokens=True, return_offsets_mapping=True,
                       return_special_tokens_mask=True, truncation=False)
        out = []
        for k, (text, word) in enumerate(zip(texts, words)):
            ids, offsets = enc["input_ids"][k], enc["offset_mapping"][k]
            special = special_flags(ids, enc["special_tokens_mask"][k], self.special_ids, self.rules)
            if self.guard and ids and not special[0]:
                n = len(self.guard)
                ids, offsets, special = self.guard + ids, [(0, 0)] * n + list(offsets), [1] * n + special
                self.guarded += 1
            if self.max_len and len(ids) > self.max_len:
                raise PipelineError(f"a text for word '{word}' has {len(ids)} tokens, more than the model's "
                                    f"{self.max_len}; shorten the sentences in hidden.sentences")
            sel, found = word_token_indices(offsets, special, self.rules.locate(text, word),
                                            self.rules.pool_zero_width, skip_first=not self.rules.paper)
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
            if p < MIN_PREFIX:
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
