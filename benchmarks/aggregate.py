"""Aggregation at paper scale: 1,565,000 FC trials + 630,000 FA trials over 5,000 words.

Synthetic trial logs with the paper's shape are generated once with numpy (cached under
`data/bench/aggregate/`, about 200 MB): FC picks are 626 distinct words per cue drawn
from a latent similarity (313 trials x 2 picks, a few invalid picks dropped, some trials
with a non-final failed attempt first), FA gives 126 runs x up to 5 associates per cue
from the cue's neighbours and a Zipfian open vocabulary, with cue repeats, case variants
and "na". Parts hold 8,192 trials each, as the paper config writes them.

The stage runs in a child process so its peak RSS is its own: the child reads its
`VmHWM` (the high-water mark of its own address space); rusage's `ru_maxrss` would not do,
since Linux carries the parent's peak across fork and exec into the child's. The
baseline is the obvious pandas route (read parts, explode picks, clean with `.str`,
groupby size) timed on a tenth of the parts and extrapolated linearly (x10), plus the
same PPMI and the plain scipy cosine (normalized rows, sparse product, densified) on the
sparse matrices, timed in full.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from . import Row

N_WORDS = 5000
FC_TRIALS_PER_CUE = 313
FA_RUNS = 126
PART_TRIALS = 8192
BASELINE_FRACTION = 10
_GEN_VERSION = 1
ROOT = Path("data/bench/aggregate")


def _config_dict() -> dict:
    return {"experiment": {"name": "synthetic", "data_dir": str(ROOT)},
            "vocab": {"source": str(ROOT / "words.txt"), "size": N_WORDS},
            "behave": {"backend": "fake", "paradigms": ["fc", "fa"]},
            "models": [{"name": "synthetic", "path": "none"}]}


def _words() -> list[str]:
    return [f"word{i:04d}" for i in range(N_WORDS)]


def _table(trial_id, cue_idx, words_arr, flat_idx, offsets, final) -> pa.Table:
    from pipeline.logs import SCHEMA

    n = len(trial_id)
    picks = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), words_arr.take(pa.array(flat_idx)))
    empty_lists = pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], pa.string()))
    cols = {
        "trial_id": pa.array(trial_id, pa.int64()), "cue_idx": pa.array(cue_idx, pa.int32()),
        "cue": words_arr.take(pa.array(cue_idx)), "candidates": empty_lists,
        "run": pa.array(np.zeros(n, np.int16)), "attempt": pa.array(np.where(final, 1, 0).astype(np.int16)),
        "attempt_kind": pa.array(np.where(final, "main", "first"), pa.string()),
        "raw_output": pa.array(np.full(n, ""), pa.string()), "picks": picks, "extracted": picks,
        "status": pa.array(np.where(final, "ok", "wrong_count"), pa.string()),
        "final": pa.array(final), "seed": pa.array(np.zeros(n, np.int64)),
        "prompt_sha": pa.array(np.full(n, ""), pa.string()),
        "n_prompt_tokens": pa.array(np.zeros(n, np.int32)), "n_output_tokens": pa.array(np.zeros(n, np.int32)),
        "latency_s": pa.array(np.zeros(n, np.float32)),
    }
    return pa.table({f.name: cols[f.name] for f in SCHEMA})


def _latent(rng) -> np.ndarray:
    e = rng.standard_normal((N_WORDS, 16)).astype(np.float32)
    s = e @ e.T + rng.gumbel(size=(N_WORDS, N_WORDS)).astype(np.float32) * 3
    np.fill_diagonal(s, -np.inf)
    return s


def _generate(cfg) -> None:
    from pipeline import paths
    from pipeline.logs import write_part

    rng = np.random.default_rng(0)
    words = _words()
    paths.vocab_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    paths.vocab_file(cfg).write_text("\n".join(words) + "\n")
    (ROOT / "words.txt").write_text("\n".join(words) + "\n")
    scores = _latent(rng)
    n_fc = 2 * FC_TRIALS_PER_CUE
    chosen = np.argpartition(-scores, n_fc, axis=1)[:, :n_fc]
    neighbours = chosen[:, :50]
    del scores
    extra = [f"assoc{i}" for i in range(30000)]
    pool = pa.array(words + [w.upper() for w in words[:500]] + extra + ["na", "NA", "", "--"], pa.string())
    fc_dir = paths.behavior_dir(cfg, "synthetic", "fc")
    fa_dir = paths.behavior_dir(cfg, "synthetic", "fa")
    order = rng.permutation(N_WORDS * FC_TRIALS_PER_CUE)
    for start in range(0, order.size, PART_TRIALS):
        tid = np.sort(order[start:start + PART_TRIALS])
        cue, g = tid // FC_TRIALS_PER_CUE, tid % FC_TRIALS_PER_CUE
        picks = np.stack([chosen[cue, 2 * g], chosen[cue, 2 * g + 1]], axis=1)
        valid = rng.random(picks.shape) > 0.03
        retried = rng.random(tid.size) < 0.05
        rows_tid = np.concatenate([tid[retried], tid])
        rows_cue = np.concatenate([cue[retried], cue])
        final = np.concatenate([np.zeros(retried.sum(), bool), np.ones(tid.size, bool)])
        bad_attempt = np.zeros((retried.sum(), 2), bool)
        bad_attempt[:, 0] = True
        v = np.concatenate([bad_attempt, valid])
        p = np.concatenate([picks[retried], picks])
        offsets = np.concatenate([[0], np.cumsum(v.sum(1))])
        write_part(fc_dir, _table(rows_tid, rows_cue, pool, p[v], offsets, final))
    fa_tid = np.arange(N_WORDS * FA_RUNS)
    zipf_max = len(pool)
    for start in range(0, fa_tid.size, PART_TRIALS):
        tid = fa_tid[start:start + PART_TRIALS]
        cue = tid % N_WORDS
        n = tid.size
        near = neighbours[cue[:, None], rng.integers(0, 50, size=(n, 5))]
        far = np.minimum(rng.zipf(1.2, size=(n, 5)) - 1 + 500, zipf_max - 1)
        a = np.where(rng.random((n, 5)) < 0.6, near, far)
        a = np.where(rng.random((n, 5)) < 0.02, cue[:, None], a)
        k = np.minimum(5, rng.geometric(0.02, n) + 3)
        keep = np.arange(5)[None, :] < k[:, None]
        offsets = np.concatenate([[0], np.cumsum(keep.sum(1))])
        write_part(fa_dir, _table(tid, cue, pool, a[keep], offsets, np.ones(n, bool)))
    (ROOT / "generated.json").write_text(json.dumps({"version": _GEN_VERSION}))


def ensure_data():
    """Synthetic logs in `data/bench/aggregate/` (generated once, then reused)."""
    from pipeline.config import from_dict

    cfg = from_dict(_config_dict(), source="bench-aggregate")
    marker = ROOT / "generated.json"
    if not marker.exists() or json.loads(marker.read_text()).get("version") != _GEN_VERSION:
        import shutil

        shutil.rmtree(ROOT, ignore_errors=True)
        ROOT.mkdir(parents=True)
        t0 = time.perf_counter()
        print("   generating synthetic trial logs (once) ...", flush=True)
        _generate(cfg)
        print(f"   generated in {time.perf_counter() - t0:.1f} s", flush=True)
    return cfg


_PEAK = """
def _peak_mb():
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        import resource, sys
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024
"""

_STAGE_CHILD = _PEAK + """
import argparse, json, sys, time
from pipeline import aggregate
from pipeline.config import from_dict
cfg = from_dict(json.loads(sys.argv[1]), source="bench-aggregate")
opts = argparse.Namespace(model=None, paradigm=None, strategy=None, force=False)
t0 = time.perf_counter()
aggregate.run(cfg, opts)
print(json.dumps({"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}))
"""

_NAIVE_CHILD = _PEAK + """
import json, sys, time
import pandas as pd
parts = json.loads(sys.argv[1])
t0 = time.perf_counter()
out = []
for paradigm, files in parts.items():
    df = pd.concat([pd.read_parquet(f, columns=["cue_idx", "cue", "picks", "final"]) for f in files])
    df = df[df["final"]].explode("picks").dropna(subset=["picks"])
    s = df["picks"].str.lower().str.strip()
    ok = (s != "") & ~s.isin(["na", "nan"]) & s.str.contains(r"[^\\W_]", regex=True) & (s != df["cue"].str.lower())
    counts = df.assign(picks=s)[ok].groupby(["cue_idx", "picks"]).size()
    out.append(int(counts.sum()))
print(json.dumps({"seconds": time.perf_counter() - t0, "picks": out, "peak_mb": _peak_mb()}))
"""


def _child(code: str, arg: str) -> tuple[dict, float]:
    """Run `code` in a fresh interpreter; return its JSON output and its own peak RSS in MB."""
    proc = subprocess.run([sys.executable, "-c", code, arg], stdout=subprocess.PIPE, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path.cwd())})
    if proc.returncode:
        raise RuntimeError(f"benchmark child failed with exit code {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out, out["peak_mb"]


def run() -> list[Row]:
    import shutil

    from pipeline import paths
    from pipeline.aggregate import load_matrices
    from pipeline.similarity import l2_normalize_rows, ppmi

    cfg = ensure_data()
    shutil.rmtree(cfg.run_dir / "matrices", ignore_errors=True)
    (cfg.run_dir / "manifest.json").unlink(missing_ok=True)
    stage, stage_mb = _child(_STAGE_CHILD, json.dumps(_config_dict()))
    subset = {p: sorted(str(f) for f in paths.behavior_dir(cfg, "synthetic", p).glob("part-*.parquet"))
              [::BASELINE_FRACTION] for p in ("fc", "fa")}
    naive, naive_mb = _child(_NAIVE_CHILD, json.dumps(subset))
    t0 = time.perf_counter()
    for p in ("fc", "fa"):
        counts = load_matrices(cfg, "synthetic", p)["counts"]
        for m in (ppmi(counts), counts):
            xn = l2_normalize_rows(m)
            (xn @ xn.T).toarray()
    naive_sim = time.perf_counter() - t0
    stats = {p: load_matrices(cfg, "synthetic", p)["stats"] for p in ("fc", "fa")}
    print(f"   FC: {stats['fc']['trials']} trials, {stats['fc']['picks']} picks, {stats['fc']['responses']} "
          f"columns; FA: {stats['fa']['trials']} trials, {stats['fa']['picks']} associates, "
          f"{stats['fa']['responses']} columns", flush=True)
    naive_count = naive["seconds"] * BASELINE_FRACTION
    return [
        Row("aggregate FC 1.565M + FA 630k -> PPMI-cos", stage["seconds"], naive_count + naive_sim, "s",
            f"pandas explode+groupby on 1/{BASELINE_FRACTION} of parts x{BASELINE_FRACTION} "
            f"+ scipy sparse cosine", target="<= 10 s, <= 1 GB"),
        Row("aggregate counting only (streamed)", stage["seconds"] - _matrix_seconds(cfg), naive_count, "s",
            f"pandas on 1/{BASELINE_FRACTION} of parts, x{BASELINE_FRACTION}"),
        Row("aggregate peak RSS", stage_mb, naive_mb, "MB",
            f"pandas peak on 1/{BASELINE_FRACTION} of parts (not extrapolated)", target="bounded by matrices"),
    ]


def _matrix_seconds(cfg) -> float:
    """Seconds the stage spent after counting (PPMI, cosines, writes), from its summaries."""
    from pipeline.manifest import Manifest

    man = Manifest(cfg.run_dir)
    return sum((man.summary(f"aggregate/synthetic/{p}") or {}).get("matrix_seconds", 0.0) for p in ("fc", "fa"))


if __name__ == "__main__":
    from . import main

    sys.exit(main(["--only", "aggregate"]))
