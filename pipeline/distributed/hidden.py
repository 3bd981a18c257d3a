"""`hidden --engine ray`: one Ray task per model x strategy.

One Ray task per (model, strategy), as many at once as the cluster has GPUs (or
CPUs): each loads its model and calls `hidden.extract`, which writes
``hidden/<model>/<strategy>.npy`` and its manifest record itself, so for this stage the
run directory must be on storage every node sees.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque

from ..config import Config
from ..errors import PipelineError
from ..hidden import extract, make_pooler, pending
from ..options import Options
from ..pooling import load_model
from .cluster import MAX_RESTARTS, plan_workers, ray_session, set_threads, worker_config, worker_env

log = logging.getLogger(__name__)


def _hidden_task(cfg: Config, model: str, strategy: str, fp: str, words: list[str],
                 sentences: list[list[str]] | None, threads: int, env: dict[str, str], force: bool = False) -> dict:
    """Extract one model x strategy on a Ray worker with the hidden module's own code."""
    os.environ.update(env)
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    tok, lm = load_model(cfg.model(model), cfg.hidden.dtype, cfg.hidden.device)
    set_threads(threads)
    pooler = make_pooler(cfg, tok, lm)
    t1 = time.perf_counter()
    summary = extract(cfg, model, strategy, words, pooler, fp, sentences if strategy == "averaged" else None,
                      force=force)
    return {"model": model, "strategy": strategy, "node": socket.gethostname(), "pid": os.getpid(),
            "load_s": round(t1 - t0, 3), "extract_s": round(time.perf_counter() - t1, 3),
            "words": summary.get("words"), "texts": summary.get("texts")}


def run(cfg: Config, opts: Options) -> None:
    """`hidden --engine ray`: one Ray task per model x strategy (module docstring).

    Each task loads its model and runs `hidden.extract`, which writes
    ``hidden/<model>/<strategy>.npy`` and its manifest record itself, resumably; Ray
    retries a task whose worker or node died (up to `MAX_RESTARTS` times) and the retry
    continues at the next unfinished word block. The run directory must therefore be on
    storage every node sees. Complete outputs are skipped exactly as in a local run.

    Args:
        cfg: experiment config.
        opts: CLI options; uses ``model``, ``strategy``, ``force``, ``address`` and
            ``workers`` (tasks at once; default: one per GPU, or per CPU).
    """
    words, todo, sentences = pending(cfg, opts)
    if not todo:
        return
    with ray_session(opts.address) as ray:
        _run_hidden_tasks(ray, cfg, opts, todo, words, sentences)


def _run_hidden_tasks(ray, cfg: Config, opts: Options, todo: list, words, sentences) -> None:
    from ray.exceptions import RayError, RayTaskError
    from tqdm import tqdm

    gpus = 0 if cfg.hidden.device == "cpu" else 1
    res = plan_workers(ray.cluster_resources(), gpus, opts.workers)
    task = ray.remote(_hidden_task).options(num_cpus=res.num_cpus, num_gpus=res.num_gpus,
                                            max_retries=MAX_RESTARTS, retry_exceptions=False)
    worker_cfg, env = worker_config(cfg), worker_env()
    words_ref = ray.put(words)
    sent_ref = ray.put(sentences)
    pending = deque(todo)
    inflight: dict = {}
    log.info("hidden: %d model x strategy task(s) on Ray, %d at a time, each %g CPU / %g GPU", len(todo),
             res.n, res.num_cpus, res.num_gpus)
    t0 = time.perf_counter()
    records = []
    try:
        with tqdm(total=len(todo), desc="hidden (ray)", unit="task", dynamic_ncols=True, disable=None) as bar:
            while pending or inflight:
                while pending and len(inflight) < res.n:
                    name, strategy, fp = pending.popleft()
                    ref = task.remote(worker_cfg, name, strategy, fp, words_ref, sent_ref, int(res.num_cpus), env,
                                      opts.force)
                    inflight[ref] = (name, strategy)
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                name, strategy = inflight.pop(ref)
                try:
                    rec = ray.get(ref)
                except RayTaskError as e:
                    if isinstance(e.as_instanceof_cause(), PipelineError):
                        raise PipelineError(str(e.cause)) from None
                    raise
                except RayError as e:
                    raise PipelineError(f"hidden {name}/{strategy}: its Ray worker died {MAX_RESTARTS + 1} times "
                                        f"({type(e).__name__}); finished word blocks are kept, run the same "
                                        f"command again to continue") from None
                records.append(rec)
                bar.update(1)
                bar.set_postfix(last=f"{name}/{strategy}")
    finally:
        for ref in inflight:
            ray.cancel(ref, force=True)
    log.info("hidden: %d task(s) in %.1f s on Ray", len(records), time.perf_counter() - t0)
    for r in records:
        log.info("  %s/%s on %s (pid %d): load %.1f s, extract %.1f s, %d texts", r["model"], r["strategy"],
                 r["node"], r["pid"], r["load_s"], r["extract_s"], r["texts"] or 0)
