"""Behave throughput: vLLM vs plain batched transformers `generate`, and vLLM prefix caching.

Same model (SmolLM2-135M-Instruct, converted by `make model`), same 64 FC trials (the
paper's prompt, greedy main pass only, so every engine does identical work), same dtype.
Each engine first answers 8 other trials so one-time kernel set-up is not timed, and vLLM's
prefix cache is emptied before each timed pass (prompts cached by an earlier pass would
otherwise skip their prefill): only the prefix shared within a pass is reused. Figures
are trials/s and prompt+output tokens/s over the timed pass, plus CPU milliseconds per trial
(this process and its engine processes), which other jobs on a shared machine disturb less
than wall time; compliance (share of answers the paper's parser accepts) is printed beside.

    python -m pipeline.bench --only behave
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from . import Row

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "data" / "models" / "smollm2-135m-instruct"
N_TRIALS = 64
N_WARMUP = 8
WORDS = ("time people year way day man thing woman life child world family hand part place case week "
         "company system program question work government number night point home water room mother area "
         "money story fact month lot right study book eye job word business issue side kind head house "
         "service friend father power hour game line end member law car city community name president team "
         "minute idea kid body information back parent face others level office door health person art").split()


def _config(backend: str, structured: bool = False):
    from ..config import from_dict

    cfg = from_dict({
        "experiment": {"name": "bench-behave", "data_dir": str(ROOT / "data" / "bench")},
        "behave": {"backend": backend, "repair": False, "retries": 0, "structured_fc": structured,
                   "batch_size": 16},
        "models": [{"name": "smollm2-135m", "path": str(MODEL), "max_model_len": 1024, "max_num_seqs": 64,
                    "gpu_memory_utilization": 0.3, "enforce_eager": True}],
    }, source="pipeline/benchmarks/behave.py")
    return cfg, cfg.models[0]


def _trials() -> tuple[pa.Table, pa.Table]:
    from ..trials import build_fc_plan

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
    from ..attempts import run_chunk

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

    from .. import logs
    from ..attempts import Protocol
    from ..driver import run_pipelined

    warm, timed = _trials()
    proto = Protocol(backend, cfg, mc, "fc")
    reqs = [proto.request(t, 0, None)[0] for t in timed.to_pylist()]
    texts, params = [r.text for r in reqs], [backend._params(r) for r in reqs]
    backend.llm.generate([proto.request(t, 0, None)[0].text for t in warm.to_pylist()], params[:N_WARMUP],
                         use_tqdm=False)
    out = {}
    for label in ("bare", "project", "bare", "project"):
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
        print(f"   vllm, {label + ' (best of 2)':<32} {out[label]['seconds']:7.1f} s  "
              f"{out[label]['trials_s']:6.2f} trials/s", flush=True)
    return out["project"], out["bare"]


def run() -> list[Row]:
    from ..backends import get_backend
    from ..errors import PipelineError

    if not (MODEL / "config.json").exists():
        raise PipelineError(f"{MODEL} missing: run `make model` first")
    cfg, mc = _config("hf")
    with get_backend("hf", mc, cfg) as be:
        hf = _measure(be, cfg, mc, "hf generate (batch 16)")
    cfg, mc = _config("vllm")
    with get_backend("vllm", mc, cfg, enable_prefix_caching=True) as be:
        on = _measure(be, cfg, mc, "vllm, prefix caching")
        cfg_s, _ = _config("vllm", structured=True)
        structured = _measure(be, cfg_s, mc, "vllm, prefix caching, structured FC")
        project, bare = _measure_project_vs_bare(be, cfg, mc)
    with get_backend("vllm", mc, cfg, enable_prefix_caching=False) as be:
        off = _measure(be, cfg, mc, "vllm, no prefix caching")
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
    ]
