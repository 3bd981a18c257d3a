"""transformers `generate` backend: the paper's own decoding path (METHOD.md §2-§3).

Batched with left padding (pad = eos when the tokenizer has none), prompts tokenized with
the default ``add_special_tokens=True`` as the authors did, EOS = the tokenizer's eos plus
`models[].extra_eos` of the request's stage, answers decoded with special tokens skipped. A
stage named by `models[].fix_mistral_regex` is tokenized by the tokenizer loaded with
`fix_mistral_regex=True` (the authors' per-script setting); the others by the plain one.

Seeds: `generate` draws from the global torch generator, so a batch cannot honour one seed
per request. Requests are grouped by identical decoding settings, cut into micro-batches
of `behave.batch_size`, and each sampled micro-batch is seeded with its first request's
seed, which is what the authors did for their retry batches. A sampled answer therefore
depends on its batch mates; vLLM honours per-request seeds exactly.

Everything not set here (e.g. top_k = 50 when sampling) comes from the model's generation
config, as in the authors' runs.

Structured output: `allowed_choices` (FC) is enforced with a token trie over the allowed
answers (`prefix_allowed_tokens_fn`), so the answer is always two distinct candidates;
`allowed_regex` alone (FA) cannot be enforced here and is refused with a clear message.

Scoring (`score`): exact log-probabilities of the continuations from teacher-forced forward
passes. The prefix every prompt of the call shares (the instructions) is run once and its
KV cache reused; each prompt then runs once on top of a copy of it, and its continuations
run as one batch on that prompt's cache (right-padded, explicit positions). No token is
computed twice within a request, and the first token of every continuation comes from the
prompt's last logits.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

from ..config import eos_for, fixes_mistral_regex
from ..errors import PipelineError
from ..prompts import render_chat
from . import model_path, register, runtime_dtype
from .base import Backend, GenRequest, GenResult, ScoreRequest, ScoreResult, continuation_ids

log = logging.getLogger(__name__)


def _trie(seqs: list[list[int]]) -> dict:
    root: dict = {}
    for s in seqs:
        node = root
        for t in s:
            node = node.setdefault(t, {})
        node[None] = {}
    return root


@register("hf")
class HFBackend(Backend):
    """Plain batched `model.generate` on CPU or one GPU."""

    structured = "choices"
    batch_invariant = False
    scores = True

    @classmethod
    def create(cls, model_cfg, cfg, **overrides) -> "HFBackend":
        kw = dict(dtype=runtime_dtype(model_cfg.dtype), batch_size=cfg.behave.batch_size,
                  extra_eos=model_cfg.extra_eos, fix_mistral_regex=model_cfg.fix_mistral_regex)
        return cls(str(model_path(model_cfg, cfg)), **{**kw, **overrides})

    @classmethod
    def gpus_per_engine(cls, model_cfg) -> int:
        return 1

    @classmethod
    def log_settings(cls, cfg, model_cfg=None) -> dict:
        return {"batch_size": cfg.behave.batch_size}

    def __init__(self, path: str, dtype: str = "bfloat16", batch_size: int = 64,
                 extra_eos: list[str] | dict[str, list[str]] | None = None, device: str | None = None,
                 fix_mistral_regex: bool | list[str] = False):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tok = self._load_tokenizer(AutoTokenizer, path, {})
        self.fix = fix_mistral_regex
        self.tok_fixed = self._load_tokenizer(AutoTokenizer, path, {"fix_mistral_regex": True}) \
            if fix_mistral_regex else None
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device)
        self.model.eval()
        self.batch_size = batch_size
        self.extra_eos = extra_eos or []
        self._eos: dict[str | None, list[int]] = {}
        for tok in eos_for(self.extra_eos, None):
            tid = self.tok.convert_tokens_to_ids(tok)
            if tid is None or tid == self.tok.unk_token_id:
                log.warning("extra_eos token %r is not in the vocabulary of %s; ignored", tok, path)

    @staticmethod
    def _load_tokenizer(auto, path: str, kw: dict):
        tok = auto.from_pretrained(path, **kw)
        tok.padding_side = "left"
        if tok.pad_token_id is None:
            tok.pad_token_id = tok.eos_token_id
        return tok

    def tokenizer(self, stage: str | None):
        """The tokenizer prompts of `stage` are encoded with (the fixed one where configured)."""
        return self.tok_fixed if self.tok_fixed is not None and fixes_mistral_regex(self.fix, stage) else self.tok

    def eos_for(self, stage: str | None) -> list[int]:
        """The terminators of `stage`: the tokenizer's eos plus the stage's extra EOS tokens."""
        if stage not in self._eos:
            ids = [self.tok.eos_token_id]
            for tok in eos_for(self.extra_eos, stage):
                tid = self.tok.convert_tokens_to_ids(tok)
                if tid is not None and tid != self.tok.unk_token_id and tid not in ids:
                    ids.append(tid)
            self._eos[stage] = ids
        return self._eos[stage]

    def render(self, messages: list[dict]) -> str:
        return render_chat(self.tok, messages)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        for r in requests:
            if r.allowed_regex is not None and r.allowed_choices is None:
                raise PipelineError("the hf backend cannot enforce a regular expression (structured "
                                    "FA output); set behave.structured_fa = false or use "
                                    "behave.backend = \"vllm\"")
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            key = (r.greedy, None if r.greedy else r.temperature, None if r.greedy else r.top_p,
                   r.max_tokens, r.allowed_choices is not None, r.stage)
            groups.setdefault(key, []).append(i)
        out: list[GenResult | None] = [None] * len(requests)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                batch = idx[s:s + self.batch_size]
                for i, res in zip(batch, self._batch([requests[i] for i in batch])):
                    out[i] = res
        return out  # type: ignore[return-value]

    def _batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        torch = self.torch
        first = reqs[0]
        tokenizer, eos_ids = self.tokenizer(first.stage), self.eos_for(first.stage)
        enc = tokenizer([self._text(r) for r in reqs], return_tensors="pt", padding=True).to(self.device)
        plen = enc["input_ids"].shape[1]
        kw = dict(max_new_tokens=first.max_tokens, num_beams=1, pad_token_id=tokenizer.pad_token_id,
                  eos_token_id=eos_ids)
        if first.greedy:
            kw.update(do_sample=False)
        else:
            kw.update(do_sample=True, temperature=first.temperature, top_p=first.top_p)
            if first.seed is not None:
                torch.manual_seed(int(first.seed) % (2 ** 63))
        if first.allowed_choices is not None:
            tries = [_trie(tokenizer(list(r.allowed_choices), add_special_tokens=False)["input_ids"])
                     for r in reqs]
            eos = list(eos_ids)

            def allowed(row: int, ids) -> list[int]:
                node = tries[row]
                for t in ids[plen:].tolist():
                    if t not in node:
                        return eos
                    node = node[t]
                nxt = [t for t in node if t is not None]
                return nxt + eos if None in node or not nxt else nxt
            kw["prefix_allowed_tokens_fn"] = allowed
        with torch.inference_mode():
            gen = self.model.generate(**enc, **kw)[:, plen:]
        n_prompt = enc["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, ids in enumerate(gen.tolist()):
            n = len(ids)
            for j, t in enumerate(ids):
                if t in eos_ids:
                    n = j + 1
                    break
            text = self.tok.decode(ids[:n], skip_special_tokens=True)
            results.append(GenResult(text=text, n_prompt_tokens=int(n_prompt[row]), n_output_tokens=n))
        return results

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        torch = self.torch
        encoded = [continuation_ids(self.tokenizer(r.stage), r) for r in requests]
        if not encoded:
            return []
        prompts = [p for p, _ in encoded]
        shared = _common_prefix(prompts, min(len(p) for p in prompts) - 1)
        with torch.inference_mode():
            base = None
            if shared:
                ids = torch.tensor([prompts[0][:shared]], device=self.device)
                base = self.model(ids, use_cache=True).past_key_values
            return [self._score_one(p, conts, shared, base) for p, conts in encoded]

    def _score_one(self, prompt: list[int], conts: list[list[int]], shared: int, base) -> ScoreResult:
        torch = self.torch
        n = len(prompt)
        out = self.model(torch.tensor([prompt[shared:]], device=self.device),
                         past_key_values=copy.deepcopy(base) if base is not None else None,
                         position_ids=torch.arange(shared, n, device=self.device)[None], use_cache=True)
        first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
        logprobs = [float(first[c[0]]) for c in conts]
        rows = [i for i, c in enumerate(conts) if len(c) > 1]
        if rows:
            width = max(len(conts[i]) - 1 for i in rows)
            ids = torch.full((len(rows), width), self.tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(rows), n + width), dtype=torch.long)
            mask[:, :n] = 1
            for r, i in enumerate(rows):
                ids[r, :len(conts[i]) - 1] = torch.tensor(conts[i][:-1])
                mask[r, n:n + len(conts[i]) - 1] = 1
            cache = out.past_key_values
            cache.batch_repeat_interleave(len(rows))
            pos = torch.arange(n, n + width, device=self.device)[None].expand(len(rows), -1)
            logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device), past_key_values=cache,
                                position_ids=pos, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                m = len(conts[i]) - 1
                target = torch.tensor(conts[i][1:], device=self.device)
                logprobs[i] += float(logp[r, torch.arange(m, device=self.device), target].sum())
        return ScoreResult(logprobs=logprobs, n_tokens=[len(c) for c in conts], n_prompt_tokens=n)

    def close(self) -> None:
        self.model = None


def _common_prefix(seqs: list[list[int]], cap: int) -> int:
    """Length of the longest common prefix of `seqs`, at most `cap`."""
    first = seqs[0]
    n = 0
    while n < cap and all(s[n] == first[n] for s in seqs):
        n += 1
    return n
