"""Trial plans: which cue meets which candidates (FC) and which seeded runs (FA).

The plan is a pure function of the run vocabulary and the seeds, identical for every
model, and written once as Parquet so that `behave` shards, resumes and audits trials by
a stable `trial_id`.

FC (METHOD.md §2): for cue index i, the indices of the other N-1 words, in vocabulary
order, are shuffled with Python's `random.Random(fc_seed + i).shuffle` (the authors' exact
procedure, so the paper's candidate sets are reproduced given the paper's word list), then
cut into m = ceil((N-1)/fc_candidates) groups whose sizes differ by at most one, larger
groups first. Every other word is a candidate exactly once per cue.
``trial_id = cue_idx * m + group``.

Counterbalanced FC (`trials.fc_orders = k`, beyond the paper): each candidate group is
presented k times, in order j = 0..k-1 as its candidate list rotated left by
``(j * s) // k`` places (s = the group's size), so each candidate appears at k positions
spread evenly over the list (k <= s). Order 0 is the paper's plan, row for row and byte
for byte (k = 1 is that plan alone); the rotations follow as whole blocks with
``trial_id = order * (N * m) + cue_idx * m + group`` (`fc_order`), so order-0 ids are
unchanged and ``trial_id mod m`` is still the group. The plan's columns are the same for
every k.

FA (METHOD.md §3): each cue once per run r = 0..fa_runs-1 with seed ``fa_seed + r``.
``trial_id = cue_idx * fa_runs + run``.

Scored forced choice (`fc_scored`) runs the FC plan itself (`plan_of`), so its trials are
the FC trials one for one and the two can be compared trial by trial.

Only the shuffles run in Python (they must be bit-identical to `random.Random`); they
are spread over the available cores, and everything else is built as NumPy/Arrow arrays:
candidate lists are one Arrow `take` over the flattened shuffles plus an offsets array.
"""

from __future__ import annotations

import logging
import math
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import keys, paths
from .config import Config
from .errors import PipelineError
from .manifest import Manifest, fingerprint
from .options import Options
from .paradigms import get as get_paradigm
from .store import atomic_write, sha256_file
from .vocab import load_run_vocab

log = logging.getLogger(__name__)

FC_SCHEMA = pa.schema([("trial_id", pa.int64()), ("cue_idx", pa.int32()), ("cue", pa.string()),
                       ("group", pa.int16()), ("candidates", pa.list_(pa.string()))])
FA_SCHEMA = pa.schema([("trial_id", pa.int64()), ("cue_idx", pa.int32()), ("cue", pa.string()),
                       ("run", pa.int16()), ("seed", pa.int64())])
_ROW_GROUP = 65_536
_PARALLEL_MIN_WORDS = 1_000
_INT16_MAX = np.iinfo(np.int16).max


def plan_of(paradigm: str) -> str:
    """The plan a paradigm runs (`Paradigm.plan_name`: ``fc`` for `fc` and `fc_scored`).

    Raises:
        PipelineError: unknown paradigm.
    """
    return get_paradigm(paradigm).plan_name


def fc_group_sizes(n_words: int, k: int) -> np.ndarray:
    """Sizes of the balanced candidate groups for one cue (the authors' `chunk_list_balanced`).

    Args:
        n_words: vocabulary size N (each cue's pool holds N-1 words).
        k: maximum candidates per trial (`trials.fc_candidates`).

    Returns:
        int64 array of m = ceil((N-1)/k) sizes: the first (N-1) % m are one larger.
    """
    pool = n_words - 1
    if pool < 1:
        raise PipelineError(f"a trial plan needs at least 2 words, got {n_words}")
    m = math.ceil(pool / k)
    base, r = divmod(pool, m)
    return np.where(np.arange(m) < r, base + 1, base).astype(np.int64)


def _shuffle_block(n_words: int, start: int, stop: int, seed: int) -> np.ndarray:
    out = np.empty((stop - start, n_words - 1), dtype=np.int32)
    everything = list(range(n_words))
    for row, i in enumerate(range(start, stop)):
        idx = everything[:i] + everything[i + 1:]
        random.Random(seed + i).shuffle(idx)
        out[row] = idx
    return out


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def fc_permutations(n_words: int, seed: int, workers: int | None = None) -> np.ndarray:
    """All cues' shuffled pools as an (N, N-1) int32 array, row i for cue i.

    Args:
        n_words: vocabulary size N.
        seed: `trials.fc_seed`; cue i uses `random.Random(seed + i)`.
        workers: processes to spread the Python shuffles over (default: usable cores;
            small vocabularies run in-process).
    """
    workers = workers or _workers()
    if workers == 1 or n_words < _PARALLEL_MIN_WORDS or "fork" not in get_all_start_methods():
        return _shuffle_block(n_words, 0, n_words, seed)
    bounds = np.linspace(0, n_words, 4 * workers + 1).astype(int)
    # fork, not spawn: spawn re-imports the caller's __main__, which breaks scripts without a
    # main guard and stdin/notebook callers; the children only run pure-Python shuffles.
    with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
        parts = pool.map(_shuffle_block, [n_words] * (len(bounds) - 1), bounds[:-1], bounds[1:],
                         [seed] * (len(bounds) - 1))
        return np.concatenate(list(parts))


def fc_order(trial_ids, n_words: int, m: int) -> np.ndarray:
    """The presentation order (rotation) of FC trials: ``trial_id // (N * m)``; 0 for the paper's plan."""
    return np.asarray(trial_ids, dtype=np.int64) // (n_words * m)


def fc_shifts(sizes: np.ndarray, orders: int) -> np.ndarray:
    """Left rotation of each group in each order, (orders, m): ``(j * s) // orders``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    return (np.arange(orders, dtype=np.int64)[:, None] * sizes[None, :]) // orders


def build_fc_plan(words: list[str], k: int, seed: int, workers: int | None = None, orders: int = 1) -> pa.Table:
    """The FC plan table (`FC_SCHEMA`), one row per trial in `trial_id` order.

    Args:
        words: the run vocabulary.
        k: `trials.fc_candidates`.
        seed: `trials.fc_seed`.
        workers: processes for the shuffles (`fc_permutations`).
        orders: `trials.fc_orders`; order j rotates every group by ``(j * s) // orders``.
    """
    n = len(words)
    sizes = fc_group_sizes(n, k)
    m = len(sizes)
    if m > _INT16_MAX:
        raise PipelineError(f"{m} FC groups per cue do not fit the int16 'group' column; "
                            f"raise trials.fc_candidates or use fewer words")
    if n * (n - 1) >= np.iinfo(np.int32).max:
        raise PipelineError(f"{n} words give {n * (n - 1)} FC candidate slots, more than one "
                            f"Parquet list column holds; use at most 46,340 words")
    perm = fc_permutations(n, seed, workers)
    word_arr = pa.array(words, pa.string())
    offsets = np.zeros(n * m + 1, dtype=np.int32)
    np.cumsum(np.tile(sizes, n), out=offsets[1:])
    flat = perm.reshape(-1)
    cue_idx = np.repeat(np.arange(n, dtype=np.int32), m)
    size_of_slot = np.repeat(np.tile(sizes, n), np.tile(sizes, n))
    start_of_slot = np.repeat(offsets[:-1].astype(np.int64), np.tile(sizes, n))
    pos = np.arange(flat.size, dtype=np.int64) - start_of_slot
    tables = []
    for j, shift in enumerate(fc_shifts(sizes, orders)):
        shift_of_slot = np.repeat(np.tile(shift, n), np.tile(sizes, n))
        taken = flat if j == 0 else flat[start_of_slot + (pos + shift_of_slot) % size_of_slot]
        tables.append(pa.Table.from_arrays([
            pa.array(np.arange(j * n * m, (j + 1) * n * m, dtype=np.int64)),
            pa.array(cue_idx),
            word_arr.take(pa.array(cue_idx)),
            pa.array(np.tile(np.arange(m, dtype=np.int16), n)),
            pa.ListArray.from_arrays(pa.array(offsets), word_arr.take(pa.array(taken))),
        ], schema=FC_SCHEMA))
    return tables[0] if orders == 1 else pa.concat_tables(tables).combine_chunks()


def build_fa_plan(words: list[str], runs: int, seed: int) -> pa.Table:
    """The FA plan table (`FA_SCHEMA`), one row per (cue, run) in `trial_id` order."""
    n = len(words)
    if runs > _INT16_MAX + 1:
        raise PipelineError(f"trials.fa_runs = {runs} does not fit the int16 'run' column "
                            f"(at most {_INT16_MAX + 1})")
    cue_idx = np.repeat(np.arange(n, dtype=np.int32), runs)
    run = np.tile(np.arange(runs, dtype=np.int16), n)
    return pa.Table.from_arrays([
        pa.array(np.arange(n * runs, dtype=np.int64)),
        pa.array(cue_idx),
        pa.array(words, pa.string()).take(pa.array(cue_idx)),
        pa.array(run),
        pa.array(seed + run.astype(np.int64)),
    ], schema=FA_SCHEMA)


def plan_inputs(cfg: Config, paradigm: str, words: list[str]) -> dict:
    """What a plan depends on: the words and the seeds/sizes of its paradigm (nothing else)."""
    paradigm = plan_of(paradigm)
    base = {"paradigm": paradigm, "words": fingerprint(words), "n_words": len(words), "format": 1}
    return {**base, **get_paradigm(paradigm).plan_inputs(cfg)}


def plan_fingerprint(cfg: Config, paradigm: str, words: list[str] | None = None) -> str:
    """Fingerprint of a plan's inputs; later stages fold it into their own fingerprints."""
    return fingerprint(plan_inputs(cfg, paradigm, load_run_vocab(cfg) if words is None else words))


def write_table(table: pa.Table, path: Path) -> None:
    """A plan table as zstd Parquet, written atomically."""
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=_ROW_GROUP, compression="zstd"))


def check_fc_sizes(cfg: Config, n_words: int) -> None:
    smallest = int(fc_group_sizes(n_words, cfg.trials.fc_candidates).min())
    if smallest < cfg.trials.fc_picks:
        raise PipelineError(f"{cfg.source}: with {n_words} words and trials.fc_candidates = "
                            f"{cfg.trials.fc_candidates}, some FC trials get only {smallest} candidates, "
                            f"fewer than trials.fc_picks = {cfg.trials.fc_picks}; use more words or "
                            f"fewer picks")
    if cfg.trials.fc_orders > smallest:
        raise PipelineError(f"{cfg.source}: trials.fc_orders = {cfg.trials.fc_orders} rotations of a group of "
                            f"{smallest} candidates would repeat orders; use at most {smallest}")


def run(cfg: Config, opts: Options) -> None:
    """`trials` stage: write the plans of the paradigms in `behave.paradigms` (`Paradigm.build_plan`).

    Needs only the run vocabulary (no model, no GPU). Each plan is its own manifest record
    (`trials.fc`, `trials.fa`, ...), so changing `fa_runs` leaves the FC plan and its logs valid.
    """
    words = load_run_vocab(cfg)
    wanted = list(dict.fromkeys(plan_of(p) for p in cfg.behave.paradigms if opts.paradigm in (None, p)))
    man = Manifest(cfg.run_dir)
    force = opts.force
    for paradigm in wanted:
        key = keys.trials(paradigm)
        out = paths.trials_file(cfg, paradigm)
        step = man.step(key, plan_inputs(cfg, paradigm, words), force=force)
        if step.done():
            log.info("trials: %s plan is complete (%s), skipping", paradigm, out)
            continue
        step.start()
        t0 = time.perf_counter()
        table, extra = get_paradigm(paradigm).build_plan(cfg, words)
        build_s = time.perf_counter() - t0
        write_table(table, out)
        total_s = time.perf_counter() - t0
        step.complete([out], {"n_trials": table.num_rows, "n_cues": len(words), **extra,
                              "build_s": round(build_s, 2), "total_s": round(total_s, 2), "sha256": sha256_file(out)})
        log.info("trials: %s plan, %d trials for %d cues, built in %.2f s, written in %.2f s -> %s",
                 paradigm, table.num_rows, len(words), build_s, total_s - build_s, out)


def load_trials(cfg: Config, paradigm: str) -> pa.Table:
    """The trial plan `paradigm` runs (`plan_of`), checked against the current vocabulary and seeds.

    Raises:
        PipelineError: the plan is missing, unreadable, or was built from other inputs.
    """
    path = checked_plan_file(cfg, paradigm)
    paradigm = plan_of(paradigm)
    rebuild = keys.command(cfg, "trials")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise PipelineError(f"{path}: unreadable trial plan ({e}); rebuild it with `{rebuild}`") from None
    expected = get_paradigm(paradigm).plan_schema()
    if not table.schema.equals(expected):
        raise PipelineError(f"{path}: unexpected columns {table.schema.names} (want {expected.names}); "
                            f"rebuild it with `{keys.command(cfg, 'trials', force=True)}`")
    return table


def checked_plan_file(cfg: Config, paradigm: str) -> Path:
    """The file of the plan `paradigm` runs, checked as `load_trials` checks it (complete record,
    same inputs, content as written), for readers that stream it instead of loading it whole.

    Raises:
        PipelineError: the plan is missing, changed, or was built from other inputs.
    """
    paradigm = plan_of(paradigm)
    path = paths.trials_file(cfg, paradigm)
    if not path.exists():
        raise PipelineError(f"{path}: the {paradigm.upper()} trial plan is missing; run "
                            f"`make trials CONFIG={cfg.source}` (or `{keys.command(cfg, 'trials')}`) first")
    rec = Manifest(cfg.run_dir).stage(keys.trials(paradigm))
    if rec is None or not rec.get("complete"):
        raise PipelineError(f"{path}: no completed record of this plan in {cfg.run_dir / 'manifest.json'}; "
                            f"run `make trials CONFIG={cfg.source}` again")
    if rec.get("inputs") != plan_fingerprint(cfg, paradigm):
        raise PipelineError(f"{path}: this {paradigm.upper()} plan was built from another vocabulary or "
                            f"other trial settings than {cfg.source} now gives; use a new "
                            f"experiment.name, or rebuild it with `{keys.command(cfg, 'trials', force=True)}` "
                            f"(logs of the old plan will no longer match)")
    rebuild = keys.command(cfg, "trials")
    Manifest(cfg.run_dir).require(path, f"the {paradigm.upper()} trial plan", rebuild)
    return path
