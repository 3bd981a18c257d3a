"""Trial-plan benchmark: the vectorised plan for 5,000 words vs a per-row Python build.

The baseline is what a straightforward script does: shuffle, chunk with list slicing, one
Python dict per trial, `pa.Table.from_pylist`, write. It is timed on a slice of the cues and
scaled linearly (each cue costs the same), which the baseline name says.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.trials import FA_SCHEMA, FC_SCHEMA, build_fa_plan, build_fc_plan, write_table

from . import Row

N_WORDS = 5000
K = 16
SEED = 12345
FA_RUNS = 126
BASELINE_CUES = 250


def _words(n: int) -> list[str]:
    return [f"word{i:05d}" for i in range(n)]


def _naive_fc_rows(words: list[str], cues: range) -> list[dict]:
    n = len(words)
    rows = []
    for i in cues:
        idxs = list(range(n))
        idxs.pop(i)
        random.Random(SEED + i).shuffle(idxs)
        pool = [words[j] for j in idxs]
        m = math.ceil(len(pool) / K)
        base, r = divmod(len(pool), m)
        start = 0
        for g in range(m):
            size = base + (1 if g < r else 0)
            rows.append({"trial_id": i * m + g, "cue_idx": i, "cue": words[i], "group": g,
                         "candidates": pool[start:start + size]})
            start += size
    return rows


def _naive_fa_rows(words: list[str]) -> list[dict]:
    return [{"trial_id": i * FA_RUNS + r, "cue_idx": i, "cue": w, "run": r, "seed": SEED + r}
            for i, w in enumerate(words) for r in range(FA_RUNS)]


def run() -> list[Row]:
    words = _words(N_WORDS)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        t0 = time.perf_counter()
        fc = build_fc_plan(words, K, SEED)
        write_table(fc, out / "fc.parquet")
        fc_s = time.perf_counter() - t0
        assert fc.num_rows == N_WORDS * math.ceil((N_WORDS - 1) / K)

        t0 = time.perf_counter()
        naive = pa.Table.from_pylist(_naive_fc_rows(words, range(BASELINE_CUES)), schema=FC_SCHEMA)
        pq.write_table(naive, out / "naive-fc.parquet")
        naive_fc_s = (time.perf_counter() - t0) * N_WORDS / BASELINE_CUES
        rows.append(Row(f"trials: FC plan {N_WORDS} words ({fc.num_rows:,} trials)", fc_s, naive_fc_s, "s",
                        baseline_name=f"per-row Python dicts + from_pylist, timed on {BASELINE_CUES} cues "
                                      f"and scaled x{N_WORDS // BASELINE_CUES}",
                        target="seconds on 2 cores (DESIGN.md)"))

        t0 = time.perf_counter()
        fa = build_fa_plan(words, FA_RUNS, SEED)
        write_table(fa, out / "fa.parquet")
        fa_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        pq.write_table(pa.Table.from_pylist(_naive_fa_rows(words), schema=FA_SCHEMA), out / "naive-fa.parquet")
        naive_fa_s = time.perf_counter() - t0
        rows.append(Row(f"trials: FA plan {N_WORDS} words ({fa.num_rows:,} trials)", fa_s, naive_fa_s, "s",
                        baseline_name="per-row Python dicts + from_pylist (full run)"))
    return rows
