"""Behave throughput: vLLM vs plain batched transformers `generate`, vLLM prefix caching, and the
cost per trial of scored FC (`fc_scored`) by each exact method against generative FC.

Same model (SmolLM2-135M-Instruct, converted by `make model`), same 64 FC trials (the
paper's prompt, greedy main pass only, so every engine does identical work), same dtype.
Each engine first answers 8 other trials so one-time kernel set-up is not timed, and vLLM's
prefix cache is emptied before each timed pass (prompts cached by an earlier pass would
otherwise skip their prefill): only the prefix shared within a pass is reused. Figures
are trials/s and prompt+output tokens/s over the timed pass, plus CPU milliseconds per trial
(this process and its engine processes), which other jobs on a shared machine disturb less
than wall time; compliance (share of answers the paper's parser accepts) is printed beside.

Scored FC scores the 16 candidates of the same trials (`scored`) on the same engines: vLLM's
token trie with prefix caching (the default), `prompt_logprobs` on prompt + answer without
the prefix cache (vLLM's default for such requests; on fewer trials, it is slow) and with
cache reads forced on, and hf's teacher-forced passes on a reused KV cache. Each is set
against the generative FC main pass of its own engine (greedy, free-form; the structured
pass is shown beside), in milliseconds per trial.

    python -m benchmarks --only behave
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from . import Row

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "models" / "smollm2-135m-instruct"
N_TRIALS = 64
N_WARMUP = 8
N_SLOW = 8  # trials for the scoring method that reads no prefix cache
WORDS = ("time people year way day man thing woman life child world family hand part place case week "
         "company system program question work government number night point home water room mother area "
         "money story fact month lot right study book eye job word business issue side kind head house "
         "service friend father power hour game line end member law car city community name president team "
         "minute idea kid body information back parent face others level office door health person art").split()


def _config(backend: str, structured: bool = False):
    from pipeline.config import from_dict

    cfg = from_dict({
        "experiment": {"name": "bench-behave", "data_dir": str(ROOT / "data" / "bench")},
        "behave": {"backend": backend, "repair": False, "retries": 0, "structured_fc": structured,
                   "batch_size": 16},
        "models": [{"name": "smollm2-135m", "path": str(MODEL), "max_model_len": 1024, "max_num_seqs": 64,
                    "gpu_memory_utilization": 0.3, "enforce_eager": True}],
    }, source="benchmarks/behave.py")
    return cfg, cfg.models[0]


def _trials() -> tuple[pa.Table, pa.Table]:
    from pipeline.trials import build_fc_plan

    plan = build_fc_plan(WORDS, 16, 12345)
    return plan.slice(N_TRIALS, N_WARMUP), plan.slice(0, N_TRIALS)


def _cpu_seconds() -> float:
    """User+system CPU seconds of this process and its live children (vLLM's engine processes)."""
    import psutil

    total = 0.0
    me = psutil.Process()
    for p in [me, *me.children(recursive=True)]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _measure(backend, cfg, mc, label: str) -> dict:
    from pipeline.attempts import run_chunk

    warm, timed = _trials()
    run_chunk(backend, cfg, mc, "fc", warm)
    llm = getattr(backend, "llm", None)
    if llm is not None:
        llm.reset_prefix_cache()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = run_chunk(backend, cfg, mc, "fc", timed)
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    tokens = (pc.sum(out.column("n_prompt_tokens")).as_py() + pc.sum(out.column("n_output_tokens")).as_py())
    ok = pc.sum(pc.equal(out.column("status"), "ok")).as_py() or 0
    res = {"trials_s": N_TRIALS / dt, "tokens_s": tokens / dt, "ok": ok / N_TRIALS, "seconds": dt,
           "cpu_ms": 1000 * cpu / N_TRIALS}
    print(f"   {label:<38} {dt:7.1f} s  {res['trials_s']:6.2f} trials/s  {res['tokens_s']:8.0f} tokens/s  "
          f"{res['cpu_ms']:7.0f} CPU ms/trial  compliant {ok}/{N_TRIALS}", flush=True)
    return res


def _measure_project_vs_bare(backend, cfg, mc) -> tuple[dict, dict]:
    """The stage's path (`driver.run_pipelined`, rendering, parsing and writing a part included)
    against bare `LLM.generate` on the same rendered prompts and sampling parameters."""
    import tempfile

    from pipeline import logs
    from pipeline.driver import run_pipelined
    from pipeline.paradigms import get as get_paradigm

    warm, timed = _trials()
    proto = get_paradigm("fc").protocol(backend, cfg, mc)
    reqs = [proto.request(t, 0, None)[0] for t in timed.to_pylist()]
    texts, params = [r.text for r in reqs], [backend._params(r) for r in reqs]
    backend.llm.generate([proto.request(t, 0, None)[0].text for t in warm.to_pylist()], params[:N_WARMUP],
                         use_tqdm=False)
    out = {}
    for label in ("bare", "project") * 3:
        backend.llm.reset_prefix_cache()
        c0, t0 = _cpu_seconds(), time.perf_counter()
        if label == "bare":
            backend.llm.generate(texts, params, use_tqdm=False)
        else:
            with tempfile.TemporaryDirectory() as d:
                run_pipelined(backend, proto, iter([timed]), lambda rows, d=d: logs.write_part(d, rows), N_TRIALS)
        dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        best = out.get(label)
        if best is None or dt < best["seconds"]:
            out[label] = {"seconds": dt, "trials_s": N_TRIALS / dt, "cpu_ms": 1000 * cpu / N_TRIALS}
    for label in ("bare", "project"):
        print(f"   vllm, {label + ' (best of 3)':<32} {out[label]['seconds']:7.1f} s  "
              f"{out[label]['trials_s']:6.2f} trials/s", flush=True)
    return out["project"], out["bare"]


def _measure_scored(backend, cfg, mc, label: str, n: int = N_TRIALS) -> dict:
    from pipeline.attempts import run_chunk

    warm, timed = _trials()
    run_chunk(backend, cfg, mc, "fc_scored", warm.slice(0, 2))
    llm = getattr(backend, "llm", None)
    if llm is not None:
        llm.reset_prefix_cache()
    c0, t0 = _cpu_seconds(), time.perf_counter()
    out = run_chunk(backend, cfg, mc, "fc_scored", timed.slice(0, n))
    dt, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
    ok = pc.sum(pc.equal(out.column("status"), "ok")).as_py() or 0
    res = {"ms": 1000 * dt / n, "cpu_ms": 1000 * cpu / n, "table": out}
    print(f"   {label:<38} {dt:7.1f} s  {res['ms']:7.0f} ms/trial  {res['cpu_ms']:7.0f} CPU ms/trial  "
          f"scored {ok}/{n}", flush=True)
    return res


def _max_difference(a, b) -> float:
    """Largest difference between the log-probabilities two methods gave the same trials."""
    import numpy as np

    n = min(a.num_rows, b.num_rows)
    x = np.concatenate([np.asarray(v) for v in a.column("logprobs").to_pylist()[:n]])
    y = np.concatenate([np.asarray(v) for v in b.column("logprobs").to_pylist()[:n]])
    return float(np.abs(x - y).max())


def run() -> list[Row]:
    from pipeline.backends import get_backend, runtime_dtype
    from pipeline.errors import PipelineError

    if not (MODEL / "config.json").exists():
        raise PipelineError(f"{MODEL} missing: run `make model` first")
    cfg, mc = _config("hf")
    with get_backend("hf", mc, cfg) as be:
        hf = _measure(be, cfg, mc, "hf generate (batch 16)")
        hf_scored = _measure_scored(be, cfg, mc, "hf fc_scored (KV cache reused)")
    cfg, mc = _config("vllm")
    with get_backend("vllm", mc, cfg, enable_prefix_caching=True) as be:
        on = _measure(be, cfg, mc, "vllm, prefix caching")
        cfg_s, _ = _config("vllm", structured=True)
        structured = _measure(be, cfg_s, mc, "vllm, prefix caching, structured FC")
        project, bare = _measure_project_vs_bare(be, cfg, mc)
        scored = {}
        for method, label, n in (("tree", "vllm fc_scored, token trie", N_TRIALS),
                                 ("prompt_cached", "vllm fc_scored, prompt_logprobs cached", N_TRIALS),
                                 ("prompt", "vllm fc_scored, prompt_logprobs", N_SLOW)):
            be.score_method = method
            scored[method] = _measure_scored(be, cfg, mc, label, n)
        be.score_method = "tree"
    with get_backend("vllm", mc, cfg, enable_prefix_caching=False) as be:
        off = _measure(be, cfg, mc, "vllm, no prefix caching")
    diff = max(_max_difference(scored["tree"]["table"], scored[m]["table"]) for m in ("prompt", "prompt_cached"))
    diff_hf = _max_difference(scored["tree"]["table"], hf_scored["table"])
    dtype = runtime_dtype(mc.dtype)
    print(f"   largest log-prob difference between vLLM methods {diff:.2e}, vLLM trie vs hf {diff_hf:.2e} "
          f"(both in {dtype}; in bfloat16 the two engines' kernels round differently)", flush=True)
    gen_ms, gen_s_ms, hf_ms = 1000 / on["trials_s"], 1000 / structured["trials_s"], 1000 / hf["trials_s"]
    scored_what = "16 candidates scored exactly"
    what = f"SmolLM2-135M, {N_TRIALS} FC trials"
    return [
        Row(f"behave vLLM vs hf generate ({what})", on["trials_s"], hf["trials_s"], "trials/s",
            "transformers generate, batch 16", True, "vLLM faster than plain batched generate"),
        Row("behave vLLM vs hf generate, tokens", on["tokens_s"], hf["tokens_s"], "tokens/s",
            "transformers generate, batch 16", True, "prompt + output tokens per second"),
        Row("behave vLLM vs hf generate, CPU time", on["cpu_ms"], hf["cpu_ms"], "CPU ms/trial",
            "transformers generate, batch 16", False, "less load-sensitive than wall time"),
        Row("behave vLLM prefix caching on vs off", on["trials_s"], off["trials_s"], "trials/s",
            "vLLM, enable_prefix_caching=False", True, "shared prompt prefix computed once"),
        Row("behave vLLM prefix caching on vs off, CPU time", on["cpu_ms"], off["cpu_ms"], "CPU ms/trial",
            "vLLM, enable_prefix_caching=False", False),
        Row("behave vLLM structured FC vs free-form", structured["trials_s"], on["trials_s"], "trials/s",
            "vLLM free-form", True, f"compliance {structured['ok']:.0%} vs {on['ok']:.0%}"),
        Row("behave project path vs bare LLM.generate", project["trials_s"], bare["trials_s"], "trials/s",
            "bare LLM.generate, same prompts", True, ">= 1.0x (driver adds no engine idle time)"),
        Row("fc_scored vLLM token trie vs generative FC", scored["tree"]["ms"], gen_ms, "ms/trial",
            "vLLM generative FC (greedy main pass)", False,
            f"{scored_what}; the default method (fastest exact); vs structured FC {gen_s_ms:.0f} ms/trial"),
        Row("fc_scored vLLM prompt_logprobs cached vs gen.", scored["prompt_cached"]["ms"], gen_ms, "ms/trial",
            "vLLM generative FC (greedy main pass)", False, "prompt_logprobs, skip_reading_prefix_cache=False"),
        Row("fc_scored vLLM prompt_logprobs vs generative", scored["prompt"]["ms"], gen_ms, "ms/trial",
            "vLLM generative FC (greedy main pass)", False,
            f"prompt_logprobs, vLLM skips the prefix cache; {N_SLOW} trials"),
        Row("fc_scored vLLM token trie, CPU time", scored["tree"]["cpu_ms"], on["cpu_ms"], "CPU ms/trial",
            "vLLM generative FC (greedy main pass)", False),
        Row("fc_scored hf KV reuse vs hf generate", hf_scored["ms"], hf_ms, "ms/trial",
            "transformers generate, batch 16", False,
            f"vLLM trie vs hf log-probs differ by {diff_hf:.1e} at most ({dtype})"),
    ]
