"""Behave on a local Ray cluster vs the same trials in one process (hf backend, SmolLM2).

Both sides run the same FC trials (48 cues of the committed vocabulary, free-form, greedy,
no repair or retries, chunks of 16) through transformers `generate` on this machine's
CPUs: the single process with torch using every core, the Ray run with one actor per core
and one torch thread each. Figures: end-to-end trials/s (model loading and, for Ray,
actor start included; starting the Ray cluster itself is not) and generation-only
trials/s (Ray: the sum of the actors' rates while busy).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from . import Row

_ROOT = Path(__file__).resolve().parents[1]
_WORDS = 48


def _opts(**kw):
    base = dict(model=None, paradigm="fc", strategy=None, shard=(0, 1), engine="local", address=None,
                limit=None, force=False, workers=None)
    return argparse.Namespace(**{**base, **kw})


def _config(root: Path):
    from pipeline import trials, vocab
    from pipeline.config import from_dict

    root.mkdir(parents=True, exist_ok=True)
    words = (_ROOT / "vocab" / "nouns-5000.txt").read_text().split()[:_WORDS]
    (root / "words.txt").write_text("\n".join(words) + "\n")
    cfg = from_dict({
        "experiment": {"name": "bench", "data_dir": str(root / "data")},
        "vocab": {"source": str(root / "words.txt"), "size": _WORDS},
        "behave": {"backend": "hf", "paradigms": ["fc"], "chunk_size": 16, "batch_size": 16,
                   "repair": False, "retries": 0},
        "models": [{"name": "smollm2", "path": str(_ROOT / "data" / "models" / "smollm2-135m-instruct")}],
    }, source="benchmark")
    vocab.run(cfg, _opts())
    trials.run(cfg, _opts())
    return cfg


def _single_process(cfg) -> tuple[int, float, float]:
    from pipeline import logs, paths
    from pipeline.attempts import run_chunk
    from pipeline.backends import get_backend
    from pipeline.behave import pending_trials

    t0 = time.perf_counter()
    backend = get_backend("hf", cfg.models[0], cfg)
    t1 = time.perf_counter()
    todo = pending_trials(cfg, "smollm2", "fc")
    directory = paths.behavior_dir(cfg, "smollm2", "fc")
    for s in range(0, todo.num_rows, cfg.behave.chunk_size):
        logs.write_part(directory, run_chunk(backend, cfg, cfg.models[0], "fc", todo.slice(s, cfg.behave.chunk_size)))
    t2 = time.perf_counter()
    backend.close()
    return todo.num_rows, t2 - t0, t2 - t1


def _ray(cfg, workers: int) -> tuple[int, float, float]:
    import ray

    from pipeline.behave import run
    from pipeline.manifest import Manifest

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")
    try:
        t0 = time.perf_counter()
        run(cfg, _opts(engine="ray", workers=workers))
        wall = time.perf_counter() - t0
    finally:
        ray.shutdown()
    summary = Manifest(cfg.run_dir).summary("behave/smollm2/fc")
    rate = sum(w["trials_per_s"] or 0 for w in summary["engine"]["workers"])
    return summary["n_trials"], wall, rate


def run() -> list[Row]:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        n, wall_1, gen_1 = _single_process(_config(Path(tmp) / "local"))
        n_ray, wall_r, rate_r = _ray(_config(Path(tmp) / "ray"), cores)
    assert n == n_ray
    print(f"behave hf, {n} FC trials: single process {wall_1:.1f} s ({gen_1:.1f} s generating); "
          f"Ray, {cores} actors: {wall_r:.1f} s")
    return [
        Row(f"behave ray hf {cores} actors, end-to-end", n / wall_r, n / wall_1, "trials/s",
            "one process, all cores (model load included)", higher_is_better=True,
            target="scale-out; on one machine only overhead is visible"),
        Row(f"behave ray hf {cores} actors, generating", rate_r, n / gen_1, "trials/s",
            "one process, all cores", higher_is_better=True),
    ]
